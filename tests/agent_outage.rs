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
