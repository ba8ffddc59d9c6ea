//! `starling`: the server binary. `serve` runs a node; `user` manages
//! accounts through the running node (or the store, when none runs).

use clap::{Args, Parser, Subcommand};
use starling::admin::Request;
use starling::config::Config;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "starling",
    version,
    about = "Starling: a clustered XMPP server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where to find the node: its config file and data directory.
#[derive(Args, Clone)]
struct NodeArgs {
    /// TOML configuration file.
    #[arg(long, short = 'c', env = "STARLING_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Data directory (overrides `data_dir`).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// The cluster CA certificate (overrides `cluster.ca_cert`).
    #[arg(long, value_name = "PEM", global = true)]
    cluster_ca: Option<PathBuf>,
    /// This node's cluster certificate (overrides `cluster.cert`).
    #[arg(long, value_name = "PEM", global = true)]
    cluster_cert: Option<PathBuf>,
    /// This node's cluster key (overrides `cluster.key`).
    #[arg(long, value_name = "PEM", global = true)]
    cluster_key: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Serve {
        #[command(flatten)]
        node: NodeArgs,
        /// A domain to serve; repeat for virtual hosting (replaces `domains`).
        #[arg(long = "domain")]
        domains: Vec<String>,
        /// STARTTLS c2s port.
        #[arg(long)]
        c2s_port: Option<u16>,
        /// Direct TLS c2s port (XEP-0368); 0 disables.
        #[arg(long)]
        c2s_tls_port: Option<u16>,
        /// Prometheus /metrics port; 0 disables.
        #[arg(long)]
        metrics_port: Option<u16>,
        /// Node-to-node gRPC port.
        #[arg(long)]
        cluster_port: Option<u16>,
        /// This node's id in the cluster (unique per node).
        #[arg(long)]
        node_id: Option<u64>,
        /// Join the cluster through this member's cluster address (a fresh
        /// node only; needs the cluster certificates).
        #[arg(long)]
        join: Option<String>,
        /// Log as JSON lines.
        #[arg(long)]
        log_json: bool,
    },
    /// Manage accounts.
    User {
        #[command(subcommand)]
        action: UserAction,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Cluster membership and certificates.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
        #[command(flatten)]
        node: NodeArgs,
    },
}

#[derive(Subcommand)]
enum ClusterAction {
    /// Make the cluster CA (ca.pem, ca-key.pem) in DIR.
    Ca {
        #[arg(long, default_value = "cluster-ca")]
        out: PathBuf,
    },
    /// Make a node certificate signed by the cluster CA.
    Cert {
        /// Directory holding ca.pem and ca-key.pem.
        #[arg(long, default_value = "cluster-ca")]
        ca_dir: PathBuf,
        /// File name stem, e.g. node1.
        #[arg(long)]
        name: String,
        /// Extra subject names (IP addresses or host names of the node).
        #[arg(long = "san")]
        sans: Vec<String>,
        #[arg(long, default_value = "cluster-ca")]
        out: PathBuf,
    },
    /// Members, leader, term, commit/applied index, lag per node.
    Status {
        /// Ask this member's cluster address instead of the local node.
        #[arg(long)]
        addr: Option<String>,
    },
    /// Join the running local node to a cluster through ADDR.
    Join { addr: String },
    /// Move the local node's users off and leave the cluster.
    Leave,
    /// Remove a member that is gone for good (run on any live node).
    Remove { node_id: u64 },
}

#[derive(Subcommand)]
enum UserAction {
    /// Create an account: `starling user add alice@localhost s3cret`.
    Add { jid: String, password: String },
    /// Delete an account, its data, and end its sessions.
    Del { jid: String },
    /// Set a new password.
    Passwd { jid: String, password: String },
    /// List accounts, optionally of one domain.
    List { domain: Option<String> },
}

