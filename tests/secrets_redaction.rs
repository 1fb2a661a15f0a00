//! Output stays masked after its secret changes: `hodei job logs` masks every value a secret
//! had (up to the server's bound), not only its current one, so rotating a secret with
//! `hodei secret set` or removing it with `hodei secret rm` does not unmask output written
//! with an older value, and a restart keeps it so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use hodei_core::job::Outcome;
use hodei_core::wire::{Chunk, FromAgent, Stream, ToAgent};

use common::{HODEI, Scratch, Server};

const V1: &str = "old-Value-0123456789abc";
/// `printf %s "$V1" | base64`.
const V1_BASE64: &str = "b2xkLVZhbHVlLTAxMjM0NTY3ODlhYmM=";
const V2: &str = "new-Value-9876543210xyz";
const MASK: &str = "[REDACTED:db_pass]";

/// `hodei secret set NAME` with the value on stdin.
fn set_secret(s: &Server, name: &str, value: &str) {
    let mut child = Command::new(HODEI)
        .args(["secret", "set", name])
        .env("HODEI_SERVER", &s.addr)
        .env("HODEI_CA", s.ca())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), value.as_bytes()).unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success(), "secret set {name}");
}

/// Neither value in `logs`, and a line starting with each of `lines` (a base64 form is
/// masked but for its last, partial group).
fn assert_masked(logs: &str, lines: &[String], when: &str) {
    for v in [V1, V2, V1_BASE64] {
        assert!(!logs.contains(v), "{when}: {v} in the logs: {logs}");
    }
    for l in lines {
        assert!(
            logs.lines().any(|x| x.starts_with(l.as_str())),
            "{when}: no line {l:?} in {logs}"
        );
    }
}

/// An agent whose own masking did not run (an older or broken agent, a tampered host)
/// reports a job's output with the value in clear; the server's masking as the output is read
/// is then all that stands between it and `hodei job logs`. The agent here is the test itself
/// speaking the agent protocol over QUIC: it is given v1 with the assignment and reports it
/// raw (split across two batches, and base64-encoded). The secret is rotated to v2, then
/// removed, then the server is killed and restarted: the job's logs never show v1.
#[test]
fn output_the_agent_did_not_mask_stays_masked_after_rotation_and_removal() {
    let scratch = Scratch::new("secret-rotation-raw");
    let mut s = Server::start_with(&scratch, 1, &["--heartbeat-timeout", "60s"]);
    set_secret(&s, "db_pass", V1);
    let identity = s.join_identity();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let (job_tx, job_rx) = mpsc::channel::<String>();
    // Dropped (the agent stops) when this scope ends, also by a failed assertion.
    let stop = stop_tx;
    let id = std::thread::scope(|scope| {
        let stop = stop;
        let server = &s;
        scope.spawn(move || common::block_on(raw_agent(server, &identity, &job_tx, &stop_rx)));
        s.wait_workers(1);
        let id = s.submit(&["--secret", "db_pass", "--", "true"]);
        let reported = job_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(reported, id);
        s.wait_job(&id, "the job to succeed", |j| j["state"] == "succeeded");
        let expect = [format!("raw: {MASK}"), format!("b64: {MASK}")];
        assert_masked(&s.ok(&["job", "logs", &id]), &expect, "with v1 current");

        set_secret(&s, "db_pass", V2);
        assert_masked(
            &s.ok(&["job", "logs", &id]),
            &expect,
            "after rotation to v2",
        );

        s.ok(&["secret", "rm", "db_pass"]);
        assert!(!s.ok(&["secret", "list"]).contains("db_pass"));
        let out = s.cli(&["job", "submit", "--secret", "db_pass", "--", "true"]);
        assert!(!out.status.success(), "a removed secret was accepted");
        assert_masked(&s.ok(&["job", "logs", &id]), &expect, "after removal");
        drop(stop);
        id
    });
    let expect = [format!("raw: {MASK}"), format!("b64: {MASK}")];
    s.kill9();
    s.restart();
    assert_masked(&s.ok(&["job", "logs", &id]), &expect, "after a restart");
    // Set again after its removal, it is a secret jobs may name again, and output of every
    // value it had stays masked.
    set_secret(&s, "db_pass", V1);
    assert!(s.ok(&["secret", "list"]).contains("db_pass"));
    assert_masked(&s.ok(&["job", "logs", &id]), &expect, "set again");
}

