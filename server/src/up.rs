//! `hodei up`: a server on the embedded default store plus local agents, in one process
//! tree. The agents are child processes (`hodei agent`), stopped with the server.

use std::process::{Child, Command};

use anyhow::{Context, Result};
use tracing::info;

use crate as server;

/// The flags of `hodei up`.
#[derive(clap::Args, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    pub server: crate::args::ServerArgs,
    /// Local agents to start.
    #[arg(long, default_value_t = 2)]
    pub agents: usize,
    /// Slots per agent (default: one per CPU).
    #[arg(long)]
    pub slots: Option<u32>,
}

/// Runs a server and `args.agents` local agents until SIGINT/SIGTERM.
pub fn run(args: &UpArgs) -> Result<()> {
    let (agents, slots) = (args.agents, args.slots);
    let mut opts = args.server.options().map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("cannot create {}", opts.data_dir.display()))?;
    // Absolute, so the paths printed below work from any directory.
    opts.data_dir = std::fs::canonicalize(&opts.data_dir).context("cannot resolve the data dir")?;
    let opts = &opts;
    let running = server::start(opts)?;
    let exe = std::env::current_exe().context("cannot find the hodei executable")?;
    // The local agents join with a one-hour token good for exactly their number of joins.
    let join = running.control.join_token(agents)?;
    let mut children: Vec<Child> = Vec::new();
    for i in 0..agents {
        let mut cmd = Command::new(&exe);
        cmd.arg("agent")
            .arg("--server")
            .arg(running.addr.to_string())
            .arg("--ca")
            .arg(&running.ca_path)
            .arg("--work-dir")
            .arg(opts.data_dir.join(format!("agent-{i}")))
            .env("HODEI_JOIN_TOKEN", &join);
        if let Some(s) = slots {
            cmd.arg("--slots").arg(s.to_string());
        }
        children.push(cmd.spawn().context("cannot start a local agent")?);
    }
    let ca = running.ca_path.display();
    let addr = running.addr;
    println!(
        "Hodei is up: server on {addr}, {agents} local agent(s), data in {}.",
        opts.data_dir.display()
    );
    let token = server::control::admin_token_path(&opts.data_dir);
    println!(
        "The admin token is in {} (mode 0600); the CLI reads it from beside the CA file.",
        token.display()
    );
    println!("Try:");
    println!("  export HODEI_SERVER={addr} HODEI_CA={ca}");
    println!("  hodei job submit -- echo hello");
    println!("  hodei job list; hodei worker list");
    println!("Ctrl-C stops everything.");
    let result = server::wait_for_signal(|| running.any_stopped());
    info!("stopping local agents");
    for c in &mut children {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap_or(0)),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    for c in &mut children {
        let _ = c.wait();
    }
    running.stop()?;
    result
}
