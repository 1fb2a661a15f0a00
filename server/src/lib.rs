//! Hodei's server (`hodei server`, and the server half of `hodei up`).
//!
//! [`start`] opens the store, prepares TLS, binds one SO_REUSEPORT socket per shard on
//! the shared port plus a private redirect port per shard, starts one pinned thread per
//! shard, and on SIGINT/SIGTERM stops accepting, flushes the store and closes connections.

pub mod args;
mod audit;
pub mod conn;
pub mod control;
mod retention;
mod shard_thread;
mod stats;
pub mod store;
pub mod up;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hodei_core::job::JobRecord;
use hodei_core::time::wall_now;
use hodei_shards::{Shard, ShardConfig};
use hodei_transport::TransportOptions;
use tokio::sync::mpsc::unbounded_channel;
use tracing::{info, warn};

use shard_thread::{Input, ShardSetup};
use store::Store;

/// Server settings (from `hodei server` flags).
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub shards: usize,
    pub heartbeat: Duration,
    pub heartbeat_timeout: Duration,
    pub disconnect_grace: Duration,
    pub reattach_grace: Duration,
    pub assign_timeout: Duration,
    pub transport: TransportOptions,
    /// Pin shard thread i to core i (mod cores).
    pub pin: bool,
    /// Lifetime of the client certificates agents get (they renew at two thirds).
    pub agent_cert_ttl: Duration,
    /// What one source address may hold.
    pub limits: conn::Limits,
    /// Least time between the starts of two commits of a shard (0: as soon as the previous
    /// one is on disk).
    pub commit_interval: Duration,
    /// Free bytes below which new jobs are refused; below a quarter of it nothing is
    /// written until space is freed (`store::Health`).
    pub min_free_space: u64,
    /// Output kept per attempt of a job whose spec sets no `max_output`.
    pub max_output: u64,
    /// Finished jobs (and events and audit records) older than this are deleted; `None`
    /// keeps everything.
    pub retain_finished: Option<Duration>,
}

/// A started server: its shard threads, and how to stop them.
pub struct Running {
    threads: Vec<std::thread::JoinHandle<Result<()>>>,
    inputs: Vec<tokio::sync::mpsc::UnboundedSender<Input>>,
    /// Deletes what retention let go of, off the shard threads (none with retention off).
    sweeper: Option<retention::Sweeper>,
    store: Store,
    /// The address agents and clients connect to.
    pub addr: SocketAddr,
    /// Where clients find the CA certificate.
    pub ca_path: PathBuf,
    /// Tokens, secrets, agent certificates.
    pub control: std::sync::Arc<control::Control>,
}

