//! `starling-bench`: an XMPP load generator for any server (Starling, ejabberd, Prosody) on loopback.
//!
//! Scenarios: `login`, `idle`, `chat`, `presence`, `storm`, `muc`; `echo` is a TCP echo server giving the physical
//! limit of the machine. Every loop is bounded in count and time, and non-loopback targets are
//! refused unless `--allow-non-loopback` is given.

mod client;
mod common;
mod echo;
mod frame;
mod procstat;
mod report;
mod sasl;
mod scenario;
mod tls;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "starling-bench",
    version,
    about = "XMPP load generator (loopback targets)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Logins per second and connect-to-bound latency at fixed concurrency.
    Login(scenario::login::LoginArgs),
    /// Hold N idle sessions: server memory per session.
    Idle(scenario::idle::IdleArgs),
    /// One-to-one messages: delivered/s, latency percentiles, losses.
    Chat(scenario::chat::ChatArgs),
    /// Presence broadcast to rosters: delivered/s and fan-out latency.
    Presence(scenario::presence::PresenceArgs),
    /// Reconnect storm: every session dropped at once, back to bound after a random delay.
    Storm(scenario::storm::StormArgs),
    /// Group chat (XEP-0045): rooms of occupants, groupchat messages at a fixed rate.
    Muc(scenario::muc::MucArgs),
    /// TCP echo server on loopback (the physical limit).
    Echo(echo::EchoArgs),
    /// Internal: one child process of `idle --spawn K`.
    #[command(hide = true)]
    IdleChild(scenario::idle::IdleChildArgs),
    /// Internal: one child process of `storm`.
    #[command(hide = true)]
    StormChild(scenario::storm::StormChildArgs),
    /// Internal: one child process of `muc`.
    #[command(hide = true)]
    MucChild(scenario::muc::MucChildArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("starling-bench: runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    common::now_us(); // fix the timestamp epoch before any task runs
    let r = rt.block_on(async {
        match cli.cmd {
            Cmd::Login(a) => scenario::login::run(a).await,
            Cmd::Idle(a) => scenario::idle::run(a).await,
            Cmd::Chat(a) => scenario::chat::run(a).await,
            Cmd::Presence(a) => scenario::presence::run(a).await,
            Cmd::Storm(a) => scenario::storm::run(a).await,
            Cmd::Muc(a) => scenario::muc::run(a).await,
            Cmd::Echo(a) => echo::run(a).await,
            Cmd::IdleChild(a) => scenario::idle::child(a).await,
            Cmd::StormChild(a) => scenario::storm::child(a).await,
            Cmd::MucChild(a) => scenario::muc::child(a).await,
        }
    });
    // sessions still held by aborted tasks are dropped with the runtime, without waiting
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("starling-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