/// The agent's side: takes the one assignment, reports its output with the secret's value
/// in clear and its success, then stays connected until told to stop.
async fn raw_agent(
    s: &Server,
    identity: &hodei_transport::ClientIdentity,
    job_tx: &mpsc::Sender<String>,
    stop: &mpsc::Receiver<()>,
) {
    let (_ep, conn, mut w, mut r, _worker) = s.raw_agent(identity).await;
    let (job, attempt, secrets) = loop {
        match r.next::<ToAgent>().await.unwrap() {
            Some(ToAgent::Assign {
                job,
                attempt,
                secrets,
                ..
            }) => break (job, attempt, secrets),
            Some(_) => {}
            None => panic!("the server ended the agent's stream"),
        }
    };
    // The job's secret came with the assignment, as it was then.
    assert_eq!(secrets.len(), 1);
    assert_eq!(secrets[0].name, "db_pass");
    assert_eq!(secrets[0].value, V1.as_bytes());
    w.send(&FromAgent::Started {
        job,
        attempt,
        at: 1,
    })
    .await
    .unwrap();
    let first = format!("raw: {}", &V1[..9]).into_bytes();
    let rest = format!("{}\nb64: {V1_BASE64}\n", &V1[9..]).into_bytes();
    let second_at = first.len() as u64;
    for (offset, data) in [(0, first), (second_at, rest)] {
        w.send(&FromAgent::Output {
            job,
            attempt,
            offset,
            chunks: vec![Chunk {
                stream: Stream::Stdout,
                data,
            }],
        })
        .await
        .unwrap();
    }
    w.send(&FromAgent::Finished {
        job,
        attempt,
        outcome: Outcome::Exited(0),
        at: 2,
    })
    .await
    .unwrap();
    job_tx.send(job.to_string()).unwrap();
    // Alive (heartbeats as datagrams) until the test is done with it.
    let beat = FromAgent::Heartbeat {
        running: 0,
        load: 0,
    };
    while matches!(stop.try_recv(), Err(mpsc::TryRecvError::Empty)) {
        let _ = hodei_transport::send_datagram(&conn, &beat);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    conn.close(0u32.into(), b"done");
}

/// Real agent, real jobs: a job given v1 keeps a copy of it in a file (its own output is
/// masked by the agent); the secret is rotated to v2, and a second job, given v2, prints
/// both the copy of v1 and its own v2. The agent masks only the value the job was given;
/// the server masks the older one as the second job's output is read. Then the secret is
/// removed and the server restarted: both jobs' output stays masked.
#[test]
fn a_job_printing_an_older_value_of_its_secret_is_masked() {
    let scratch = Scratch::new("secret-rotation-jobs");
    let mut s = Server::start(&scratch, 2);
    let _a = s.agent(&scratch, "a", 2, &[]);
    s.wait_workers(1);
    set_secret(&s, "db_pass", V1);
    let kept = scratch.path("kept");
    let first = scratch.path("first.sh");
    std::fs::write(
        &first,
        format!(
            "cp \"$HODEI_SECRETS_DIR/db_pass\" {k}\necho \"first: $(cat {k})\"\n",
            k = kept.display()
        ),
    )
    .unwrap();
    let j1 = s.submit(&["--secret", "db_pass", "--script", first.to_str().unwrap()]);
    s.wait_job(&j1, "the first job to succeed", |j| {
        j["state"] == "succeeded"
    });
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), V1);

    set_secret(&s, "db_pass", V2);
    let second = scratch.path("second.sh");
    std::fs::write(
        &second,
        format!(
            "echo \"kept: $(cat {k})\"\necho \"now: $(cat \"$HODEI_SECRETS_DIR/db_pass\")\"\n",
            k = kept.display()
        ),
    )
    .unwrap();
    let j2 = s.submit(&["--secret", "db_pass", "--script", second.to_str().unwrap()]);
    s.wait_job(&j2, "the second job to succeed", |j| {
        j["state"] == "succeeded"
    });
    let first_lines = [format!("first: {MASK}")];
    let second_lines = [format!("kept: {MASK}"), format!("now: {MASK}")];
    let check = |s: &Server, when: &str| {
        assert_masked(&s.ok(&["job", "logs", &j1]), &first_lines, when);
        assert_masked(&s.ok(&["job", "logs", &j2]), &second_lines, when);
    };
    check(&s, "after rotation to v2");
    s.ok(&["secret", "rm", "db_pass"]);
    check(&s, "after removal");
    s.kill9();
    s.restart();
    check(&s, "after a restart");
}