/// Starts the server's threads; returns once every shard is listening.
pub fn start(opts: &ServerOptions) -> Result<Running> {
    if opts.shards == 0 || opts.shards > 256 {
        bail!("--shards must be between 1 and 256 (got {})", opts.shards);
    }
    store::claim_data_dir(&opts.data_dir)?;
    let tls = hodei_transport::ensure_server_tls(&opts.data_dir).context("cannot prepare TLS")?;
    let server_cert = tls.cert().context("cannot load the server certificate")?;
    let server_config = hodei_transport::server_config(&tls, &server_cert, &opts.transport)
        .context("cannot build the TLS config")?;
    let authority = hodei_transport::Authority::load(&opts.data_dir)
        .context("cannot load the CA key (needed to issue agent certificates)")?;
    let t0 = std::time::Instant::now();
    let store = Store::open_with(&opts.data_dir, opts.min_free_space)?;
    let opened = t0.elapsed();
    let epoch = store.next_epoch()?;
    let pki = control::Pki::new(authority, server_cert, &opts.data_dir, opts.agent_cert_ttl);
    let mut control = control::Control::open(&opts.data_dir, store.clone(), pki)?;
    control.max_output = opts.max_output;
    let control = std::sync::Arc::new(control);
    let jobs = store.load_jobs()?;
    let loaded = jobs.len();
    // Partition by owner. A job whose idempotency key belongs to another shard (only after
    // the shard count changed) is also handed to that shard, for its key index.
    let mut counts = vec![0usize; opts.shards];
    for j in &jobs {
        if let Some(c) = counts.get_mut(j.id.owner(opts.shards)) {
            *c += 1;
        }
    }
    let mut per_shard: Vec<Vec<JobRecord>> =
        counts.iter().map(|c| Vec::with_capacity(*c)).collect();
    let mut foreign_keys: Vec<(usize, JobRecord)> = Vec::new();
    for j in jobs {
        let owner = j.id.owner(opts.shards);
        if let Some(k) = &j.spec.policy.idempotency_key {
            let ks = hodei_shards::key_shard(k, opts.shards);
            if ks != owner {
                foreign_keys.push((ks, j.clone()));
            }
        }
        if let Some(v) = per_shard.get_mut(owner) {
            v.push(j);
        }
    }
    info!(
        jobs = loaded,
        open_ms = opened.as_millis(),
        load_ms = (t0.elapsed() - opened).as_millis(),
        epoch,
        "store loaded from {}",
        opts.data_dir.display()
    );

    let mut shared = Vec::new();
    let mut private = Vec::new();
    let mut addr = opts.listen;
    for _ in 0..opts.shards {
        let s = hodei_transport::bind_reuseport(addr, &opts.transport)
            .with_context(|| format!("cannot listen on {addr} (is another server running?)"))?;
        // With port 0, the first bind picks the port and the other shards join it.
        addr = s.local_addr().context("socket has no address")?;
        shared.push(s);
        let p = std::net::UdpSocket::bind(SocketAddr::new(addr.ip(), 0))
            .context("cannot bind a shard's private port")?;
        p.set_nonblocking(true)
            .context("cannot make a socket nonblocking")?;
        private.push(p);
    }
    let ports: Vec<u16> = private
        .iter()
        .map(|p| p.local_addr().map(|a| a.port()).unwrap_or(0))
        .collect();
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..opts.shards)
        .map(|_| unbounded_channel::<Input>())
        .unzip();
    let cores = if opts.pin {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let now = wall_now();
    let mut threads = Vec::new();
    for (i, ((rx, shared_socket), private_socket)) in
        rxs.into_iter().zip(shared).zip(private).enumerate()
    {
        let mut cfg = ShardConfig::new(i, opts.shards, epoch);
        cfg.ports.clone_from(&ports);
        cfg.heartbeat = micros(opts.heartbeat);
        cfg.heartbeat_timeout = micros(opts.heartbeat_timeout);
        cfg.disconnect_grace = micros(opts.disconnect_grace);
        cfg.reattach_grace = micros(opts.reattach_grace);
        cfg.assign_timeout = micros(opts.assign_timeout);
        cfg.retain_finished = opts.retain_finished.map(micros);
        #[allow(clippy::cast_possible_truncation)] // at most 256 shards, checked above
        let seq = store.last_event_seq(i as u8)?;
        // Each shard gets its own jobs (moved, not copied: a million jobs is a lot to copy),
        // plus any other job whose idempotency key it owns, for its key index.
        let mine = std::mem::take(per_shard.get_mut(i).context("shard index out of range")?);
        let keyed = foreign_keys
            .iter()
            .filter(|j| j.0 == i)
            .map(|j| j.1.clone());
        let shard = Shard::new(cfg, mine.into_iter().chain(keyed), now, seq);
        #[allow(clippy::cast_possible_truncation)] // at most 256 shards, checked above
        let audit = audit::ShardAudit::resume(&store, i as u16, control.audit_key())?;
        let setup = ShardSetup {
            shard,
            store: store.clone(),
            control: std::sync::Arc::clone(&control),
            audit,
            limits: opts.limits,
            shared_socket,
            private_socket,
            server_config: server_config.clone(),
            reset_key: tls.reset_key.clone(),
            rx,
            tx: txs[i].clone(),
            peers: txs.clone(),
            commit_interval: opts.commit_interval,
        };
        let core = cores.get(i % cores.len().max(1)).copied();
        let t = std::thread::Builder::new()
            .name(format!("hodei-shard-{i}"))
            .spawn(move || {
                if let Some(c) = core {
                    core_affinity::set_for_current(c);
                }
                shard_thread::run(setup)
            })
            .context("cannot start a shard thread")?;
        threads.push(t);
    }
    control.set_shards(txs.clone());
    let sweeper = opts
        .retain_finished
        .map(|w| retention::start(store.clone(), w, control.audit_key()))
        .transpose()?;
    info!(%addr, shards = opts.shards, start_ms = t0.elapsed().as_millis(), "hodei server listening");
    Ok(Running {
        threads,
        inputs: txs,
        sweeper,
        store,
        addr,
        ca_path: tls.ca_cert_path,
        control,
    })
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Running {
    /// Stops every shard, waits for them, and flushes the store.
    pub fn stop(self) -> Result<()> {
        for tx in &self.inputs {
            let _ = tx.send(Input::Shutdown);
        }
        let mut first_err = None;
        for t in self.threads {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(anyhow::anyhow!("a shard thread panicked"));
                }
            }
        }
        if let Some(s) = self.sweeper {
            s.stop();
        }
        let flushed = self.store.persist();
        let Some(failure) = first_err else {
            flushed?;
            self.store.mark_clean()?;
            info!("store flushed; server stopped");
            return Ok(());
        };
        // A shard that stopped by itself is the reason to report; the store is not marked
        // clean, so the next start checks its journals as after a crash.
        if let Err(e) = flushed {
            tracing::error!("{e:#}");
        }
        Err(failure)
    }

    /// True if a shard thread has stopped by itself (a fatal store error).
    pub fn any_stopped(&self) -> bool {
        self.threads
            .iter()
            .any(std::thread::JoinHandle::is_finished)
    }
}

/// Runs until SIGINT/SIGTERM (or a shard failing), then stops cleanly.
pub fn run(opts: &ServerOptions) -> Result<()> {
    let running = start(opts)?;
    wait_for_signal(|| running.any_stopped())?;
    if running.any_stopped() {
        warn!("a shard stopped; shutting down");
    }
    running.stop()
}

/// Blocks until SIGINT or SIGTERM, or until `stop()` turns true.
pub fn wait_for_signal(stop: impl Fn() -> bool) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
                _ = int.recv() => { info!("SIGINT: shutting down"); break; }
                _ = tick.tick() => if stop() { break; },
            }
        }
        Ok::<_, anyhow::Error>(())
    })
}