fn load(node: &NodeArgs) -> anyhow::Result<Config> {
    let mut cfg = Config::load(node.config.as_deref())?;
    if let Some(d) = &node.data_dir {
        cfg.data_dir = d.clone();
    }
    for (flag, key) in [
        (&node.cluster_ca, &mut cfg.cluster.ca_cert),
        (&node.cluster_cert, &mut cfg.cluster.cert),
        (&node.cluster_key, &mut cfg.cluster.key),
    ] {
        if flag.is_some() {
            key.clone_from(flag);
        }
    }
    Ok(cfg)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            node,
            domains,
            c2s_port,
            c2s_tls_port,
            metrics_port,
            cluster_port,
            node_id,
            join,
            log_json,
        } => load(&node).and_then(|mut cfg| {
            if let Some(n) = node_id {
                cfg.cluster.node_id = n;
            }
            if join.is_some() {
                cfg.cluster.join = join;
            }
            if !domains.is_empty() {
                cfg.domains = domains;
            }
            if let Some(p) = c2s_port {
                cfg.c2s.port = p;
            }
            if let Some(p) = c2s_tls_port {
                cfg.c2s.tls_port = p;
            }
            if let Some(p) = metrics_port {
                cfg.metrics.port = p;
            }
            if let Some(p) = cluster_port {
                cfg.cluster.port = p;
            }
            starling::run::init_tracing(log_json);
            cfg.check()?;
            starling::run::serve(cfg)
        }),
        Command::User { action, node } => load(&node).and_then(|mut cfg| {
            cfg.check()?;
            let req = match action {
                UserAction::Add { jid, password } => Request::UserAdd { jid, password },
                UserAction::Del { jid } => Request::UserDel { jid },
                UserAction::Passwd { jid, password } => Request::UserPasswd { jid, password },
                UserAction::List { domain } => Request::UserList { domain },
            };
            let resp = starling::run::admin_request(cfg, req)?;
            if !resp.ok {
                anyhow::bail!(resp.error.unwrap_or_else(|| "failed".into()));
            }
            for u in resp.users {
                println!("{u}");
            }
            Ok(())
        }),
        Command::Cluster { action, node } => load(&node).and_then(|mut cfg| {
            cfg.check()?;
            cluster_command(cfg, action)
        }),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("starling: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn cluster_command(cfg: Config, action: ClusterAction) -> anyhow::Result<()> {
    use starling_cluster::pki;
    match action {
        ClusterAction::Ca { out } => {
            let (cert, key) = pki::make_ca(&out)?;
            println!(
                "CA certificate {}\nCA key         {} (keep it off the nodes)",
                cert.display(),
                key.display()
            );
        }
        ClusterAction::Cert {
            ca_dir,
            name,
            sans,
            out,
        } => {
            let (cert, key) = pki::make_node_cert(
                &ca_dir.join("ca.pem"),
                &ca_dir.join("ca-key.pem"),
                &out,
                &name,
                &sans,
            )?;
            println!(
                "node certificate {}\nnode key         {}",
                cert.display(),
                key.display()
            );
        }
        ClusterAction::Status { addr: Some(addr) } => {
            let st = starling::run::remote_status(&cfg, &addr)?;
            for l in starling::admin::status_lines(&st) {
                println!("{l}");
            }
        }
        ClusterAction::Status { addr: None } => print_admin(cfg, Request::ClusterStatus)?,
        ClusterAction::Join { addr } => print_admin(cfg, Request::ClusterJoin { addr })?,
        ClusterAction::Leave => print_admin(cfg, Request::ClusterLeave)?,
        ClusterAction::Remove { node_id } => print_admin(cfg, Request::ClusterRemove { node_id })?,
    }
    Ok(())
}

fn print_admin(cfg: Config, req: Request) -> anyhow::Result<()> {
    let resp = starling::run::admin_request(cfg, req)?;
    if !resp.ok {
        anyhow::bail!(resp.error.unwrap_or_else(|| "failed".into()));
    }
    for l in resp.users.iter().chain(&resp.lines) {
        println!("{l}");
    }
    Ok(())
}
