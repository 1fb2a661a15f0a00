//! Bad input gets a clear one-line error and a non-zero exit (CLI), or a closed connection
//! and a log line (server); never a panic, never lost data.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{HODEI, Scratch, Server, assert_server_refuses, block_on, wait_for};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn fails_with(out: &std::process::Output, needle: &str) {
    assert!(
        !out.status.success(),
        "expected failure, got success: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let e = stderr(out);
    assert!(e.contains(needle), "stderr lacks {needle:?}: {e}");
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn cli_refuses_bad_flags_and_specs() {
    let scratch = Scratch::new("badcli");
    let server = Server::start(&scratch, 1);
    fails_with(
        &server.cli(&["job", "submit", "--frobnicate", "--", "true"]),
        "--frobnicate",
    );
    fails_with(
        &server.cli(&["job", "submit", "--timeout", "5x", "--", "true"]),
        "--timeout",
    );
    fails_with(
        &server.cli(&["job", "submit", "--mem", "12Q", "--", "true"]),
        "unknown unit",
    );
    fails_with(
        &server.cli(&["job", "submit", "--label", "nokey", "--", "true"]),
        "KEY=VALUE",
    );
    fails_with(&server.cli(&["job", "submit"]), "no command given");
    fails_with(
        &server.cli(&["server", "--assign-timeout", "100ms"]),
        "must be at least 1s",
    );
    fails_with(
        &server.cli(&["server", "--commit-interval", "1s"]),
        "must be at most 100ms",
    );
    fails_with(
        &server.cli(&["job", "submit", "--", ""]),
        "the command is empty",
    );
    fails_with(
        &server.cli(&["job", "submit", "--env", "1BAD=x", "--", "true"]),
        "invalid environment variable name",
    );
    fails_with(
        &server.cli(&["job", "submit", "--script", "/nonexistent/x.sh"]),
        "cannot read script /nonexistent/x.sh",
    );
    fails_with(
        &server.cli(&["job", "get", "j0.1.999999"]),
        "job j0.1.999999 does not exist",
    );
    fails_with(&server.cli(&["job", "logs", "j1.1.5"]), "does not exist");
    fails_with(
        &server.cli(&["job", "cancel", "not-an-id"]),
        "invalid job id",
    );
    fails_with(
        &server.cli(&["job", "list", "--state", "sleeping"]),
        "unknown job state",
    );
    fails_with(
        &server.cli(&["job", "get", "j0.1.1", "--server", "no-such-host.invalid:1"]),
        "no-such-host.invalid",
    );
    let out = server.cli(&["job", "get", "j0.1.1", "--ca", "/nonexistent/ca.pem"]);
    fails_with(&out, "/nonexistent/ca.pem");
    // The server is fine after all that.
    server.ok(&["worker", "list"]);
}

#[test]
fn cli_reports_a_server_that_is_not_running() {
    let scratch = Scratch::new("noserver");
    let mut server = Server::start(&scratch, 1);
    server.kill9();
    let out = server.cli(&["job", "list"]);
    fails_with(&out, "no Hodei server answered");
}

#[test]
fn server_refuses_foreign_and_corrupt_data_dirs() {
    let scratch = Scratch::new("baddir");
    let foreign = scratch.path("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("precious.txt"), "user data").unwrap();
    let run = |dir: &std::path::Path| {
        Command::new(HODEI)
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .env("RUST_LOG", "error")
            .output()
            .unwrap()
    };
    fails_with(&run(&foreign), "not a Hodei data dir");
    assert_eq!(
        std::fs::read_to_string(foreign.join("precious.txt")).unwrap(),
        "user data"
    );

    // A real data dir, with jobs, then damaged in three ways.
    let mut server = Server::start(&scratch, 1);
    let id = server.submit(&["--", "true"]);
    server.kill9();
    let marker = server.data.join("hodei.format");
    let good = std::fs::read(&marker).unwrap();
    std::fs::write(&marker, "hodei-data v99\n").unwrap();
    fails_with(&run(&server.data), "format");
    std::fs::write(&marker, &good).unwrap();

    let ca = server.ca();
    let ca_good = std::fs::read(&ca).unwrap();
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    fails_with(&run(&server.data), "ca.pem");
    std::fs::write(&ca, &ca_good).unwrap();

    // Nothing was lost by the refusals: the job is still there.
    server.restart();
    assert_eq!(server.job(&id)["id"], id.as_str());
}

/// Waits (bounded) until the server closes `conn`, and checks it said "protocol error".
async fn closed_as_protocol_error(conn: &quinn::Connection) {
    let reason = common::closed(conn).await;
    assert!(reason.to_string().contains("protocol error"), "{reason}");
}

#[test]
fn server_closes_connections_that_send_garbage_and_keeps_serving() {
    let scratch = Scratch::new("garbage");
    let server = Server::start(&scratch, 2);
    let addr: std::net::SocketAddr = server.addr.parse().unwrap();
    // Raw UDP garbage at the QUIC port.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..200u8 {
        udp.send_to(&[i; 1200], addr).unwrap();
    }
    let identity = server.join_identity();
    block_on(async {
        for (alpn, payload) in [
            (
                hodei_core::wire::ALPN_AGENT,
                b"\x01\x00\x10\x00\x00\x00garbage-garbage!".to_vec(),
            ),
            (
                hodei_core::wire::ALPN_AGENT,
                b"\x09\x00\x04\x00\x00\x00abcd".to_vec(),
            ), // version 9
            (hodei_core::wire::ALPN_CLIENT, vec![0xff; 64]),
        ] {
            // Agents present their certificate (mTLS), so their garbage reaches the decoder.
            let id = (alpn == hodei_core::wire::ALPN_AGENT).then_some(&identity);
            let (ep, addr) = server.endpoint(alpn, id);
            let conn = hodei_transport::connect(&ep, addr).await.unwrap();
            let (mut send, _recv) = conn.open_bi().await.unwrap();
            send.write_all(&payload).await.unwrap();
            let _ = send.finish();
            closed_as_protocol_error(&conn).await;
        }
    });
    let log = wait_for("log lines", Duration::from_secs(10), || {
        let l = server.log_text();
        (l.matches("closing agent connection").count() >= 2
            && l.contains("closing client connection"))
        .then_some(l)
    });
    assert!(log.contains("version 9"), "{log}");
    assert!(!log.contains("panicked"));
    server.ok(&["worker", "list"]);
}

/// Datagrams from a registered agent may hold one heartbeat each: garbage, or any other
/// message, closes the connection as a protocol error; the server keeps serving.
#[test]
fn server_closes_agents_that_send_other_datagrams() {
    let scratch = Scratch::new("baddgram");
    let server = Server::start(&scratch, 2);
    let identity = server.join_identity();
    block_on(async {
        let goodbye =
            hodei_core::frame::Wire::to_frame(&hodei_core::wire::FromAgent::Goodbye).unwrap();
        for datagram in [
            b"\x01\x00\x10\x00\x00\x00garbage-garbage!".to_vec(),
            goodbye,
        ] {
            let (_ep, conn, _w, _r, _) = server.raw_agent(&identity).await;
            conn.send_datagram(datagram.into()).unwrap();
            closed_as_protocol_error(&conn).await;
        }
    });
    let log = wait_for("log lines", Duration::from_secs(10), || {
        let l = server.log_text();
        (l.matches("closing agent connection").count() >= 2).then_some(l)
    });
    assert!(
        log.contains("a datagram holds a message other than a heartbeat"),
        "{log}"
    );
    assert!(!log.contains("panicked"));
    server.ok(&["worker", "list"]);
}

/// A journal damaged after a clean shutdown: the server refuses to start, names the file,
/// and leaves the store byte for byte as it was (nothing is dropped by the refusal).
#[test]
fn damaged_store_journal_is_refused_and_left_intact() {
    let scratch = Scratch::new("journal");
    let mut server = Server::start(&scratch, 1);
    for i in 0..5 {
        server.submit(&["--", "echo", &i.to_string()]);
    }
    let mut p = server.proc.take().unwrap();
    p.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(30)).success());
    assert!(server.data.join("clean-shutdown").exists());
    let journal = std::fs::read_dir(server.data.join("store"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "jnl"))
        .unwrap();
    let mut bytes = std::fs::read(&journal).unwrap();
    for b in &mut bytes[64..96] {
        *b ^= 0x5a;
    }
    std::fs::write(&journal, &bytes).unwrap();
    let out = Command::new(HODEI)
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&server.data)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("store") && !e.contains("panicked"), "{e}");
    // Compared without printing: the journal is 64 MiB.
    assert!(
        std::fs::read(&journal).unwrap() == bytes,
        "the refusal changed the journal"
    );
}

