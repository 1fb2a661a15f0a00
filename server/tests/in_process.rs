//! The server started and stopped inside the test process, with no binary spawned: a real
//! store on disk, real QUIC on loopback, and requests over a real client connection.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use hodei_core::spec::JobSpec;
use hodei_core::wire::{ALPN_CLIENT, ControlRequest, FromServer, JobRequest, Request, ToServer};
use hodei_server::args::ServerArgs;
use hodei_transport::{FrameReader, FrameWriter, TransportOptions};

/// `hodei server`'s flags, parsed as the binary parses them.
#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    server: ServerArgs,
}

fn options(dir: &Path) -> Result<hodei_server::ServerOptions> {
    let flags = Flags::try_parse_from([
        "hodei-server".as_ref(),
        "--data-dir".as_ref(),
        dir.as_os_str(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--shards".as_ref(),
        "2".as_ref(),
        "--no-pin".as_ref(),
    ] as [&std::ffi::OsStr; 8])?;
    flags.server.options().map_err(anyhow::Error::msg)
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hodei-inproc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// One request on its own stream; every answer until the server ends it.
async fn ask(
    running: &hodei_server::Running,
    token: &str,
    body: impl Into<ToServer>,
) -> Result<Vec<FromServer>> {
    let cfg = hodei_transport::client_config(
        &running.ca_path,
        ALPN_CLIENT,
        &TransportOptions::default(),
    )?;
    let endpoint = hodei_transport::client_endpoint(running.addr, cfg)?;
    let conn = hodei_transport::connect(&endpoint, running.addr).await?;
    let (send, recv) = conn.open_bi().await?;
    let mut w = FrameWriter::new(send);
    w.send(&Request {
        token: token.to_owned(),
        body: body.into(),
    })
    .await?;
    w.finish()?;
    let mut r = FrameReader::new(recv);
    let mut out = Vec::new();
    while let Some(m) = tokio::time::timeout(Duration::from_secs(10), r.next::<FromServer>())
        .await
        .context("no answer within 10 s")??
    {
        out.push(m);
    }
    Ok(out)
}

fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// A submit is answered by a shard and a stats request by the control plane; after a clean
/// stop the same data dir starts again with the job in it.
#[test]
fn a_server_runs_in_process_and_keeps_its_jobs() -> Result<()> {
    let dir = scratch("keeps");
    let running = hodei_server::start(&options(&dir)?)?;
    let token = std::fs::read_to_string(hodei_server::control::admin_token_path(&dir))?;
    let token = token.trim().to_owned();
    let id = block_on(async {
        let submitted = ask(
            &running,
            &token,
            JobRequest::Submit {
                specs: vec![JobSpec::exec("true", &[])],
            },
        )
        .await?;
        let Some(FromServer::Submitted { ids }) = submitted.first() else {
            bail!("unexpected answer to a submit: {submitted:?}");
        };
        let stats = ask(&running, &token, ControlRequest::Stats { reset: false }).await?;
        assert!(
            matches!(stats.first(), Some(FromServer::Stats(_))),
            "{stats:?}"
        );
        ids.first().copied().context("no id")
    })?;
    assert!(!running.any_stopped());
    running.stop()?;

    let running = hodei_server::start(&options(&dir)?)?;
    let got = block_on(ask(&running, &token, JobRequest::GetJob { job: id }))?;
    let Some(FromServer::Job(rec)) = got.first() else {
        bail!("the job is gone after a restart: {got:?}");
    };
    assert_eq!(rec.id, id);
    running.stop()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A token the server never issued is refused, and a role without the permission is told
/// which one it lacks, before anything reaches a shard or the control plane.
#[test]
fn requests_are_refused_before_they_are_handled() -> Result<()> {
    let dir = scratch("refused");
    let running = hodei_server::start(&options(&dir)?)?;
    let agent = running.control.join_token(1)?;
    let answers = block_on(async {
        let unknown = ask(
            &running,
            "hodei_0000000000000000_nope",
            JobRequest::ListWorkers,
        )
        .await?;
        let denied = ask(&running, &agent, JobRequest::ListWorkers).await?;
        Ok((unknown, denied))
    })?;
    running.stop()?;
    let _ = std::fs::remove_dir_all(&dir);
    let refused = |m: &[FromServer], want: hodei_core::wire::ErrorKind, text: &str| matches!(m.first(), Some(FromServer::Error { kind, message }) if *kind == want && message.contains(text));
    assert!(
        refused(
            &answers.0,
            hodei_core::wire::ErrorKind::Unauthenticated,
            "refused"
        ),
        "{:?}",
        answers.0
    );
    assert!(
        refused(&answers.1, hodei_core::wire::ErrorKind::Forbidden, "read"),
        "{:?}",
        answers.1
    );
    Ok(())
}
