//! `hodei events`: the event log, read from a cursor, optionally followed live. With
//! `--follow` a dropped connection (a server restart) is retried with backoff and the stream
//! resumes after the last event printed, so nothing is missed or printed twice.

use std::time::Duration;

use anyhow::Result;
use clap::Args;
use hodei_core::event::{Cursor, Event, EventKind, Subject};
use hodei_core::ids::JobId;
use hodei_core::wire::{FromServer, JobRequest};

use super::Target;
use super::view;

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Keep streaming new events (and reconnect after a server restart).
    #[arg(long, short)]
    follow: bool,
    /// Start after this cursor: SHARD:SEQ[,SHARD:SEQ...] as printed in each line, or one
    /// SEQ for every shard.
    #[arg(long, value_parser = Cursor::parse)]
    since: Option<Cursor>,
    /// Only this job's events.
    #[arg(long)]
    job: Option<JobId>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

fn line(e: &Event) -> String {
    let when = view::time_text(e.at);
    let what = match (&e.subject, &e.kind) {
        (
            Subject::Job(j),
            EventKind::Job {
                state,
                attempt,
                worker,
            },
        ) => {
            let w = worker.map(|w| format!(" worker={w}")).unwrap_or_default();
            format!(
                "job {j} cid={} {state} attempt={attempt}{w}",
                e.correlation_id
            )
        }
        (Subject::Job(j), EventKind::StaleReport { attempt, worker }) => {
            format!(
                "job {j} cid={} stale report of attempt {attempt} from {worker} ignored",
                e.correlation_id
            )
        }
        (Subject::Worker(w), EventKind::Worker { state }) => format!("worker {w} {state}"),
        (s, k) => format!("{s:?} {k:?}"),
    };
    let reason = e
        .reason
        .as_ref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    format!("{}:{} {when} {what}{reason}", e.shard, e.seq)
}

pub async fn run(args: EventsArgs, target: &Target) -> Result<u8> {
    let mut cursor = args.since.clone().unwrap_or_default();
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = stream(&args, target, &mut cursor).await;
        match result {
            Ok(()) => return Ok(0),
            Err(e) if args.follow => {
                eprintln!(
                    "hodei: events stream interrupted ({e:#}); resuming after {cursor} in {backoff:?}"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

async fn stream(args: &EventsArgs, target: &Target, cursor: &mut Cursor) -> Result<()> {
    let client = target.connect().await?;
    let since = (0..256).map(|s| cursor.get(s)).collect();
    let body = JobRequest::Events {
        since,
        job: args.job,
        follow: args.follow,
    };
    client
        .stream(body, |m| {
            if let FromServer::Events(evs) = m {
                for e in evs {
                    // A shard's stored part and its live part can overlap by a few events.
                    if e.seq <= cursor.get(usize::from(e.shard)) {
                        continue;
                    }
                    cursor.advance(usize::from(e.shard), e.seq);
                    if args.json {
                        println!("{}", view::event_json(&e));
                    } else {
                        println!("{}", line(&e));
                    }
                }
            }
            Ok(true)
        })
        .await?;
    if args.follow {
        anyhow::bail!("the server ended the stream");
    }
    Ok(())
}
