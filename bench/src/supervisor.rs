//! The supervisor: a thread that ends the run when it is interrupted (SIGINT, SIGTERM,
//! SIGHUP) or exceeds its time bound. It kills every process the scenario started
//! ([`procs::kill_all`]), says why, and exits non-zero. It runs on its own thread so that it
//! acts even while the scenario's thread is blocked (a synchronous wait, a spawn loop).

use std::time::Duration;

use anyhow::Result;
use tokio::signal::unix::{SignalKind, signal};

use crate::procs;

/// Exit status when the bound passed (as `timeout(1)`).
pub const EXIT_TIMEOUT: i32 = 124;

/// The time bound of a run: how long, and the flag that set it (for the message).
pub struct Bound {
    pub after: Duration,
    pub flag: &'static str,
}

/// Starts the supervisor of `scenario`. The signal handlers are installed before this
/// returns, so from then on a Ctrl-C never leaves a child behind.
pub fn start(scenario: &'static str, bound: Bound) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Registered here, on the caller's thread, not later on the supervisor's.
    let (mut int, mut term, mut hup) = rt.block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        ))
    })?;
    let deadline = tokio::time::Instant::now() + bound.after;
    std::thread::Builder::new()
        .name("supervisor".into())
        .spawn(move || {
            let (code, why) = rt.block_on(async {
                tokio::select! {
                    _ = int.recv() => (130, "interrupted (SIGINT)".to_owned()),
                    _ = term.recv() => (143, "terminated (SIGTERM)".to_owned()),
                    _ = hup.recv() => (129, "hung up (SIGHUP)".to_owned()),
                    () = tokio::time::sleep_until(deadline) => (
                        EXIT_TIMEOUT,
                        format!(
                            "{} {} passed before the run finished",
                            bound.flag,
                            humantime::format_duration(bound.after)
                        ),
                    ),
                }
            });
            let killed = procs::kill_all();
            eprintln!(
                "hodei-bench {scenario}: {why}; stopped the run and killed its {killed} \
                 process group(s); no result is reported"
            );
            std::process::exit(code);
        })?;
    Ok(())
}
