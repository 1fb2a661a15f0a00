//! Limits that keep one request from stopping the server: a spec over a field's limit is
//! refused at submit with the field named, and a shard that does stop (its store failed for
//! another reason than a full disk) makes the server exit non-zero without marking the store
//! as cleanly stopped.

mod common;

use std::time::Duration;

use common::{Scratch, Server, block_on};
use hodei_core::spec::JobSpec;
use hodei_core::wire::{ALPN_CLIENT, FromServer, JobRequest, Request, ToServer};
use hodei_transport::{FrameReader, FrameWriter};

/// Sends one request with the admin token, past the CLI's own checks; every answer.
fn raw(server: &Server, body: impl Into<ToServer>) -> Vec<FromServer> {
    let token = std::fs::read_to_string(server.data.join("admin.token"))
        .unwrap_or_else(|e| panic!("raw request: {e}"));
    let body = body.into();
    block_on(async {
        let (ep, addr) = server.endpoint(ALPN_CLIENT, None);
        let conn = hodei_transport::connect(&ep, addr)
            .await
            .unwrap_or_else(|e| panic!("raw request: {e}"));
        let (send, recv) = conn
            .open_bi()
            .await
            .unwrap_or_else(|e| panic!("raw request: {e}"));
        let mut w = FrameWriter::new(send);
        w.send(&Request {
            token: token.trim().to_owned(),
            body,
        })
        .await
        .unwrap_or_else(|e| panic!("raw request: {e}"));
        w.finish().unwrap_or_else(|e| panic!("raw request: {e}"));
        let mut r = FrameReader::new(recv);
        let mut out = Vec::new();
        while let Ok(Ok(Some(m))) =
            tokio::time::timeout(Duration::from_secs(20), r.next::<FromServer>()).await
        {
            out.push(m);
        }
        out
    })
}

fn script(bytes: usize) -> JobSpec {
    let mut spec = JobSpec::exec("true", &[]);
    spec.command = hodei_core::spec::Command::Script {
        body: format!("true\n#{}", "x".repeat(bytes)),
    };
    spec
}

/// A script just under the request limit used to be stored as a record over the store's
/// limit: the commit failed and the server stopped. Now it is refused at submit, the
/// server stays up, and a spec at the limit is stored and read back.
#[test]
fn an_oversized_spec_is_refused_and_the_server_stays_up() {
    let scratch = Scratch::new("limits-spec");
    let server = Server::start(&scratch, 2);
    let big = raw(
        &server,
        JobRequest::Submit {
            specs: vec![script(7 << 20)],
        },
    );
    assert!(
        matches!(big.first(), Some(FromServer::Error { message, .. })
            if message.contains("script is longer than 1048576 bytes")),
        "{big:?}"
    );
    let at_limit = raw(
        &server,
        JobRequest::Submit {
            specs: vec![script((1 << 20) - 64)],
        },
    );
    let Some(FromServer::Submitted { ids }) = at_limit.first() else {
        panic!("a spec at the limit was refused: {at_limit:?}");
    };
    let id = ids[0].to_string();
    assert_eq!(server.job(&id)["state"], "pending");
    assert!(server.ok(&["job", "submit", "--", "true"]).trim().len() > 4);
}

/// A store that fails in a way that is not a full disk (here its keyspace directories are
/// replaced by a file, so fjall's flush fails and the database cannot be reopened) stops
/// the shard; the server then exits with a failure status, and the clean-shutdown marker is
/// not written, so the next start checks the journals as after a crash. (A full disk is not
/// fatal: tests/full_disk.rs.)
#[test]
fn a_shard_stopped_by_its_store_fails_the_server() {
    let scratch = Scratch::new("limits-fatal");
    let mut server = Server::start(&scratch, 1);
    let keyspaces = server.data.join("store").join("keyspaces");
    std::fs::rename(&keyspaces, server.data.join("store").join("moved-away")).unwrap();
    std::fs::write(&keyspaces, b"not a directory").unwrap();
    // Submit large jobs until fjall must flush a memtable (16 MiB) into the broken
    // directory and the store fails, or give up.
    let mut stopped = false;
    for _ in 0..100 {
        let answer = raw(
            &server,
            JobRequest::Submit {
                specs: vec![script((1 << 20) - 64); 6],
            },
        );
        if !matches!(answer.first(), Some(FromServer::Submitted { .. })) {
            stopped = true;
            break;
        }
    }
    assert!(stopped, "a broken store never refused a commit");
    let proc = server.proc.as_mut().unwrap();
    let status = proc.wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "the server exited with {status}");
    assert!(
        !server.data.join("clean-shutdown").exists(),
        "a failed server marked its store clean"
    );
    // The exit names the shard and the store's error as its reason.
    let log = server.log_text();
    assert!(
        log.contains("hodei: shard 0 stopped: store commit failed: cannot reopen the store"),
        "{log}"
    );
}
