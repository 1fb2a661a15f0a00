//! runner: runs one job attempt as its own process group and streams what it does as events.
//!
//! [`spawn_job`] starts a tokio task per attempt. The task takes a slot when the agent
//! prefetches (reporting [`RunEventKind::Queued`] if it has to wait for one), prepares the
//! attempt (its secrets' delivery, working directory ([`workdirs`]), script file), spawns the
//! process as the leader of a new process group, then runs two futures side by side until
//! both are done:
//!
//! - the **supervisor** ([`process`]) waits for the exit, a cancel or the time limit, signals the
//!   whole group (SIGTERM, then SIGKILL after [`RunnerOptions::kill_grace`]; SIGKILL at once
//!   for [`RunHandle::kill`], the lease's kill) and, once the main
//!   process is gone, SIGKILLs the group so no stray child keeps the pipes open. It never waits
//!   on the events channel, so a cancel or a timeout still kills a job whose consumer stalls;
//! - the **pump** ([`pump`]) reads stdout and stderr, masks the job's secret values in each
//!   stream, batches them, appends every batch to the attempt's spool file ([`spool`]) and only
//!   then sends it as an [`RunEventKind::Output`] event. When the bounded channel is full, or
//!   the attempt has spooled [`RunnerOptions::output_window`] bytes beyond what the server
//!   acknowledged as durable ([`RunHandle::acked`]), the pump stops reading, the pipes fill
//!   and the job blocks on write: output slows the producer, it is never dropped, and neither
//!   the spool nor the server's unwritten output grows without bound.
//!
//! The agent's guard ([`guard`]), a process of its own started with the agent, is told each
//! group at its spawn and at its final kill, and SIGKILLs the groups left when the agent dies;
//! its journal lets the next run of the agent kill what a crash of both left.
//!
//! Events of one attempt are always `Started`, `Output`*, `Finished`, with `Finished` last.
//! The spool lets the agent resend output from any offset after a reconnect ([`read_spool`]);
//! [`forget`] removes it once the server has acknowledged the result.
//!
//! Secrets ([`secrets`]): the values of an `Assign` come in a [`Secrets`] (wiped on drop). The
//! redactor is compiled from them first, on the blocking pool (its cost grows with the values'
//! size), then they are delivered as files or on stdin and dropped once the process is
//! spawned; only the redactor's patterns stay until the output ends. The secrets directory is removed before
//! `Finished` is sent, on every path (exit, timeout, cancel, spawn failure). Offsets and the
//! spool are in redacted bytes: no secret value is ever spooled or sent.

mod guard;
mod process;
mod pump;
mod secrets;
mod spool;
mod workdirs;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use hodei_core::ids::{Attempt, JobId};
use hodei_core::job::Outcome;
use hodei_core::spec::JobSpec;
use hodei_core::time::{Micros, wall_now};
use hodei_core::wire::Chunk;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

pub use guard::{GUARD_ENV, Guard, serve as serve_guard};
pub use secrets::{SECRETS_DIR_ENV, Secrets, clean_leftover_secrets};
pub use spool::{SpoolReader, read_spool};
pub use workdirs::{Workdirs, sweep_kept};

/// An attempt still waiting for a slot after this reports [`RunEventKind::Queued`], which
/// the server needs within its assign timeout (30 s by default), so that must be longer.
const QUEUED_NOTICE: Duration = Duration::from_millis(300);

/// The largest output batch, whatever `--output-batch-bytes` says: a batch is one `Output`
/// message, which must stay well under [`hodei_core::frame::MAX_FRAME`] with its headers.
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// The default [`RunnerOptions::output_window`]: output a job may spool beyond the server's
/// acknowledgement. Large enough that a job printing tens of MiB through a short server
/// outage never waits; small enough to bound the spool and the server's unwritten output.
pub const DEFAULT_OUTPUT_WINDOW: u64 = 32 << 20;

