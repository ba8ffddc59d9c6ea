//! Account management shared by the admin interface, the CLI and XEP-0077:
//! the password is turned into SCRAM keys here and never stored.

use crate::auth::scram::StoredCredentials;
use crate::storage::{Account, Storage};

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("{0} is not a valid account JID (user@domain)")]
    BadJid(String),
    #[error("domain {0} is not served here")]
    UnknownDomain(String),
    #[error("account {0} already exists")]
    Exists(String),
    #[error("account {0} does not exist")]
    Missing(String),
    #[error("the password is empty or not valid")]
    BadPassword,
    #[error(transparent)]
    Store(#[from] starling_cluster::StoreError),
}

/// Parses and normalises `user@domain` and checks that the domain is ours.
pub fn account_jid(s: &str, domains: &[String]) -> Result<jid::BareJid, AccountError> {
    let j = jid::BareJid::new(s).map_err(|_| AccountError::BadJid(s.to_owned()))?;
    if j.node().is_none() {
        return Err(AccountError::BadJid(s.to_owned()));
    }
    if !domains.iter().any(|d| d == j.domain().as_str()) {
        return Err(AccountError::UnknownDomain(j.domain().to_string()));
    }
    Ok(j)
}

async fn credentials(password: &str, iterations: u32) -> Result<StoredCredentials, AccountError> {
    if password.is_empty() || crate::auth::saslprep(password).is_err() {
        return Err(AccountError::BadPassword);
    }
    let password = password.to_owned();
    // Three PBKDF2 runs: keep them off the async threads.
    tokio::task::spawn_blocking(move || StoredCredentials::new(&password, iterations))
        .await
        .map_err(|_| AccountError::BadPassword)
}

pub async fn create(
    storage: &Storage,
    bare: &str,
    password: &str,
    iterations: u32,
) -> Result<(), AccountError> {
    let credentials = credentials(password, iterations).await?;
    let account = Account {
        credentials,
        created: chrono::Utc::now().timestamp(),
        disabled: false,
    };
    if storage.create_account(bare, &account).await? {
        Ok(())
    } else {
        Err(AccountError::Exists(bare.to_owned()))
    }
}

pub async fn set_password(
    storage: &Storage,
    bare: &str,
    password: &str,
    iterations: u32,
) -> Result<(), AccountError> {
    let Some(mut account) = storage.account(bare)? else {
        return Err(AccountError::Missing(bare.to_owned()));
    };
    account.credentials = credentials(password, iterations).await?;
    storage.set_account(bare, &account).await?;
    Ok(())
}

/// Disables (XEP-0133 §4.3) or re-enables an account; whether it
/// changed. A disabled account keeps everything but cannot log in (its
/// sessions are the caller's to end).
pub async fn set_disabled(
    storage: &Storage,
    bare: &str,
    disabled: bool,
) -> Result<bool, AccountError> {
    let Some(mut account) = storage.account(bare)? else {
        return Err(AccountError::Missing(bare.to_owned()));
    };
    if account.disabled == disabled {
        return Ok(false);
    }
    account.disabled = disabled;
    storage.set_account(bare, &account).await?;
    Ok(true)
}

/// Deletes an account, and its place on the domains' pubsub nodes
/// (affiliations, subscriptions, the nodes it alone owned).
pub async fn delete(
    storage: &Storage,
    config: &crate::config::Config,
    bare: &str,
) -> Result<(), AccountError> {
    if !storage.account_exists(bare)? {
        return Err(AccountError::Missing(bare.to_owned()));
    }
    storage.delete_account(bare).await?;
    crate::modules::pep::forget_account(storage, config, bare).await?;
    Ok(())
}
