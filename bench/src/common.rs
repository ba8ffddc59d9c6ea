//! Options every scenario shares, the target check, account provisioning and bulk login.

use crate::client::{self, Session, Target, TlsMode};
use crate::report::{self, Figures};
use crate::sasl::Mech;
use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Hard ceilings that keep every load loop bounded whatever the options say.
pub const MAX_SESSIONS_PER_PROCESS: u64 = 19_000;
pub const MAX_SECS: u64 = 600;

/// Target and run options shared by all scenarios.
#[derive(Args, Clone, Debug)]
pub struct Common {
    /// Server host (must resolve to loopback unless --allow-non-loopback).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// c2s port (the direct-TLS port with --tls direct). Only `storm` and `muc` take several
    /// (repeat the option or give a comma-separated list, also as `--ports`): their sessions go
    /// round-robin over them.
    #[arg(
        long = "port",
        visible_alias = "ports",
        value_delimiter = ',',
        default_value = "5222"
    )]
    pub ports: Vec<u16>,
    /// XMPP domain of the accounts.
    #[arg(long, default_value = "perf.test")]
    pub domain: String,
    #[arg(long, value_enum, default_value_t = TlsMode::Starttls)]
    pub tls: TlsMode,
    #[arg(long, value_enum, default_value_t = Mech::Auto)]
    pub mech: Mech,
    /// The target is a raw TCP echo server (`starling-bench echo`), the physical limit.
    #[arg(long)]
    pub echo: bool,
    /// Permit a target that is not on loopback.
    #[arg(long)]
    pub allow_non_loopback: bool,
    /// Accounts are PREFIX<N>@domain ...
    #[arg(long, default_value = "user")]
    pub user_prefix: String,
    /// ... with password PASS_PREFIX<N>.
    #[arg(long, default_value = "perfpass")]
    pub pass_prefix: String,
    /// Number of the first account to use.
    #[arg(long, default_value_t = 1)]
    pub first_user: u64,
    /// Create accounts first with this shell command template ({user} {domain} {password} {jid}),
    /// e.g. 'ejabberdctl register {user} {domain} {password}'. Without it accounts must exist.
    #[arg(long)]
    pub provision: Option<String>,
    /// PID of the server process: adds its CPU per operation and memory figures. Only `storm`
    /// takes several (repeat the option, or a comma-separated list): their figures are added up.
    #[arg(long = "server-pid", value_delimiter = ',')]
    pub server_pids: Vec<u32>,
    /// Repeat the scenario K times; figures are medians.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub runs: u32,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Name of the server in reports.
    #[arg(long)]
    pub label: Option<String>,
    /// Bound on each login and on each drain wait, seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
    /// Concurrent logins while setting sessions up.
    #[arg(long, default_value_t = 50)]
    pub login_concurrency: usize,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

impl Common {
    pub fn user(&self, i: u64) -> String {
        format!("{}{i}", self.user_prefix)
    }
    pub fn pass(&self, i: u64) -> String {
        format!("{}{i}", self.pass_prefix)
    }
    pub fn label(&self) -> String {
        self.label
            .clone()
            .unwrap_or_else(|| format!("{}:{}", self.host, self.ports_list()))
    }

    /// The (first) c2s port.
    pub fn port(&self) -> u16 {
        self.ports.first().copied().unwrap_or(5222)
    }

    /// The ports as `--port` takes them: comma-separated.
    pub fn ports_list(&self) -> String {
        let v: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        v.join(",")
    }

    /// The (first) server PID.
    pub fn server_pid(&self) -> Option<u32> {
        self.server_pids.first().copied()
    }

    /// Refuse several ports or server PIDs in a scenario that uses one.
    pub fn check_single(&self) -> Result<()> {
        if self.ports.len() > 1 || self.server_pids.len() > 1 {
            bail!("only `storm` takes several --port or --server-pid values");
        }
        Ok(())
    }

    /// Resolve and check the target, build the TLS connector (one port only).
    pub async fn target(&self) -> Result<Arc<Target>> {
        self.check_single()?;
        self.target_at(self.port()).await
    }

