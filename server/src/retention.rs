//! The retention sweeper: one background thread (`hodei server --retain-finished`), never a
//! shard thread, that deletes what the shards no longer hold and what is older than the
//! window, through the store's bounded writes (`store/retention.rs`):
//!
//! 1. the output of jobs the shards deleted (they leave an `expired` mark with the
//!    deletion of the record, in the shard's own batch);
//! 2. event blocks older than the window, per shard;
//! 3. audit blocks older than the window, per chain, checkpointed (`store/checkpoint.rs`).
//!
//! A pass runs every [`retention_interval`] of the window (the shards' pace) and goes on
//! in batches until nothing is due, so a backlog after a long downtime drains at once
//! without any write being large. Below the free-space floor nothing is written (the
//! store's health says so); the pass waits for the next one. After each pass, a keyspace
//! that has grown to twice its compacted size is compacted (`store/compaction.rs`): fjall
//! frees deleted data only when a merge reaches it, and its own merges come too seldom
//! for a steady load.

use std::collections::HashSet;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hodei_auth::audit::AuditKey;
use hodei_core::time::{Micros, wall_now};
use hodei_shards::retention_interval;
use tracing::{debug, error};

use crate::store::{Compaction, Store};

/// Keys (or blocks) one write deletes.
const BUDGET: usize = 1024;

/// The running sweeper; [`Sweeper::stop`] ends it.
pub struct Sweeper {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

/// Starts the sweeper for a window of `window`.
pub fn start(store: Store, window: Duration, key: AuditKey) -> Result<Sweeper> {
    let window = u64::try_from(window.as_micros()).unwrap_or(u64::MAX);
    let (stop, rx) = channel();
    let thread = std::thread::Builder::new()
        .name("hodei-retention".to_owned())
        .spawn(move || run(&store, window, &key, &rx))
        .context("cannot start the retention thread")?;
    Ok(Sweeper { stop, thread })
}

impl Sweeper {
    /// Stops it (a pass in progress ends after its current write) and waits for it.
    pub fn stop(self) {
        let _ = self.stop.send(());
        if self.thread.join().is_err() {
            error!("the retention thread panicked");
        }
    }
}

fn run(store: &Store, window: Micros, key: &AuditKey, stop: &Receiver<()>) {
    let every = Duration::from_micros(retention_interval(window));
    // Chains found broken are named once, not at every pass.
    let mut broken: HashSet<u16> = HashSet::new();
    let mut compaction = Compaction::default();
    loop {
        match stop.recv_timeout(every) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let stopping = || !matches!(stop.try_recv(), Err(std::sync::mpsc::TryRecvError::Empty));
        if let Err(e) = store.health().before_write() {
            debug!("retention pass skipped: {e}");
            continue;
        }
        let t = Instant::now();
        match pass(store, window, key, &mut broken, &stopping) {
            Ok(done) if done.any() => debug!(
                output_keys = done.output_keys,
                jobs = done.jobs,
                event_blocks = done.event_blocks,
                audit_blocks = done.audit_blocks,
                ms = t.elapsed().as_millis(),
                store_bytes = store.disk_space(),
                "retention pass"
            ),
            Ok(_) => {}
            // A full disk shows in the store's health and the next pass retries; anything
            // else is logged, and the next pass retries too.
            Err(e) => error!("retention pass failed: {e:#}"),
        }
        // What was deleted takes space until a compaction drops it (`store/compaction.rs`).
        match store.compact_grown(&mut compaction) {
            Ok(done) => {
                for c in done {
                    debug!(
                        keyspace = c.keyspace,
                        before = c.before,
                        after = c.after,
                        "keyspace compacted"
                    );
                }
            }
            Err(e) => error!("compaction after retention failed: {e:#}"),
        }
        if stopping() {
            return;
        }
    }
}

/// What a pass deleted.
#[derive(Debug, Default)]
struct Done {
    output_keys: usize,
    jobs: usize,
    event_blocks: usize,
    audit_blocks: usize,
}

impl Done {
    fn any(&self) -> bool {
        self.output_keys + self.jobs + self.event_blocks + self.audit_blocks > 0
    }
}

fn pass(
    store: &Store,
    window: Micros,
    key: &AuditKey,
    broken: &mut HashSet<u16>,
    stopping: &dyn Fn() -> bool,
) -> Result<Done> {
    let now = wall_now();
    let before = now.saturating_sub(window);
    let mut done = Done::default();
    loop {
        let s = store.sweep_expired(BUDGET)?;
        done.output_keys += s.output_keys;
        done.jobs += s.jobs;
        if !s.more || stopping() {
            break;
        }
    }
    for shard in store.event_shards()? {
        loop {
            let n = store.trim_events(shard, before, BUDGET)?;
            done.event_blocks += n;
            if n < BUDGET || stopping() {
                break;
            }
        }
    }
    for chain in store.audit_chains()? {
        loop {
            match store.trim_audit(chain, before / 1_000, now / 1_000, key, BUDGET) {
                Ok(n) => {
                    done.audit_blocks += n;
                    broken.remove(&chain);
                    if n < BUDGET || stopping() {
                        break;
                    }
                }
                Err(e) if crate::store::is_full(&e) => return Err(e),
                Err(e) => {
                    if broken.insert(chain) {
                        error!("audit chain {chain} is kept whole: {e:#}");
                    }
                    break;
                }
            }
        }
    }
    Ok(done)
}