/// How the runner runs jobs; shared by every attempt of an agent.
#[derive(Clone, Debug)]
pub struct RunnerOptions {
    /// An output batch is sent once it holds this many bytes (default 64 KiB; at most
    /// [`MAX_BATCH_BYTES`] are used, see [`RunnerOptions::batch_limit`]).
    pub batch_bytes: usize,
    /// ...or once this long has passed since its first byte (default 50 ms).
    pub batch_interval: Duration,
    /// Run nothing: report every job started and exited 0 at once (measures dispatch alone).
    pub noop: bool,
    /// Root of the agent's files: `scripts/`, `spool/` and `jobs/` (the pooled default
    /// working directories, and those jobs left files in).
    pub work_root: PathBuf,
    /// Time between SIGTERM and SIGKILL when killing a group on a timeout or cancel (default 2 s).
    pub kill_grace: Duration,
    /// The pool of default working directories (shared by clones of these options).
    pub workdirs: Arc<Workdirs>,
    /// With prefetch: a permit per slot, taken before the spawn; an attempt waits for one in
    /// arrival order, and reports [`RunEventKind::Queued`] if that takes a while. `None`:
    /// every attempt runs at once.
    pub slots: Option<Arc<Semaphore>>,
    /// The guard that kills the jobs' groups if the agent dies ([`guard`]); `None` runs
    /// without one (jobs then outlive a crash of the agent).
    pub guard: Option<Arc<Guard>>,
    /// Output bytes of one attempt spooled beyond what the server acknowledged as durable;
    /// past it the pump stops reading the job's pipes until acknowledgements come
    /// ([`RunHandle::acked`]). Default [`DEFAULT_OUTPUT_WINDOW`].
    pub output_window: u64,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            batch_bytes: 64 * 1024,
            batch_interval: Duration::from_millis(50),
            noop: false,
            work_root: std::env::temp_dir().join("hodei-agent"),
            kill_grace: Duration::from_secs(2),
            workdirs: Arc::default(),
            slots: None,
            guard: None,
            output_window: DEFAULT_OUTPUT_WINDOW,
        }
    }
}

impl RunnerOptions {
    /// The bound of one output batch: `batch_bytes`, between 1 and [`MAX_BATCH_BYTES`].
    #[must_use]
    pub fn batch_limit(&self) -> usize {
        self.batch_bytes.clamp(1, MAX_BATCH_BYTES)
    }

    /// `<work_root>/spool/<job>-<attempt>.out`.
    fn spool_path(&self, job: JobId, attempt: Attempt) -> PathBuf {
        self.work_root
            .join("spool")
            .join(format!("{job}-{attempt}.out"))
    }

    /// `<work_root>/scripts/<job>-<attempt>.sh`.
    fn script_path(&self, job: JobId, attempt: Attempt) -> PathBuf {
        self.work_root
            .join("scripts")
            .join(format!("{job}-{attempt}.sh"))
    }

    /// `<work_root>/jobs`: the pooled working directories of specs without one
    /// ([`workdirs`]), and the ones jobs left files in.
    fn jobs_dir(&self) -> PathBuf {
        self.work_root.join("jobs")
    }
}

/// Something that happened to a running attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunEvent {
    /// The job.
    pub job: JobId,
    /// Its attempt.
    pub attempt: Attempt,
    /// What happened.
    pub kind: RunEventKind,
}

/// What happened to an attempt. Per attempt: `Started`, any number of `Output`, `Finished`.
/// `Started` is missing when no process was spawned: a spawn failure, or a cancel that arrived
/// before the spawn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunEventKind {
    /// Every slot is still taken [`QUEUED_NOTICE`] after the attempt arrived: it waits for one
    /// (only with prefetch; before `Started`).
    Queued,
    /// The process was spawned (agent clock at spawn).
    Started {
        /// Agent clock at spawn.
        at: Micros,
    },
    /// A batch of output.
    Output {
        /// Number of output bytes (all streams, all chunks) emitted before this batch for this
        /// attempt: batches are contiguous, each starts where the previous one ended.
        offset: u64,
        /// The bytes, in arrival order; consecutive bytes of one stream may share a chunk.
        chunks: Vec<Chunk>,
    },
    /// The attempt ended; always the last event, sent after all of its output.
    Finished {
        /// How it ended.
        outcome: Outcome,
        /// Agent clock when the main process ended (or when the spawn failed).
        at: Micros,
    },
}

