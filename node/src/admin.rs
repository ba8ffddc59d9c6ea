//! Local administration: a Unix socket in the data directory through which
//! `starling user ...` reaches the running node (so account changes go
//! through the node and its Raft log, never around it). When no node runs,
//! the CLI opens the store itself and applies the same requests.
//!
//! Protocol: one JSON request per line, one JSON response per line.

use crate::accounts::{self, AccountError};
use crate::config::Config;
use crate::server::Server;
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
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub users: Vec<String>,
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
    let result: Result<Vec<String>, AccountError> = async {
        match req {
            Request::UserAdd { jid, password } => {
                let j = accounts::account_jid(&jid, &config.domains)?;
                accounts::create(storage, j.as_str(), &password, config.auth.scram_iterations)
                    .await?;
                Ok(vec![])
            }
            Request::UserDel { jid } => {
                let j = accounts::account_jid(&jid, &config.domains)?;
                accounts::delete(storage, j.as_str()).await?;
                if let Some(s) = server {
                    s.router.close_all(j.as_str(), "not-authorized");
                }
                Ok(vec![])
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
                Ok(vec![])
            }
            Request::UserList { domain } => Ok(storage.list_accounts(domain.as_deref())?),
        }
    }
    .await;
    match result {
        Ok(users) => Response {
            ok: true,
            error: None,
            users,
        },
        Err(e) => Response {
            ok: false,
            error: Some(e.to_string()),
            users: vec![],
        },
    }
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
