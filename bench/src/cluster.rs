//! A throwaway Hodei cluster for a benchmark run: `hodei server` and `hodei agent` processes
//! on loopback with a temporary data dir, and a QUIC client to it. The processes are
//! [`Proc`]s: dropping the cluster (an error, a timeout) kills them; [`Cluster::stop`] stops
//! them gracefully.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hodei_core::ids::JobId;
use hodei_core::job::JobRecord;
use hodei_core::spec::JobSpec;
use hodei_core::wire::{ALPN_CLIENT, ControlRequest, FromServer, JobRequest, Request, ToServer};
use hodei_transport::{FrameReader, FrameWriter, TransportOptions};
use nix::sys::signal::Signal;

use crate::procs::{self, Proc};

/// How long agents, then the server, get to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Agents, slots and shards of a benchmark cluster (shared by the scenarios' flags).
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct FleetArgs {
    /// Agents.
    #[arg(long, default_value_t = 2)]
    pub agents: usize,
    /// Slots per agent.
    #[arg(long, default_value_t = 4)]
    pub slots: u32,
    /// Server shards.
    #[arg(long, default_value_t = 2)]
    pub shards: usize,
    /// Assignments each agent queues beyond its slots (`hodei agent --prefetch`).
    #[arg(long, default_value_t = 0)]
    pub prefetch: u32,
    /// The server's `--commit-interval` (least time between two commits of a shard; passed
    /// only when not 0).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub commit_interval: Duration,
}

impl FleetArgs {
    /// A fleet with the server's defaults: no prefetch, no commit interval.
    pub fn plain(agents: usize, slots: u32, shards: usize) -> Self {
        Self {
            agents,
            slots,
            shards,
            prefetch: 0,
            commit_interval: Duration::ZERO,
        }
    }

    /// Slots of the whole fleet: as many spawners measure the raw spawn rate beside it.
    pub fn total_slots(&self) -> usize {
        self.agents * self.slots as usize
    }
}

pub struct Cluster {
    /// The server first, then the agents.
    procs: Vec<Proc>,
    dir: PathBuf,
    addr: std::net::SocketAddr,
    hodei: PathBuf,
    /// What the cluster was started with (a restart starts the server the same way).
    fleet: FleetArgs,
}

