//! An agent across server outages: output spooled while the server was down arrives whole
//! after it comes back, and the agent's certificate renewal survives a lost `Renew`.

mod common;

use std::time::Duration;

use common::{Scratch, Server, wait_for};

/// A job prints about 20 MiB (more than a frame holds) and ends while the server is down.
/// After the restart the agent re-attaches it: every byte arrives, in order, and the job
/// succeeds.
#[test]
fn output_of_a_chatty_outage_arrives_whole() {
    let scratch = Scratch::new("outage-chatty");
    let mut server = Server::start(&scratch, 1);
    let _agent = server.agent(&scratch, "a", 1, &[]);
    server.wait_workers(1);
    let go = scratch.path("go");
    let done = scratch.path("done");
    let script = format!(
        "while [ ! -e {go} ]; do sleep 0.05; done; seq 1 3000000; touch {done}",
        go = go.display(),
        done = done.display()
    );
    let id = server.submit(&["--", "sh", "-c", &script]);
    server.wait_job(&id, "the job to run", |j| j["state"] == "running");
    server.kill9();
    std::fs::write(&go, b"").unwrap();
    wait_for(
        "the job to print everything and end",
        Duration::from_secs(60),
        || done.exists().then_some(()),
    );
    server.restart();
    server.wait_job(&id, "the re-attached job to succeed", |j| {
        j["state"] == "succeeded"
    });
    let logs = server.cli(&["job", "logs", &id]);
    assert!(logs.status.success());
    let expected: String = (1..=3_000_000).map(|n| format!("{n}\n")).collect();
    assert_eq!(logs.stdout.len(), expected.len(), "output length");
    assert!(logs.stdout == expected.as_bytes(), "output differs");
}

/// The number logged as `key=N` (the log is colored: escape sequences are dropped first).
fn logged_ms(log: &str, key: &str) -> Option<u64> {
    let mut plain = String::new();
    let mut esc = false;
    for c in log.chars() {
        match (esc, c) {
            (false, '\u{1b}') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => plain.push(c),
        }
    }
    let key = format!("{key}=");
    let rest = &plain[plain.find(&key)? + key.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn now_ms() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// Sleeps until the wall clock reaches `ms` (a deadline the agent set itself, read from its
/// log: there is no condition to poll for a time of day).
fn until_ms(ms: u64) {
    let now = now_ms();
    if ms > now {
        std::thread::sleep(Duration::from_millis(ms - now));
    }
}

/// The server is frozen when the agent's renewal is due, so the `Renew` is sent and never
/// answered; the server is then killed and restarted. The agent renews on the new
/// connection, and once its first certificate has expired it still connects and runs jobs.
#[test]
fn renewal_lost_to_a_server_outage_is_retried() {
    let scratch = Scratch::new("outage-renew");
    let mut server = Server::start_with(&scratch, 1, &["--agent-cert-ttl", "40s"]);
    let _agent = server.agent(&scratch, "a", 1, &[]);
    server.wait_workers(1);
    let log = || std::fs::read_to_string(scratch.path("a.log")).unwrap_or_default();
    let (renew_at, expires) = wait_for("the agent's renewal time", Duration::from_secs(10), || {
        let log = log();
        Some((
            logged_ms(&log, "renew_at_ms")?,
            logged_ms(&log, "expires_at_ms")?,
        ))
    });
    until_ms(renew_at.saturating_sub(1_000));
    server
        .proc
        .as_ref()
        .unwrap()
        .signal(nix::sys::signal::Signal::SIGSTOP);
    wait_for(
        "the Renew sent to the frozen server",
        Duration::from_secs(5),
        || {
            log()
                .contains("renewing the agent certificate")
                .then_some(())
        },
    );
    server.kill9();
    server.restart();
    wait_for(
        "the renewal after the restart",
        Duration::from_secs(30),
        || log().contains("agent certificate renewed").then_some(()),
    );
    // Past the first certificate's life, a new connection must present the renewed one.
    until_ms(expires + 500);
    server.kill9();
    server.restart();
    let id = server.submit(&["--", "true"]);
    server.wait_job(&id, "a job after the first certificate expired", |j| {
        j["state"] == "succeeded"
    });
}