/// A handle on a running attempt: cheap to clone, lives as long as anyone holds it. Once
/// every clone is dropped the attempt's output window no longer applies.
#[derive(Clone, Debug)]
pub struct RunHandle {
    cancel: Arc<CancelSignal>,
    /// Output bytes the server holds durably ([`RunHandle::acked`]); `u64::MAX` once released.
    acked: Arc<watch::Sender<u64>>,
}

impl RunHandle {
    /// The server holds the attempt's output up to `end` durably (`OutputAck`, `Resume`):
    /// the pump may spool up to [`RunnerOptions::output_window`] bytes beyond it.
    pub fn acked(&self, end: u64) {
        self.acked.send_if_modified(|v| {
            let more = end > *v;
            if more {
                *v = end;
            }
            more
        });
    }

    /// Nobody will acknowledge this attempt's output any more (it was let go): its pump
    /// reads on without a window, so a dying job is never left blocked on its pipes.
    pub fn release(&self) {
        self.acked(u64::MAX);
    }

    /// Kills the attempt's whole process group (SIGTERM, then SIGKILL after the grace period);
    /// it then finishes as [`Outcome::Cancelled`]. Idempotent, and a no-op once the process
    /// has exited on its own.
    pub fn cancel(&self) {
        self.cancel.fire();
    }

    /// SIGKILLs the attempt's whole process group now, before returning: no SIGTERM, no
    /// grace (the lease: the server may start the attempt elsewhere right after). An attempt
    /// not spawned yet never starts. It then finishes as [`Outcome::Cancelled`], unless its
    /// main process had already ended on its own (an exit code, or another signal than this
    /// SIGKILL): that ending is its result. Idempotent.
    pub fn kill(&self) {
        self.cancel.hard.store(true, Ordering::Release);
        let group = self.cancel.group.load(Ordering::Acquire);
        if group > 0 {
            process::kill_group_now(group);
        }
        // Wakes the supervisor (or stops an attempt that has not spawned yet).
        self.cancel.fire();
    }
}

/// A one-shot, level-triggered cancel flag the supervisor can await.
#[derive(Debug, Default)]
struct CancelSignal {
    fired: AtomicBool,
    notify: Notify,
    /// [`RunHandle::kill`]: SIGKILL at once instead of SIGTERM and a grace.
    hard: AtomicBool,
    /// The attempt's process group while its supervisor may still signal it (0: none yet, or
    /// no more). Set and cleared by the supervisor on the agent's one runtime thread, so a
    /// [`RunHandle::kill`] (on that thread too) never signals a group id after the reap.
    group: AtomicI32,
}

impl CancelSignal {
    fn is_hard(&self) -> bool {
        self.hard.load(Ordering::Acquire)
    }

    fn fire(&self) {
        if !self.fired.swap(true, Ordering::AcqRel) {
            // notify_one stores a permit when nobody waits yet, so a cancel that arrives
            // before the supervisor starts waiting is not lost.
            self.notify.notify_one();
        }
    }

    fn is_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    async fn fired(&self) {
        while !self.is_fired() {
            self.notify.notified().await;
        }
    }
}

/// Spawns a tokio task (on the current runtime) that runs the attempt and sends its events on
/// `events`. The task keeps running the job to completion even if `events` is closed: its
/// output then only goes to the spool. `secrets` holds the values of `spec.secrets` (from the
/// `Assign`); they live no longer than the attempt.
pub fn spawn_job(
    job: JobId,
    attempt: Attempt,
    spec: JobSpec,
    secrets: Secrets,
    opts: Arc<RunnerOptions>,
    events: mpsc::Sender<RunEvent>,
) -> RunHandle {
    let cancel = Arc::new(CancelSignal::default());
    let (acked, acked_rx) = watch::channel(0);
    let sink = Sink {
        tx: events,
        job,
        attempt,
        gone: false,
    };
    let window = pump::Window::new(acked_rx, opts.output_window);
    tokio::spawn(run(spec, secrets, opts, sink, Arc::clone(&cancel), window));
    RunHandle {
        cancel,
        acked: Arc::new(acked),
    }
}

