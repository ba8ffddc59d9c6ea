//! Local administration: a Unix socket in the data directory through which
//! `starling user ...` reaches the running node (so account changes go
//! through the node and its Raft log, never around it). When no node runs,
//! the CLI opens the store itself and applies the same requests.
//!
//! Protocol: one JSON request per line, one JSON response per line.

use crate::accounts::{self, AccountError};
use crate::config::Config;
use crate::server::Server;
use crate::stanza::StreamCondition;
use crate::storage::Storage;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    UserAdd { jid: String, password: String },
    UserDel { jid: String },
    UserPasswd { jid: String, password: String },
    UserList { domain: Option<String> },
    ClusterStatus,
    ClusterJoin { addr: String },
    ClusterLeave,
    ClusterRemove { node_id: u64 },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub users: Vec<String>,
    /// Human-readable lines (cluster status).
    #[serde(default)]
    pub lines: Vec<String>,
}

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.sock")
}

/// Applies one request. `server` is the running node, if any (to end the
/// sessions of a deleted account).
pub async fn execute(
    storage: &Storage,
    config: &Config,
    server: Option<&Server>,
    req: Request,
) -> Response {
    let result: Result<(Vec<String>, Vec<String>), String> = async {
        let none = (vec![], vec![]);
        match req {
            Request::UserAdd { jid, password } => {
                let j = accounts::account_jid(&jid, &config.domains)?;
                accounts::create(storage, j.as_str(), &password, config.auth.scram_iterations)
                    .await?;
                Ok(none)
            }
            Request::UserDel { jid } => {
                let j = accounts::account_jid(&jid, &config.domains)?;
                accounts::delete(storage, config, j.as_str()).await?;
                if let Some(s) = server {
                    // Its sessions on every node of the cluster.
                    crate::routing::close_everywhere(
                        s,
                        j.as_str(),
                        None,
                        StreamCondition::NotAuthorized,
                    );
                }
                Ok(none)
            }
            Request::UserPasswd { jid, password } => {
                let j = accounts::account_jid(&jid, &config.domains)?;
                accounts::set_password(
                    storage,
                    j.as_str(),
                    &password,
                    config.auth.scram_iterations,
                )
                .await?;
                Ok(none)
            }
            Request::UserList { domain } => Ok((
                storage
                    .list_accounts(domain.as_deref())
                    .map_err(AccountError::from)?,
                vec![],
            )),
            Request::ClusterStatus => Ok((vec![], status_lines(&storage.store.status()))),
            Request::ClusterJoin { addr } => {
                storage.store.join(&addr).await.map_err(|e| e.to_string())?;
                Ok(none)
            }
            Request::ClusterRemove { node_id } => {
                storage
                    .store
                    .remove_node(node_id)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(none)
            }
            Request::ClusterLeave => {
                if let Some(s) = server {
                    // Clients reconnect through the load balancer elsewhere
                    // (`<see-other-host/>` when `cluster.see_other_host`
                    // names it, `<system-shutdown/>` otherwise).
                    for bare in s.router.users() {
                        s.router.close_all(&bare, StreamCondition::SeeOtherHost);
                    }
                }
                storage.store.leave().await.map_err(|e| e.to_string())?;
                if server.is_some() {
                    // No longer a member: nothing left to serve. Stop as on
                    // SIGTERM (after this answer is written).
                    tracing::info!("left the cluster; stopping");
                    // SAFETY: kill(2) on our own pid with a valid signal.
                    unsafe {
                        libc::kill(libc::getpid(), libc::SIGTERM);
                    }
                }
                Ok(none)
            }
        }
    }
    .await
    .map_err(|e: AccountErrorOrString| e.0);
    match result {
        Ok((users, lines)) => Response {
            ok: true,
            error: None,
            users,
            lines,
        },
        Err(e) => Response {
            ok: false,
            error: Some(e),
            users: vec![],
            lines: vec![],
        },
    }
}

/// Any error of an admin request, as its message.
struct AccountErrorOrString(String);

impl From<AccountError> for AccountErrorOrString {
    fn from(e: AccountError) -> Self {
        AccountErrorOrString(e.to_string())
    }
}

impl From<String> for AccountErrorOrString {
    fn from(e: String) -> Self {
        AccountErrorOrString(e)
    }
}

/// `starling cluster status` as lines of text.
pub fn status_lines(st: &starling_cluster::ClusterStatus) -> Vec<String> {
    let opt = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    let mut lines = vec![
        format!(
            "answered by node {}; leader {}; term {}; commit {}; applied {}",
            st.node_id,
            opt(st.leader_id),
            st.term,
            st.commit_index,
            st.applied_index
        ),
        format!(
            "{:>6}  {:<24} {:>6} {:>9} {:>6} {:>8} {:>10} {:>9}",
            "node", "address", "voter", "matched", "lag", "healthy", "lease age", "sessions"
        ),
    ];
    for m in &st.members {
        lines.push(format!(
            "{:>6}  {:<24} {:>6} {:>9} {:>6} {:>8} {:>10} {:>9}",
            m.node_id,
            m.addr,
            m.voter,
            opt(m.matched_index),
            opt(m.lag),
            m.healthy,
            m.last_lease_age_ms
                .map_or("-".to_owned(), |a| format!("{a} ms")),
            m.sessions
        ));
    }
    lines
}

/// Serves the admin socket of a running node.
pub async fn serve(server: Arc<Server>) -> anyhow::Result<()> {
    let path = socket_path(&server.config.data_dir);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    loop {
        let (conn, _) = listener.accept().await?;
        let server = server.clone();
        tokio::spawn(async move {
            let (r, mut w) = conn.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let resp = match serde_json::from_str::<Request>(&line) {
                    Ok(req) => execute(&server.storage, &server.config, Some(&server), req).await,
                    Err(e) => Response {
                        ok: false,
                        error: Some(format!("bad request: {e}")),
                        users: vec![],
                        lines: vec![],
                    },
                };
                let mut out = serde_json::to_string(&resp).unwrap_or_default();
                out.push('\n');
                if w.write_all(out.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Sends one request to a running node; `None` if no node listens.
pub async fn call(data_dir: &Path, req: &Request) -> Option<anyhow::Result<Response>> {
    let conn = UnixStream::connect(socket_path(data_dir)).await.ok()?;
    Some(
        async {
            let (r, mut w) = conn.into_split();
            let mut line = serde_json::to_string(req)?;
            line.push('\n');
            w.write_all(line.as_bytes()).await?;
            let mut lines = BufReader::new(r).lines();
            let resp = lines
                .next_line()
                .await?
                .ok_or_else(|| anyhow::anyhow!("the node closed the admin connection"))?;
            Ok(serde_json::from_str(&resp)?)
        }
        .await,
    )
}
