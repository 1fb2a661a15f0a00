//! The submitter: its own thread and client connection (ALPN `hodei-client/1`), submitting
//! one job per request at `--submit-rate` during the steady phase, each request on its own
//! task so a slow acknowledgement does not delay the next submission. It records, per job,
//! the wall clock when the request was sent and when its acknowledgement (the job is
//! durable) was read; the simulated agents stamp when they read the `Assign`.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hodei_core::spec::JobSpec;
use hodei_core::time::wall_now;
use hodei_core::wire::{FromServer, JobRequest};
use hodei_transport::{FrameReader, FrameWriter};
use tokio::sync::watch;

use crate::args::JobMode;
use crate::fleet::{Phase, reached};
use crate::stats::{ThreadStats, bump};

/// Requests in flight at most; a tick beyond it is skipped (and counted).
const MAX_IN_FLIGHT: usize = 4096;

/// Least time between two attempts to replace a lost client connection.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// One acknowledged submission.
#[derive(Clone, Copy, Debug)]
pub struct Submitted {
    pub job: u64,
    /// Wall clock (µs) before the request was sent.
    pub sent_us: u64,
    /// Wall clock (µs) when the acknowledgement was read.
    pub acked_us: u64,
}

pub struct Submitter {
    handle: JoinHandle<()>,
    pub stats: Arc<ThreadStats>,
    pub records: Arc<Mutex<Vec<Submitted>>>,
}

/// The spec every submitted job carries (the simulated agents run nothing).
pub fn spec(mode: JobMode) -> JobSpec {
    let mut s = match mode {
        JobMode::Noop => JobSpec::exec("true", &[]),
        JobMode::Sleep(d) => JobSpec::exec("sleep", &[&format!("{:.3}", d.as_secs_f64())]),
    };
    s.name = "loadtest".to_owned();
    s
}

impl Submitter {
    pub fn start(
        server: SocketAddr,
        cfg: quinn::ClientConfig,
        rate: f64,
        mode: JobMode,
        phase: watch::Receiver<Phase>,
    ) -> Result<Self> {
        let stats = Arc::new(ThreadStats::new()?);
        let records = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (Arc::clone(&stats), Arc::clone(&records));
        let handle = std::thread::Builder::new()
            .name("loadtest-submit".into())
            .spawn(move || {
                let run = || -> Result<()> {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&rt, run(server, cfg, rate, mode, phase, &s, &r))
                };
                if let Err(e) = run() {
                    s.error(format!("submitter: {e:#}"));
                }
            })
            .context("cannot start the submitter thread")?;
        Ok(Self {
            handle,
            stats,
            records,
        })
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

async fn run(
    server: SocketAddr,
    cfg: quinn::ClientConfig,
    rate: f64,
    mode: JobMode,
    mut phase: watch::Receiver<Phase>,
    stats: &Arc<ThreadStats>,
    records: &Arc<Mutex<Vec<Submitted>>>,
) -> Result<()> {
    let ep = hodei_transport::client_endpoint(server, cfg)?;
    let mut conn = hodei_transport::connect(&ep, server).await?;
    reached(&mut phase, Phase::Steady).await;
    let mut next_reconnect = tokio::time::Instant::now();
    let spec = Rc::new(spec(mode));
    let in_flight = Rc::new(Cell::new(0usize));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut tasks = Vec::new();
    while *phase.borrow() == Phase::Steady {
        tokio::select! {
            _ = tick.tick() => {}
            _ = phase.changed() => continue,
        }
        if in_flight.get() >= MAX_IN_FLIGHT {
            bump(&stats.counters.submit_skipped);
            continue;
        }
        // A lost connection is replaced (at most twice a second); ticks meanwhile are skipped.
        if conn.close_reason().is_some() {
            let now = tokio::time::Instant::now();
            if now < next_reconnect {
                bump(&stats.counters.submit_skipped);
                continue;
            }
            next_reconnect = now + RECONNECT_PAUSE;
            match tokio::time::timeout(RECONNECT_PAUSE, hodei_transport::connect(&ep, server)).await
            {
                Ok(Ok(c)) => conn = c,
                Ok(Err(e)) => {
                    stats.error(format!("submit: reconnecting: {e}"));
                    continue;
                }
                Err(_) => continue,
            }
        }
        in_flight.set(in_flight.get() + 1);
        let (conn, spec, in_flight) = (conn.clone(), Rc::clone(&spec), Rc::clone(&in_flight));
        let (stats, records) = (Arc::clone(stats), Arc::clone(records));
        tasks.push(tokio::task::spawn_local(async move {
            bump(&stats.counters.submitted);
            let sent_us = wall_now();
            match submit(&conn, &spec).await {
                Ok(job) => {
                    let acked_us = wall_now();
                    bump(&stats.counters.acked);
                    if let Ok(mut r) = records.lock() {
                        r.push(Submitted {
                            job,
                            sent_us,
                            acked_us,
                        });
                    }
                }
                Err(e) => {
                    bump(&stats.counters.submit_errors);
                    stats.error(format!("submit: {e:#}"));
                }
            }
            in_flight.set(in_flight.get() - 1);
        }));
        tasks.retain(|t| !t.is_finished());
    }
    // Acknowledgements still on their way are worth waiting for, until the stop.
    let wait = async {
        for t in tasks {
            let _ = t.await;
        }
    };
    tokio::select! {
        () = wait => {}
        () = reached(&mut phase, Phase::Stop) => {}
    }
    conn.close(0u32.into(), b"loadtest done");
    let _ = tokio::time::timeout(Duration::from_secs(1), ep.wait_idle()).await;
    Ok(())
}

async fn submit(conn: &quinn::Connection, spec: &JobSpec) -> Result<u64> {
    let (send, recv) = conn.open_bi().await?;
    let mut w = FrameWriter::new(send);
    w.send(&crate::token::request(JobRequest::Submit {
        specs: vec![spec.clone()],
    }))
    .await?;
    w.finish()?;
    let mut r = FrameReader::new(recv);
    while let Some(m) = r.next::<FromServer>().await? {
        match m {
            FromServer::Submitted { ids } => {
                return ids
                    .first()
                    .map(|id| id.0)
                    .context("an empty acknowledgement");
            }
            FromServer::Error { message, .. } => bail!("server error: {message}"),
            _ => {}
        }
    }
    bail!("the stream ended without an acknowledgement")
}
