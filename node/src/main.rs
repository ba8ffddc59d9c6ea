//! `starling`: the server binary. `serve` runs a node; `user` manages
//! accounts through the running node (or the store, when none runs).

use clap::{Args, Parser, Subcommand};
use starling::admin::Request;
use starling::config::Config;
use std::path::PathBuf;

/// jemalloc rather than glibc's allocator: 9-17% less server CPU per chat
/// message, groupchat delivery and login for the same memory per session
/// (bench/RESULTS.md, "jemalloc"). glibc's `malloc_consolidate` was a
/// tenth of the store thread's time.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
        /// XEP-0114 component port (`[components] port`).
        #[arg(long)]
        component_port: Option<u16>,
        /// Node-to-node gRPC port.
        #[arg(long)]
        cluster_port: Option<u16>,
        /// HTTP upload (XEP-0363): turns `[upload]` on, on this port; 0
        /// turns it off.
        #[arg(long)]
        upload_port: Option<u16>,
        /// XMPP over WebSocket (RFC 7395): turns `[websocket]` on, on this
        /// port; 0 turns it off.
        #[arg(long)]
        websocket_port: Option<u16>,
        /// XMPP over BOSH (XEP-0206): turns `[bosh]` on, on this port; 0
        /// turns it off.
        #[arg(long)]
        bosh_port: Option<u16>,
        /// SOCKS5 bytestreams proxy (XEP-0065): turns `[proxy65]` on, on
        /// this port; 0 turns it off.
        #[arg(long)]
        proxy65_port: Option<u16>,
        /// Server-to-server listener port (`[s2s] port`).
        #[arg(long)]
        s2s_port: Option<u16>,
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
    /// Create an account: `starling user add alice@localhost` (the password
    /// is read from standard input), or `starling user add alice@localhost -- PASSWORD`.
    Add {
        jid: String,
        /// The password; read from standard input when left out (a password
        /// on the command line shows in `ps` and in the shell's history).
        /// One that begins with `-` is taken as is unless it is one of
        /// the options (`-c`): put it after `--` to be sure.
        #[arg(allow_hyphen_values = true)]
        password: Option<String>,
    },
    /// Delete an account, its data, and end its sessions.
    Del { jid: String },
    /// Set a new password (read from standard input when left out).
    Passwd {
        jid: String,
        /// The new password; read from standard input when left out.
        #[arg(allow_hyphen_values = true)]
        password: Option<String>,
    },
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
    // jemalloc returns freed pages to the kernel as they age, and an idle
    // server allocates nothing that would make it do so: a thread of its
    // own purges instead, so memory freed after a load spike (a login
    // storm's TLS handshakes) goes back while the server is idle.
    if let Err(e) = tikv_jemalloc_ctl::max_background_threads::write(1)
        .and_then(|_| tikv_jemalloc_ctl::background_thread::write(true))
    {
        eprintln!("starling: jemalloc's purging thread not started: {e}");
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            node,
            domains,
            c2s_port,
            c2s_tls_port,
            metrics_port,
            component_port,
            cluster_port,
            upload_port,
            websocket_port,
            bosh_port,
            proxy65_port,
            s2s_port,
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
            if let Some(p) = component_port {
                cfg.components.port = p;
            }
            if let Some(p) = cluster_port {
                cfg.cluster.port = p;
            }
            // An optional listener's port turns it on (0: off).
            if let Some(p) = upload_port {
                (cfg.upload.enabled, cfg.upload.port) = (p != 0, p);
            }
            if let Some(p) = websocket_port {
                (cfg.websocket.enabled, cfg.websocket.port) = (p != 0, p);
            }
            if let Some(p) = bosh_port {
                (cfg.bosh.enabled, cfg.bosh.port) = (p != 0, p);
            }
            if let Some(p) = proxy65_port {
                (cfg.proxy65.enabled, cfg.proxy65.port) = (p != 0, p);
            }
            if let Some(p) = s2s_port {
                cfg.s2s.port = p;
            }
            starling::run::init_tracing(log_json);
            cfg.check()?;
            starling::run::serve(cfg)
        }),
        Command::User { action, node } => load(&node).and_then(|mut cfg| {
            cfg.check()?;
            let req = match action {
                UserAction::Add { jid, password } => {
                    let password = password_or_stdin(password, &jid)?;
                    Request::UserAdd { jid, password }
                }
                UserAction::Del { jid } => Request::UserDel { jid },
                UserAction::Passwd { jid, password } => {
                    let password = password_or_stdin(password, &jid)?;
                    Request::UserPasswd { jid, password }
                }
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

/// The password given on the command line, or one line of standard input:
/// typed at a prompt without echo (twice) when standard input is a
/// terminal, else read as is (`echo "$PW" | starling user add JID`). The
/// line's end (`\n` or `\r\n`) is not part of the password.
fn password_or_stdin(given: Option<String>, jid: &str) -> anyhow::Result<String> {
    use std::io::IsTerminal;
    if let Some(p) = given {
        return Ok(p);
    }
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        let first = prompt_hidden(&format!("Password for {jid}: "))?;
        let again = prompt_hidden("Again: ")?;
        if first != again {
            anyhow::bail!("the two passwords differ");
        }
        first
    } else {
        read_password_line(&mut stdin.lock())?
    };
    if password.is_empty() {
        anyhow::bail!("empty password");
    }
    Ok(password)
}

/// One line, without its line end; an error at end of input.
fn read_password_line(input: &mut impl std::io::BufRead) -> anyhow::Result<String> {
    let mut line = String::new();
    if input.read_line(&mut line)? == 0 {
        anyhow::bail!("no password on standard input");
    }
    if line.ends_with('\n') {
        line.pop();
        if line.ends_with('\r') {
            line.pop();
        }
    }
    Ok(line)
}

/// Reads a line from the terminal on standard input with echo off
/// (termios), after printing `prompt` on standard error; the terminal's
/// settings are restored after. Echo goes off before the prompt shows, so
/// nothing typed after it is echoed.
fn prompt_hidden(prompt: &str) -> anyhow::Result<String> {
    use std::io::Write;
    let fd = libc::STDIN_FILENO;
    // SAFETY: termios is plain data; tcgetattr fills it for a valid fd.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd 0 is open (it is a terminal) and `saved` is writable.
    if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let mut quiet = saved;
    quiet.c_lflag &= !libc::ECHO;
    quiet.c_lflag |= libc::ECHONL;
    // SAFETY: as above, with a termios derived from the terminal's own.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    eprint!("{prompt}");
    let line = std::io::stderr()
        .flush()
        .map_err(anyhow::Error::from)
        .and_then(|()| read_password_line(&mut std::io::stdin().lock()));
    // SAFETY: restores the settings read above.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_line_loses_only_its_line_end() {
        let read = |s: &str| read_password_line(&mut s.as_bytes()).unwrap();
        assert_eq!(read("-s3cret\n"), "-s3cret");
        assert_eq!(read("pw with spaces \r\n"), "pw with spaces ");
        assert_eq!(read("no-newline"), "no-newline");
        assert_eq!(read("first\nsecond\n"), "first");
        assert!(read_password_line(&mut "".as_bytes()).is_err());
    }

    /// (jid, password, data_dir) of a `user add` or `user passwd` command line.
    fn parse(args: &[&str]) -> (String, Option<String>, Option<PathBuf>) {
        let Command::User { action, node } = Cli::try_parse_from(args).unwrap().command else {
            panic!("not a user command");
        };
        match action {
            UserAction::Add { jid, password } | UserAction::Passwd { jid, password } => {
                (jid, password, node.data_dir)
            }
            _ => panic!("not add or passwd"),
        }
    }

    #[test]
    fn passwords_beginning_with_a_hyphen() {
        let d = Some(PathBuf::from("d"));
        let pw = |p: &str| Some(p.to_owned());
        for cmd in ["add", "passwd"] {
            let with = |rest: &[&'static str]| {
                let mut args = vec!["starling", "user", cmd, "a@l"];
                args.extend_from_slice(rest);
                let (jid, password, data_dir) = parse(&args);
                assert_eq!(jid, "a@l");
                (password, data_dir)
            };
            assert_eq!(with(&["--", "-s3cret"]), (pw("-s3cret"), None));
            assert_eq!(
                with(&["--data-dir", "d", "--", "-c"]),
                (pw("-c"), d.clone())
            );
            assert_eq!(
                with(&["-s3cret", "--data-dir", "d"]),
                (pw("-s3cret"), d.clone())
            );
            assert_eq!(with(&["--data-dir", "d"]), (None, d.clone()));
            assert_eq!(with(&[]), (None, None));
        }
    }
}