    /// One target per port (`storm`), in the order given.
    pub async fn targets(&self) -> Result<Vec<Arc<Target>>> {
        let mut v = Vec::with_capacity(self.ports.len());
        for &p in &self.ports {
            v.push(self.target_at(p).await?);
        }
        Ok(v)
    }

    /// The target on one port.
    async fn target_at(&self, port: u16) -> Result<Arc<Target>> {
        let addrs: Vec<_> = tokio::net::lookup_host((self.host.as_str(), port))
            .await
            .with_context(|| format!("resolve {}", self.host))?
            .collect();
        let Some(addr) = addrs.first().copied() else {
            bail!("{} has no address", self.host)
        };
        if !self.allow_non_loopback && addrs.iter().any(|a| !a.ip().is_loopback()) {
            bail!(
                "{} is not a loopback address: refusing (use --allow-non-loopback for a server you own)",
                self.host
            );
        }
        Ok(Arc::new(Target {
            addr,
            domain: self.domain.clone(),
            tls: self.tls,
            mech: self.mech,
            connector: crate::tls::connector()?,
            timeout: Duration::from_secs(self.timeout_secs.clamp(1, MAX_SECS)),
            echo: self.echo,
            zero_linger: false,
        }))
    }

    pub fn target_json(&self) -> Value {
        let mut v = json!({"label": self.label(), "host": self.host, "port": self.port(),
               "domain": self.domain, "tls": self.tls, "mech": self.mech, "echo": self.echo,
               "server_pid": self.server_pid()});
        if self.ports.len() > 1 {
            v["ports"] = json!(self.ports);
        }
        if self.server_pids.len() > 1 {
            v["server_pids"] = json!(self.server_pids);
        }
        v
    }

    /// These options as arguments for a child process of this binary, with its own first account
    /// (every port is passed on; the server PIDs and reporting options are the parent's).
    pub fn child_args(&self, first: u64) -> Vec<String> {
        let mut v = vec![
            "--host".into(),
            self.host.clone(),
            "--port".into(),
            self.ports_list(),
            "--domain".into(),
            self.domain.clone(),
            "--tls".into(),
            format!("{:?}", self.tls).to_lowercase(),
            "--mech".into(),
            self.mech.name().to_string(),
            "--user-prefix".into(),
            self.user_prefix.clone(),
            "--pass-prefix".into(),
            self.pass_prefix.clone(),
            "--first-user".into(),
            first.to_string(),
            "--timeout-secs".into(),
            self.timeout_secs.to_string(),
            "--login-concurrency".into(),
            self.login_concurrency.to_string(),
            "--quiet".into(),
        ];
        if self.echo {
            v.push("--echo".into());
        }
        if self.allow_non_loopback {
            v.push("--allow-non-loopback".into());
        }
        v
    }

    pub fn bar(&self, len: u64, msg: &str) -> ProgressBar {
        if self.quiet {
            return ProgressBar::hidden();
        }
        let pb = ProgressBar::new(len);
        pb.set_style(
            ProgressStyle::with_template(
                "{msg:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec})",
            )
            .expect("template"),
        );
        pb.set_message(msg.to_string());
        pb
    }

    /// Run the provisioning template for accounts first_user..first_user+n (4 at a time).
    pub async fn provision(&self, n: u64) -> Result<()> {
        let Some(tpl) = &self.provision else {
            return Ok(());
        };
        if self.echo {
            return Ok(());
        }
        let pb = self.bar(n, "provision");
        let sem = Arc::new(Semaphore::new(4));
        let mut set = tokio::task::JoinSet::new();
        for i in self.first_user..self.first_user + n {
            let cmd = tpl
                .replace("{user}", &self.user(i))
                .replace("{domain}", &self.domain)
                .replace("{password}", &self.pass(i))
                .replace("{jid}", &format!("{}@{}", self.user(i), self.domain));
            let permit = sem.clone().acquire_owned().await?;
            set.spawn(async move {
                let st = tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(&cmd)
                    .output()
                    .await;
                drop(permit);
                st.map(|o| o.status.success()).unwrap_or(false)
            });
            while let Some(r) = set.try_join_next() {
                let _ = r;
                pb.inc(1);
            }
        }
        let mut failed = 0;
        while let Some(r) = set.join_next().await {
            if !r.unwrap_or(false) {
                failed += 1;
            }
            pb.inc(1);
        }
        pb.finish_and_clear();
        if failed > 0 {
            eprintln!(
                "provision: {failed} of {n} commands failed (existing accounts may explain it)"
            );
        }
        Ok(())
    }

