//! `echo`: a minimal TCP echo server on loopback, the physical limit the XMPP servers are put beside.
//! Each connection is one task copying what it reads straight back; with `--tls` it terminates TLS
//! first (direct TLS, like an XEP-0368 port), giving the limit for encrypted traffic.

use anyhow::{Result, bail};
use clap::Args;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Args, Clone, Debug)]
pub struct EchoArgs {
    /// Address to listen on (loopback only).
    #[arg(long, default_value = "127.0.0.1:7777")]
    pub listen: std::net::SocketAddr,
    /// Exit after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub max_secs: u64,
    /// Terminate TLS on each connection (certificate from --tls-cert, else a fresh self-signed one).
    #[arg(long)]
    pub tls: bool,
    /// PEM file holding the private key and the certificate (e.g. the peers' cert.pem).
    #[arg(long)]
    pub tls_cert: Option<std::path::PathBuf>,
    /// Write the server's PID to this file once listening.
    #[arg(long)]
    pub pid_file: Option<std::path::PathBuf>,
}

pub async fn run(a: EchoArgs) -> Result<()> {
    if !a.listen.ip().is_loopback() {
        bail!("echo listens on loopback only");
    }
    let acceptor = if a.tls {
        Some(crate::tls::acceptor(a.tls_cert.as_deref())?)
    } else {
        None
    };
    let l = TcpListener::bind(a.listen).await?;
    if let Some(p) = &a.pid_file {
        std::fs::write(p, format!("{}\n", std::process::id()))?;
    }
    eprintln!(
        "echo: listening on {} (pid {})",
        a.listen,
        std::process::id()
    );
    let serve = async {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let mut s: Box<dyn crate::client::Io> = match acceptor {
                    None => Box::new(tcp),
                    Some(acc) => match acc.accept(tcp).await {
                        Ok(t) => Box::new(t),
                        Err(_) => return,
                    },
                };
                let mut buf = vec![0u8; 8192];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() || s.flush().await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(a.max_secs), serve).await;
    Ok(())
}
