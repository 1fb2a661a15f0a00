//! How jobs and workers look to users: JSON objects and table rows.

use hodei_core::job::{JobRecord, WorkerInfo};
use hodei_core::spec::Command;
use hodei_core::time::Micros;
use serde_json::{Value, json};

/// RFC 3339 text of a time.
pub fn time_text(us: Micros) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(us);
    humantime::format_rfc3339_micros(t).to_string()
}

fn time(us: Option<Micros>) -> Value {
    us.map_or(Value::Null, |us| Value::String(time_text(us)))
}

fn pairs(p: &[(String, String)]) -> Value {
    Value::Object(
        p.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// A job as JSON.
pub fn job_json(j: &JobRecord) -> Value {
    let (command, script) = match &j.spec.command {
        Command::Exec { program, args } => {
            let mut v = vec![program.clone()];
            v.extend(args.iter().cloned());
            (json!(v), Value::Null)
        }
        Command::Script { body } => (Value::Null, json!(body)),
    };
    json!({
        "id": j.id.to_string(),
        "name": j.spec.name,
        "state": j.state.as_str(),
        "exit_code": j.exit_code,
        "error": j.error,
        "attempt": j.attempt.0,
        "worker": j.worker.map(|w| w.to_string()),
        "created_at": time(Some(j.created_at)),
        "started_at": time(j.started_at),
        "finished_at": time(j.finished_at),
        "created_at_us": j.created_at,
        "started_at_us": j.started_at,
        "finished_at_us": j.finished_at,
        "command": command,
        "script": script,
        "priority": j.spec.priority,
        "cpus": j.spec.cpus,
        "memory": j.spec.memory,
        "labels": pairs(&j.spec.labels),
        "timeout_ms": j.spec.timeout_ms,
        "output_bytes": j.output_end,
        "attempts": j.attempt.0,
        "retries": j.spec.policy.retries,
        "retry_on": j.spec.policy.retry_on.names(),
        "next_attempt_at": time(j.not_before),
        "queue_timeout_ms": j.spec.policy.queue_timeout_ms,
        "idempotency_key": j.spec.policy.idempotency_key,
        "correlation_id": j.spec.policy.correlation_id,
        "retry_of": j.retry_of.map(|r| r.to_string()),
        "owner": j.spec.owner,
        "secrets": j.spec.secrets,
    })
}

/// A worker as JSON.
pub fn worker_json(w: &WorkerInfo) -> Value {
    json!({
        "id": w.id.to_string(),
        "hostname": w.hostname,
        "state": w.state.as_str(),
        "slots": w.slots,
        "running": w.running,
        "cpus": w.cpus,
        "memory": w.memory,
        "labels": pairs(&w.labels),
        "last_seen": time(Some(w.last_seen)),
    })
}

/// One line per job.
pub fn job_row(j: &JobRecord) -> String {
    let exit = j
        .exit_code
        .map_or_else(|| "-".to_owned(), |c| c.to_string());
    let worker = j.worker.map_or_else(|| "-".to_owned(), |w| w.to_string());
    let mut cmd = j.spec.command.display();
    if cmd.len() > 60 {
        let cut = (0..=57)
            .rev()
            .find(|i| cmd.is_char_boundary(*i))
            .unwrap_or(0);
        cmd.truncate(cut);
        cmd.push_str("...");
    }
    format!(
        "{:<14} {:<10} {:>4} {:>3} {:<10} {}",
        j.id, j.state, exit, j.attempt.0, worker, cmd
    )
}

/// Header of [`job_row`].
pub const JOB_HEADER: &str = "ID             STATE      EXIT TRY WORKER     COMMAND";

/// An event as JSON.
pub fn event_json(e: &hodei_core::event::Event) -> Value {
    use hodei_core::event::{EventKind, Subject};
    let (kind, subject) = match &e.subject {
        Subject::Job(j) => ("job", j.to_string()),
        Subject::Worker(w) => ("worker", w.to_string()),
    };
    let mut v = json!({
        "cursor": format!("{}:{}", e.shard, e.seq),
        "shard": e.shard,
        "seq": e.seq,
        "at": time(Some(e.at)),
        "subject": kind,
        "id": subject,
        "correlation_id": e.correlation_id,
        "reason": e.reason,
    });
    match &e.kind {
        EventKind::Job {
            state,
            attempt,
            worker,
        } => {
            v["state"] = json!(state.as_str());
            v["attempt"] = json!(attempt.0);
            v["worker"] = json!(worker.map(|w| w.to_string()));
        }
        EventKind::Worker { state } => v["state"] = json!(state.as_str()),
        EventKind::StaleReport { attempt, worker } => {
            v["state"] = json!("stale_report_ignored");
            v["attempt"] = json!(attempt.0);
            v["worker"] = json!(worker.to_string());
        }
    }
    v
}