/// Which files an attempt may have left; [`forget`] looks only for those, since a failed
/// path lookup per job is a visible share of what short jobs cost.
#[derive(Clone, Copy, Debug)]
pub struct AttemptFiles {
    /// Its output spool: it printed something (the spool is made with the first output).
    pub spool: bool,
    /// Its script file: it is a script job.
    pub script: bool,
    /// Its default working directory: only once its process has ended, or a dying job
    /// (or its SIGTERM trap) would run in the next attempt's directory.
    pub workdir: bool,
}

impl AttemptFiles {
    /// When unsure which files it made, and its process has ended.
    pub const ALL: Self = Self {
        spool: true,
        script: true,
        workdir: true,
    };
}

/// Deletes an attempt's spool and script files once the server acknowledged its result (or
/// the attempt was let go), and gives its default working directory back to the pool if the
/// job left it empty (a directory holding files is kept as `jobs/<job>-<attempt>`).
pub fn forget(opts: &RunnerOptions, job: JobId, attempt: Attempt, files: AttemptFiles) {
    if opts.noop {
        // A no-op attempt creates no file.
        return;
    }
    let spool = files.spool.then(|| opts.spool_path(job, attempt));
    let script = files.script.then(|| opts.script_path(job, attempt));
    for path in [spool, script].into_iter().flatten() {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove job file"),
        }
    }
    if files.workdir {
        opts.workdirs.release(&opts.jobs_dir(), job, attempt);
    }
}

/// Where an attempt's events go. Once the receiver is gone the job keeps running and its
/// output keeps going to the spool; only the sending stops.
struct Sink {
    tx: mpsc::Sender<RunEvent>,
    job: JobId,
    attempt: Attempt,
    gone: bool,
}

impl Sink {
    async fn send(&mut self, kind: RunEventKind) {
        if self.gone {
            return;
        }
        let event = RunEvent {
            job: self.job,
            attempt: self.attempt,
            kind,
        };
        if self.tx.send(event).await.is_err() {
            tracing::debug!(job = %self.job, attempt = %self.attempt, "event receiver gone");
            self.gone = true;
        }
    }
}