/// One source cannot hold more than its share: past `--max-conns-per-ip` new connections
/// are refused (and logged once), streams left open without end do not stop the server, and
/// everyone else is still served.
#[test]
fn floods_from_one_source_are_bounded() {
    let scratch = Scratch::new("flood");
    let server = Server::start_with(&scratch, 1, &["--max-conns-per-ip", "6"]);
    block_on(async {
        let (ep, addr) = server.endpoint(hodei_core::wire::ALPN_CLIENT, None);
        // Connect until refused; each connection opens streams that announce a frame and
        // never finish it. (The CLI's last connections may still count towards the 6.)
        let mut held = Vec::new();
        let mut streams = Vec::new();
        let mut refused = false;
        for _ in 0..12 {
            let Ok(conn) = hodei_transport::connect(&ep, addr).await else {
                refused = true;
                break;
            };
            for _ in 0..8 {
                let (mut send, recv) = conn.open_bi().await.unwrap();
                // This build's version, 4 MiB announced, 16 bytes sent.
                let mut partial = hodei_core::wire::PROTOCOL_VERSION.to_le_bytes().to_vec();
                partial.extend_from_slice(b"\x00\x00\x40\x00partial-partial!");
                send.write_all(&partial).await.unwrap();
                streams.push((send, recv));
            }
            held.push(conn);
        }
        assert!(refused, "12 connections from one source were all accepted");
        assert!(
            held.len() <= 6,
            "{} connections past a limit of 6",
            held.len()
        );
        drop(streams);
        drop(held);
    });
    wait_for("the refusal in the log", Duration::from_secs(10), || {
        server
            .log_text()
            .contains("refusing connections from this source")
            .then_some(())
    });
    // Once connections close, the source is served again.
    wait_for(
        "the CLI to be served again",
        Duration::from_secs(20),
        || server.cli(&["job", "list"]).status.success().then_some(()),
    );
}

