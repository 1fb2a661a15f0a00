//! The shard-loop probe. The server does not answer heartbeats, so their handling time
//! cannot be timed directly; this is the nearest honest figure. Every client UDP socket of
//! the fleet lands on one server shard (SO_REUSEPORT hashes the address), learnt from the
//! shard bits of the first worker id welcomed on it. From the same socket, the probe opens a
//! client connection (ALPN `hodei-client/1`, so it lands on that shard too) and asks for a
//! job that cannot exist and that this shard owns (`GetJob`, epoch and sequence at their
//! maximum). The answer, `NotFound`, comes from the shard loop without touching the disk:
//! the round trip is QUIC both ways plus the wait in, and the turn of, the same shard loop
//! that handles this socket's agents' heartbeats.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use hodei_core::ids::JobId;
use hodei_core::wire::{ErrorKind, FromServer, JobRequest};
use hodei_transport::{FrameReader, FrameWriter, SERVER_NAME};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::agent::micros;
use crate::fleet::{Ctx, Phase, reached, stopped};
use crate::stats::{ThreadStats, bump};

/// Longest wait for one probe answer; a slower one counts as an error.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Probe {
    pub ctx: Rc<Ctx>,
    pub ep: quinn::Endpoint,
    pub shard: Rc<Cell<Option<u8>>>,
    pub phase: watch::Receiver<Phase>,
    /// Probes per second from this socket.
    pub rate: f64,
}

impl Probe {
    pub async fn run(mut self) {
        let mut phase = self.phase.clone();
        tokio::select! {
            () = self.probe() => {}
            () = stopped(&mut phase) => {}
        }
    }

    async fn probe(&mut self) {
        reached(&mut self.phase, Phase::Steady).await;
        // The socket's shard is known once one of its agents was welcomed.
        let shard = loop {
            if let Some(s) = self.shard.get() {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let st = std::sync::Arc::clone(&self.ctx.stats);
        let conn = match self.connect().await {
            Ok(c) => c,
            Err(e) => {
                bump(&st.counters.probe_errors);
                st.error(format!("probe: {e}"));
                return;
            }
        };
        let job = JobId::new(shard, u32::MAX, u64::MAX);
        let period = Duration::from_secs_f64(1.0 / self.rate.max(1e-3));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let t = Instant::now();
            match tokio::time::timeout(PROBE_TIMEOUT, ask(&conn, job)).await {
                Ok(Ok(())) => {
                    bump(&st.counters.probes);
                    if *self.phase.borrow() == Phase::Steady {
                        ThreadStats::record(&st.probe_us, micros(t.elapsed()));
                    }
                }
                Ok(Err(e)) => {
                    bump(&st.counters.probe_errors);
                    st.error(format!("probe: {e}"));
                    if conn.close_reason().is_some() {
                        return;
                    }
                }
                Err(_) => {
                    bump(&st.counters.probe_errors);
                    st.error(format!("probe: no answer within {PROBE_TIMEOUT:?}"));
                }
            }
        }
    }

    async fn connect(&self) -> Result<quinn::Connection, String> {
        let server = self.ctx.cfg.server;
        let connecting = self
            .ep
            .connect_with(self.ctx.cfg.client_cfg.clone(), server, SERVER_NAME)
            .map_err(|e| format!("cannot connect to {server}: {e}"))?;
        match tokio::time::timeout(PROBE_TIMEOUT, connecting).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(format!("cannot connect to {server}: {e}")),
            Err(_) => Err(format!(
                "no handshake with {server} within {PROBE_TIMEOUT:?}"
            )),
        }
    }
}

/// One request on its own stream; `Ok` only for the expected `NotFound`.
async fn ask(conn: &quinn::Connection, job: JobId) -> Result<(), String> {
    let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let mut w = FrameWriter::new(send);
    w.send(&crate::token::request(JobRequest::GetJob { job }))
        .await
        .map_err(|e| e.to_string())?;
    w.finish().map_err(|e| e.to_string())?;
    let mut r = FrameReader::new(recv);
    match r.next::<FromServer>().await.map_err(|e| e.to_string())? {
        Some(FromServer::Error {
            kind: ErrorKind::NotFound,
            ..
        }) => Ok(()),
        Some(FromServer::Error { message, .. }) => Err(format!("server error: {message}")),
        Some(_) => Err(format!("job {job} exists: pick another probe id")),
        None => Err("the server ended the stream without an answer".to_owned()),
    }
}