/// The whole life of one attempt.
async fn run(
    spec: JobSpec,
    secrets: Secrets,
    opts: Arc<RunnerOptions>,
    mut sink: Sink,
    cancel: Arc<CancelSignal>,
    window: pump::Window,
) {
    if opts.noop {
        sink.send(RunEventKind::Started { at: wall_now() }).await;
        let done = RunEventKind::Finished {
            outcome: Outcome::Exited(0),
            at: wall_now(),
        };
        sink.send(done).await;
        return;
    }
    // Held until the attempt is over: the slot frees when `run` returns.
    let _slot = match &opts.slots {
        None => None,
        Some(gate) => match Arc::clone(gate).try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => wait_for_slot(gate, &cancel, &mut sink).await,
        },
    };
    if cancel.is_fired() {
        // Cancelled before anything ran: nothing to kill, nothing started.
        return end_unstarted(&mut sink, Outcome::Cancelled).await;
    }
    let (job, attempt) = (sink.job, sink.attempt);
    // Masking must be ready before the job can print anything. Compiling the patterns costs
    // time in the size of the values: off the runtime thread, which serves every other job
    // and the connection.
    let (redactor, secrets) = if secrets.is_empty() {
        (hodei_auth::Redactor::new(&[]), secrets)
    } else {
        match tokio::task::spawn_blocking(move || (secrets.redactor(), secrets)).await {
            Ok(built) => built,
            Err(e) => {
                // The build panicked or was cancelled: nothing could mask the output.
                tracing::warn!(%job, %attempt, error = %e, "cannot set up output redaction");
                let why = "cannot set up the masking of the job's secrets".to_owned();
                return end_unstarted(&mut sink, Outcome::SpawnFailed(why)).await;
            }
        }
    };
    if cancel.is_fired() {
        // Cancelled while the redactor was built: still nothing started.
        return end_unstarted(&mut sink, Outcome::Cancelled).await;
    }
    let has_secrets = !secrets.is_empty();
    let spawned = secrets::prepare(&spec, &secrets, &opts).and_then(|delivery| {
        let child = process::spawn(&spec, &opts, job, attempt, &delivery)?;
        Ok((child, delivery))
    });
    // The values go now: the delivery holds the stdin JSON until it is written, the files
    // live in the secrets directory, and the pump needs only the redactor's patterns.
    drop(secrets);
    let (mut child, mut delivery) = match spawned {
        Ok(spawned) => spawned,
        Err(msg) => {
            // `prepare` and `spawn` dropped any secrets directory they made on the way out.
            tracing::debug!(%job, %attempt, error = %msg, "spawn failed");
            return end_unstarted(&mut sink, Outcome::SpawnFailed(msg)).await;
        }
    };
    let started_at = wall_now();
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let feeder = match (delivery.stdin.take(), child.stdin.take()) {
        (Some(json), Some(pipe)) => Some(secrets::feed_stdin(pipe, json)),
        _ => None,
    };
    let (exited_tx, exited_rx) = oneshot::channel();
    let limits = process::Limits {
        timeout: spec.timeout_ms.map(Duration::from_millis),
        kill_grace: opts.kill_grace,
    };
    let supervise = process::supervise(
        &mut child,
        &cancel,
        limits,
        opts.guard.as_deref(),
        exited_tx,
    );
    let pump = pump::Pump::new(
        &opts,
        spool::SpoolWriter::new(opts.spool_path(job, attempt)),
        &redactor,
        has_secrets,
        window,
        spec.output_limit(),
    );
    // Started is sent by the pump, not here: sending can block on a full channel, and the
    // supervisor must already be enforcing the time limit and cancels while it does.
    let pumping = pump.run(&mut sink, started_at, stdout, stderr, exited_rx);
    let ((outcome, at), spool_failed) = tokio::join!(supervise, pumping);
    let outcome = match spool_failed {
        Some(why) => output_lost(outcome, &why),
        None => outcome,
    };
    if let Some(feeder) = feeder {
        // Only a process that escaped the group can still hold stdin unread; stop feeding it.
        feeder.abort();
    }
    // Before `Finished`: whoever sees the result can count on the secrets being gone.
    drop(delivery);
    sink.send(RunEventKind::Finished { outcome, at }).await;
}

/// Waits in line for a slot (the semaphore is fair); `None` if cancelled meanwhile. Most
/// waits are a few ms behind short jobs; only a longer one is worth telling the server about.
async fn wait_for_slot(
    gate: &Arc<Semaphore>,
    cancel: &CancelSignal,
    sink: &mut Sink,
) -> Option<OwnedSemaphorePermit> {
    let permit = Arc::clone(gate).acquire_owned();
    tokio::pin!(permit);
    tokio::select! {
        p = &mut permit => return p.ok(),
        () = cancel.fired() => return None,
        () = tokio::time::sleep(QUEUED_NOTICE) => {}
    }
    sink.send(RunEventKind::Queued).await;
    tokio::select! {
        p = permit => p.ok(),
        () = cancel.fired() => None,
    }
}

/// The result of an attempt whose output could not be spooled: a resend after a reconnect
/// would have come up short, so its output is not guaranteed whole. An exit (even 0) or a
/// signal becomes a failure whose error says so and names how the process ended; an ending
/// Hodei caused (timeout, cancel, drain) is already no success and stays as it is.
fn output_lost(outcome: Outcome, why: &str) -> Outcome {
    let ended = match &outcome {
        Outcome::Exited(code) => format!("exited with code {code}"),
        Outcome::Signaled(signal) => format!("was killed by signal {signal}"),
        _ => return outcome,
    };
    Outcome::SpawnFailed(format!(
        "output may be incomplete: the agent could not spool it ({why}); the process {ended}"
    ))
}

/// Ends an attempt whose process never started: its only event is `Finished`.
async fn end_unstarted(sink: &mut Sink, outcome: Outcome) {
    let at = wall_now();
    sink.send(RunEventKind::Finished { outcome, at }).await;
}