    /// Print and save the result of a scenario.
    pub fn finish(&self, scenario: &str, params: Value, runs: &[Figures]) -> Result<()> {
        report::print_table(&format!("{scenario} @ {}", self.label()), runs);
        if let Some(p) = &self.json {
            report::write_json(
                p,
                &report::to_json(scenario, self.target_json(), params, runs),
            )?;
        }
        Ok(())
    }
}

/// Log in accounts `users` (account numbers) with `concurrency` at a time; send initial presence
/// if asked. Returns sessions in order (None for a failed login) and connect-to-bound latencies.
pub async fn login_many(
    c: &Common,
    t: &Arc<Target>,
    users: &[u64],
    resource: &str,
    presence: bool,
    label: &str,
) -> (Vec<Option<Session>>, Vec<Duration>, Vec<String>) {
    login_spread(c, std::slice::from_ref(t), users, resource, presence, label).await
}

/// The target (index into the ports) of account `u` when sessions are spread over `n` ports:
/// round-robin over the account numbers, so the split does not depend on how the accounts are
/// divided between processes.
pub fn port_index(u: u64, n: usize) -> usize {
    (u % n.max(1) as u64) as usize
}

/// [`login_many`] over several targets: account `u` logs in at `targets[port_index(u, n)]`.
pub async fn login_spread(
    c: &Common,
    targets: &[Arc<Target>],
    users: &[u64],
    resource: &str,
    presence: bool,
    label: &str,
) -> (Vec<Option<Session>>, Vec<Duration>, Vec<String>) {
    let pb = c.bar(users.len() as u64, label);
    let sem = Arc::new(Semaphore::new(c.login_concurrency.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for (k, &u) in users.iter().enumerate() {
        let t = targets[port_index(u, targets.len())].clone();
        let (user, pass, res) = (c.user(u), c.pass(u), resource.to_string());
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        set.spawn(async move {
            let r = async {
                let (mut s, d) = client::login(&t, &user, &pass, &res).await?;
                if presence {
                    s.initial_presence(t.echo).await?;
                }
                Ok::<_, anyhow::Error>((s, d))
            }
            .await;
            drop(permit);
            (k, r)
        });
    }
    let mut out: Vec<Option<Session>> = (0..users.len()).map(|_| None).collect();
    let mut lat = Vec::with_capacity(users.len());
    let mut errors = Vec::new();
    while let Some(r) = set.join_next().await {
        pb.inc(1);
        match r {
            Ok((k, Ok((s, d)))) => {
                out[k] = Some(s);
                lat.push(d);
            }
            Ok((_, Err(e))) => errors.push(format!("{e:#}")),
            Err(e) => errors.push(e.to_string()),
        }
    }
    pb.finish_and_clear();
    if let Some(e) = errors.first() {
        eprintln!(
            "{label}: {} of {} logins failed; first: {e}",
            errors.len(),
            users.len()
        );
    }
    (out, lat, errors)
}

/// Microseconds since a process-wide epoch: timestamps carried inside messages.
pub fn now_us() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_micros() as u64
}

/// Percentile of a latency histogram in milliseconds.
pub fn pct_ms(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        f64::NAN
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Server CPU per operation (µs) and bench CPU per operation, added to the figures.
/// Also the server's CPU use over the window in cores (1.0 = one core busy all the time).
pub fn add_cpu(f: &mut Figures, what: &str, ops: u64, cpu: (Option<u64>, u64, u64)) {
    let ops = if ops == 0 { f64::NAN } else { ops as f64 };
    if let Some(s) = cpu.0 {
        f.add(&format!("server_cpu_us_per_{what}"), s as f64 / ops);
    }
    f.add(&format!("bench_cpu_us_per_{what}"), cpu.1 as f64 / ops);
    if let Some(s) = cpu.0 {
        f.add("server_cpu_cores", s as f64 / cpu.2.max(1) as f64);
    }
}
