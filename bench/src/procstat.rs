//! Server and bench resource figures from /proc: CPU time (utime+stime) and resident memory.

use anyhow::{Context, Result};
use std::sync::OnceLock;

/// Clock ticks per second for /proc/PID/stat times.
pub fn clk_tck() -> u64 {
    static T: OnceLock<u64> = OnceLock::new();
    *T.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// CPU time (user + system, all threads, including exited ones) of a process, in microseconds.
pub fn cpu_us(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid}"))?;
    let rest = &s[s.rfind(')').context("bad stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // fields 14 and 15 of stat(5); `rest` starts at field 3
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    Ok(ticks * 1_000_000 / clk_tck())
}

/// Resident set size in KiB (VmRSS of /proc/PID/status).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid}"))?;
    let line = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("bad VmRSS")?
        .parse()?)
}

/// Voluntary plus involuntary context switches of every live thread of a process, from
/// `/proc/PID/task/*/status` (`/proc/PID/status` alone counts only the main thread; a thread that
/// exits takes its count with it).
pub fn ctx_switches(pid: u32) -> Result<u64> {
    let dir =
        std::fs::read_dir(format!("/proc/{pid}/task")).with_context(|| format!("process {pid}"))?;
    let mut n = 0;
    for task in dir.flatten() {
        let Ok(s) = std::fs::read_to_string(task.path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        for l in s.lines() {
            if let Some(v) = l
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                n += v.trim().parse::<u64>()?;
            }
        }
    }
    Ok(n)
}

/// CPU used by the server and by this bench process over a measured window.
pub struct CpuWindow {
    server: Option<(u32, u64)>,
    me: u64,
    t0: std::time::Instant,
}

impl CpuWindow {
    /// Start a window (server CPU only when a PID is known).
    pub fn start(server_pid: Option<u32>) -> Result<Self> {
        let server = match server_pid {
            Some(p) => Some((p, cpu_us(p)?)),
            None => None,
        };
        Ok(CpuWindow {
            server,
            me: cpu_us(std::process::id())?,
            t0: std::time::Instant::now(),
        })
    }

    /// (server µs, bench µs, wall-clock µs) since start.
    pub fn stop(&self) -> Result<(Option<u64>, u64, u64)> {
        let server = match self.server {
            Some((p, c0)) => Some(cpu_us(p)?.saturating_sub(c0)),
            None => None,
        };
        let me = cpu_us(std::process::id())?.saturating_sub(self.me);
        Ok((server, me, self.t0.elapsed().as_micros() as u64))
    }
}