/// `--uses` counts joins, so it is refused for roles that never join instead of being
/// silently ignored.
#[test]
fn token_uses_is_refused_for_roles_that_never_join() {
    let scratch = Scratch::new("tokenuses");
    let server = Server::start(&scratch, 1);
    for role in ["admin", "submitter", "reader"] {
        fails_with(
            &server.cli(&["token", "create", "--role", role, "--uses", "1"]),
            "--uses applies to agent",
        );
    }
    let out = server.cli(&["token", "create", "--role", "agent", "--uses", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = server.ok(&["token", "list"]);
    assert!(!listed.contains("submitter"), "{listed}");
}

/// Timings that break the lease together are refused at start, naming both flags: a
/// re-attach grace shorter than an agent's lease plus 500 ms, and a heartbeat timeout under
/// two heartbeats. Each value one step inside the bound starts.
#[test]
fn timings_that_break_the_lease_together_are_refused() {
    let scratch = Scratch::new("timings");
    let refused = |flags: &[&str], names: &str| {
        assert_server_refuses(&scratch.path("data"), flags, names);
    };
    refused(
        &["--disconnect-grace", "10s", "--reattach-grace", "5499ms"],
        "--reattach-grace 5s 499ms is less than half the --disconnect-grace plus 500ms (5s 500ms)",
    );
    refused(
        &["--heartbeat", "1s", "--heartbeat-timeout", "1999ms"],
        "--heartbeat-timeout 1s 999ms is less than two --heartbeat intervals (2s)",
    );
    // At the bounds, and with a long grace and the default re-attach grace, it starts.
    for flags in [
        &["--disconnect-grace", "10s", "--reattach-grace", "5500ms"][..],
        &["--heartbeat", "1s", "--heartbeat-timeout", "2s"][..],
        &["--disconnect-grace", "60s"][..],
    ] {
        let ok = Scratch::new("timings-ok");
        let _server = Server::start_with(&ok, 1, flags);
    }
}

/// A disconnect grace below 1 s would leave agents a lease too short to fence themselves
/// before their jobs are requeued: the server refuses to start with it.
#[test]
fn a_disconnect_grace_below_a_second_is_refused() {
    let scratch = Scratch::new("short-grace");
    let data = scratch.path("data");
    assert_server_refuses(&data, &["--disconnect-grace", "999ms"], "at least 1s");
}