impl Cluster {
    pub async fn start(hodei: &Path, fleet: &FleetArgs, noop: bool) -> Result<Self> {
        let FleetArgs {
            agents,
            slots,
            prefetch,
            ..
        } = *fleet;
        let dir = procs::temp_dir(if noop { "noop" } else { "true" })?;
        // Owned by the cluster from here on, so that an error below still cleans up.
        let mut cluster = Self {
            procs: Vec::new(),
            dir,
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            hodei: hodei.to_owned(),
            fleet: *fleet,
        };
        let port = std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        cluster.addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let (addr, dir) = (cluster.addr, cluster.dir.clone());
        cluster.procs.push(spawn_server(hodei, &addr, fleet, &dir)?);
        let ca = dir.join("data/ca.pem");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !ca.exists() {
            if std::time::Instant::now() > deadline {
                bail!("the server did not start");
            }
            if let Some(server) = cluster.procs.first_mut()
                && let Some(status) = server.try_finish()?
            {
                bail!("the server exited at start ({status})");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The agents join with one token (mTLS from then on).
        let join = cluster.join_token(agents).await?;
        for i in 0..agents {
            let mut cmd = Command::new(hodei);
            cmd.args([
                "agent",
                "--server",
                &addr.to_string(),
                "--slots",
                &slots.to_string(),
                "--prefetch",
                &prefetch.to_string(),
                "--ca",
            ])
            .arg(&ca)
            .arg("--work-dir")
            .arg(dir.join(format!("agent-{i}")))
            .env("RUST_LOG", "warn")
            .env("HODEI_JOIN_TOKEN", &join)
            .args(extra_args("HODEI_BENCH_AGENT_ARGS"))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
            if noop {
                cmd.arg("--noop");
            }
            cluster.procs.push(Proc::spawn(&mut cmd, "hodei agent")?);
        }
        let client = cluster.client().await?;
        // Wait for every agent to register.
        loop {
            let ready = client.workers().await?;
            if ready >= agents {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!("only {ready} of {agents} agents registered");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(cluster)
    }

    /// A join token for `n` agents.
    async fn join_token(&self, n: usize) -> Result<String> {
        let client = self.client().await?;
        let body = ControlRequest::CreateToken {
            role: "agent".to_owned(),
            name: "bench-agents".to_owned(),
            ttl_ms: Some(3_600_000),
            uses: Some(u32::try_from(n).unwrap_or(u32::MAX)),
        };
        for m in client.request(body).await? {
            if let FromServer::Token { token, .. } = m {
                return Ok(token);
            }
        }
        bail!("the server created no join token")
    }

    /// One connection attempt, no retries.
    async fn connect_once(&self) -> Result<Client> {
        let cfg = hodei_transport::client_config(
            &self.dir.join("data/ca.pem"),
            ALPN_CLIENT,
            &TransportOptions::default(),
        )?;
        let ep = hodei_transport::client_endpoint(self.addr, cfg)?;
        let conn = hodei_transport::connect(&ep, self.addr).await?;
        // Every request carries the admin token the server wrote on its first start.
        let token = std::fs::read_to_string(self.dir.join("data/admin.token"))
            .context("cannot read the server's admin.token")?
            .trim()
            .to_owned();
        Ok(Client {
            conn,
            _ep: ep,
            token,
        })
    }

    pub async fn client(&self) -> Result<Client> {
        let mut last = None;
        for _ in 0..100 {
            match self.connect_once().await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("cannot connect")))
    }

    /// The server's pid.
    pub fn server_pid(&self) -> Option<u32> {
        self.procs.first().map(Proc::id)
    }

    /// CPU used so far by the server, and by the agents together (their jobs as children).
    pub fn cpu(&self) -> (crate::cpu::Cpu, crate::cpu::Cpu) {
        let server = self.procs.first().map(|p| crate::cpu::cpu(p.id()));
        let agents = self.procs.iter().skip(1).map(|p| crate::cpu::cpu(p.id()));
        (
            server.unwrap_or_default(),
            agents.fold(Default::default(), |a, b| a + b),
        )
    }

    /// `kill -9` of the server, then a new server process on the same data dir; returns
    /// how long it took until the new one answered a request. `spawned` gets the new pid.
    pub async fn restart_server(&mut self, spawned: impl FnOnce(u32)) -> Result<Duration> {
        if let Some(p) = self.procs.first_mut() {
            p.kill();
        }
        let t0 = std::time::Instant::now();
        let server = spawn_server(&self.hodei, &self.addr, &self.fleet, &self.dir)?;
        spawned(server.id());
        if let Some(p) = self.procs.first_mut() {
            *p = server;
        }
        let deadline = t0 + Duration::from_secs(120);
        loop {
            // A fresh, short connection attempt each time: a QUIC handshake to a port nobody
            // listens on yet is only retransmitted with exponential backoff, which would
            // measure the backoff instead of the server.
            let probe = async {
                let c = self.connect_once().await?;
                c.workers().await
            };
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(250), probe).await {
                return Ok(t0.elapsed());
            }
            if std::time::Instant::now() > deadline {
                bail!("the restarted server did not answer within 120 s");
            }
        }
    }

    /// SIGTERM to the agents, which drain and say goodbye while the server still runs, then
    /// to the server; SIGKILL for any that takes longer than [`STOP_GRACE`].
    pub fn stop(mut self) {
        let first = 1.min(self.procs.len());
        let (server, agents) = self.procs.split_at_mut(first);
        // Signal all agents first, so that their grace periods overlap.
        agents.iter().for_each(|p| p.signal(Signal::SIGTERM));
        agents.iter_mut().for_each(|p| p.wait_or_kill(STOP_GRACE));
        server.iter_mut().for_each(|p| p.stop(STOP_GRACE));
        // Drop kills nothing more and removes the dir.
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Agents first: killed while the server lives, they cannot reconnect to it.
        for p in self.procs.iter_mut().rev() {
            p.kill();
        }
        procs::remove_dir(&self.dir);
    }
}

pub struct Client {
    conn: quinn::Connection,
    _ep: quinn::Endpoint,
    token: String,
}

/// What one `SubmitWait` request saw.
pub struct Waited {
    pub ids: Vec<JobId>,
    /// When the `Submitted` acknowledgement arrived.
    pub acked: std::time::Instant,
    /// Every job's final record, in the order they ended.
    pub jobs: Vec<JobRecord>,
}

impl Client {
    /// Submits and waits in one request: the server answers `Submitted`, then each job's
    /// final record as it ends, then ends the stream.
    pub async fn submit_wait(&self, specs: Vec<JobSpec>) -> Result<Waited> {
        let n = specs.len();
        let mut ids = None;
        let mut acked = std::time::Instant::now();
        let mut jobs = Vec::with_capacity(n);
        self.stream(JobRequest::SubmitWait { specs }, |m| match m {
            FromServer::Submitted { ids: got } => {
                acked = std::time::Instant::now();
                ids = Some(got);
            }
            FromServer::Job(rec) => jobs.push(*rec),
            _ => {}
        })
        .await?;
        let ids = ids.context("no acknowledgement")?;
        if jobs.len() != ids.len() {
            bail!(
                "{} of {} jobs answered before the stream ended",
                jobs.len(),
                ids.len()
            );
        }
        Ok(Waited { ids, acked, jobs })
    }

    pub async fn request(&self, body: impl Into<ToServer>) -> Result<Vec<FromServer>> {
        let mut out = Vec::new();
        self.stream(body, |m| out.push(m)).await?;
        Ok(out)
    }

    /// Sends a request and hands each reply to `f` until the server ends the stream.
    async fn stream(&self, body: impl Into<ToServer>, mut f: impl FnMut(FromServer)) -> Result<()> {
        let (send, recv) = self.conn.open_bi().await?;
        let mut w = FrameWriter::new(send);
        w.send(&Request {
            token: self.token.clone(),
            body: body.into(),
        })
        .await?;
        w.finish()?;
        let mut r = FrameReader::new(recv);
        while let Some(m) = r.next::<FromServer>().await? {
            if let FromServer::Error { message, .. } = m {
                bail!("server error: {message}");
            }
            f(m);
        }
        Ok(())
    }

    pub async fn submit(&self, specs: Vec<JobSpec>) -> Result<Vec<JobId>> {
        for m in self.request(JobRequest::Submit { specs }).await? {
            if let FromServer::Submitted { ids } = m {
                return Ok(ids);
            }
        }
        bail!("no acknowledgement")
    }

    /// Waits until every job is final (concurrent server-side waits, in windows).
    pub async fn wait_all(self: &std::rc::Rc<Self>, ids: &[JobId]) -> Result<()> {
        for window in ids.chunks(1_000) {
            let tasks: Vec<_> = window
                .iter()
                .map(|id| {
                    let (c, job) = (std::rc::Rc::clone(self), *id);
                    tokio::task::spawn_local(
                        async move { c.request(JobRequest::Wait { job }).await },
                    )
                })
                .collect();
            for t in tasks {
                t.await??;
            }
        }
        Ok(())
    }

    pub async fn jobs(&self) -> Result<Vec<JobRecord>> {
        let mut out = Vec::new();
        for m in self.request(JobRequest::ListJobs { state: None }).await? {
            if let FromServer::Jobs(js) = m {
                out.extend(js);
            }
        }
        Ok(out)
    }

    pub async fn workers(&self) -> Result<usize> {
        let mut n = 0;
        for m in self.request(JobRequest::ListWorkers).await? {
            if let FromServer::Workers(ws) = m {
                n += ws
                    .iter()
                    .filter(|w| {
                        w.state.accepts_jobs() || w.state == hodei_core::state::WorkerState::Busy
                    })
                    .count();
            }
        }
        Ok(n)
    }
}

/// Extra flags for the server or the agents, for tuning sweeps (e.g.
/// `HODEI_BENCH_SERVER_ARGS="--no-pin --gso"`), split on whitespace.
fn extra_args(var: &str) -> Vec<String> {
    std::env::var(var)
        .map(|v| v.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn spawn_server(
    hodei: &Path,
    addr: &std::net::SocketAddr,
    fleet: &FleetArgs,
    dir: &Path,
) -> Result<Proc> {
    let mut cmd = Command::new(hodei);
    cmd.args([
        "server",
        "--listen",
        &addr.to_string(),
        "--shards",
        &fleet.shards.to_string(),
        "--data-dir",
    ])
    .arg(dir.join("data"))
    .args(extra_args("HODEI_BENCH_SERVER_ARGS"))
    .env(
        "RUST_LOG",
        std::env::var("HODEI_BENCH_LOG").unwrap_or_else(|_| "warn".to_owned()),
    )
    .stdin(Stdio::null())
    .stdout(Stdio::null());
    // Only when set, so that builds from before the flag can still be compared.
    if !fleet.commit_interval.is_zero() {
        cmd.arg("--commit-interval")
            .arg(humantime::format_duration(fleet.commit_interval).to_string());
    }
    Proc::spawn(&mut cmd, "hodei server")
}
