//! The report: one list of figures, printed as a table (with what each figure measures) or
//! as one JSON object whose keys name the figure and its unit.

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

use crate::args::Args;
use crate::procstat::cpu_pct;
use crate::run::RunData;
use crate::spawn::ServerEnd;

/// One figure: its JSON key, its value, and what it measures (for the table).
struct Row {
    key: String,
    value: Value,
    what: &'static str,
}

struct Report {
    sections: Vec<(&'static str, Vec<Row>)>,
}

impl Report {
    fn section(&mut self, title: &'static str) {
        self.sections.push((title, Vec::new()));
    }

    fn row(&mut self, key: impl Into<String>, value: impl Into<Value>, what: &'static str) {
        if let Some((_, rows)) = self.sections.last_mut() {
            rows.push(Row {
                key: key.into(),
                value: value.into(),
                what,
            });
        }
    }

    /// p50/p90/p99/p99.9/max of a µs histogram, in ms, as `<prefix>_<q>_ms` keys.
    fn percentiles(&mut self, prefix: &str, h: &Histogram<u64>, what: &'static str) {
        if h.is_empty() {
            self.row(format!("{prefix}_p50_ms"), Value::Null, what);
            return;
        }
        for (q, name) in [
            (0.5, "p50"),
            (0.9, "p90"),
            (0.99, "p99"),
            (0.999, "p999"),
            (1.0, "max"),
        ] {
            let what = if name == "p50" { what } else { "" };
            self.row(
                format!("{prefix}_{name}_ms"),
                ms(h.value_at_quantile(q)),
                what,
            );
        }
        self.row(format!("{prefix}_samples"), h.len(), "");
    }
}

#[allow(clippy::cast_precision_loss)]
fn ms(us: u64) -> f64 {
    round3(us as f64 / 1000.0)
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

#[allow(clippy::cast_precision_loss)]
fn per_s(n: u64, secs: f64) -> Value {
    if secs > 0.0 {
        json!(round1(n as f64 / secs))
    } else {
        Value::Null
    }
}

fn opt(v: Option<f64>) -> Value {
    v.map_or(Value::Null, |v| json!(round1(v)))
}

fn params(args: &Args, server: &str) -> Value {
    json!({
        "server": server,
        "spawned": args.spawn_server.is_some(),
        "shards": args.shards,
        "server_args": args.server_arg,
        "agents": args.agents,
        "threads": args.threads,
        "per_socket": args.per_socket,
        "heartbeat_ms": ms_of(args.heartbeat),
        "slots": args.slots,
        "job": args.job.to_string(),
        "submit_rate_per_s": args.submit_rate,
        "probe_rate_per_s": args.probe_rate,
        "duration_s": args.duration.as_secs_f64(),
        "ramp_s": args.ramp.as_secs_f64(),
        "connect_timeout_s": args.connect_timeout().as_secs_f64(),
        "connect_concurrency": args.connect_concurrency,
        "keep_alive_ms": ms_of(args.keep_alive),
        "peer_ack_delay_ms": ms_of(args.peer_ack_delay),
        "idle_timeout_ms": ms_of(args.idle_timeout),
    })
}

fn ms_of(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[allow(clippy::too_many_lines)]
fn build(args: &Args, d: &RunData, end: Option<&ServerEnd>) -> Report {
    let mut r = Report {
        sections: Vec::new(),
    };
    let steady = d.steady.as_secs_f64();
    let window = d.submit_window.as_secs_f64();
    let (s0, sw, se, last) = (&d.at_steady, &d.at_wind, &d.at_end, &d.last);

    r.section("connections");
    r.row(
        "agents",
        args.agents,
        "simulated agents (one QUIC connection each)",
    );
    r.row(
        "connections",
        last.connected,
        "agents welcomed at least once",
    );
    r.row(
        "connections_live_at_end",
        se.live,
        "agents connected when the steady phase ended",
    );
    r.row(
        "connect_phase",
        d.connect_phase,
        "how the connect phase ended",
    );
    r.row(
        "connect_phase_s",
        round3(d.connect_wall.as_secs_f64()),
        "fleet start -> end of the connect phase (then a 1 s settle)",
    );
    r.row(
        "connect_time_s",
        round3(last.last_welcome_us as f64 / 1e6),
        "fleet start -> last agent's first Welcome",
    );
    r.percentiles(
        "connect",
        &d.connect_us,
        "per agent: first attempt due (ramp slot) -> Welcome (handshake + Hello + registration)",
    );
    r.row(
        "connect_attempts",
        last.connect_attempts,
        "handshakes started (retries, redirects included)",
    );
    r.row(
        "connect_failures",
        last.connect_failures,
        "attempts that got no Welcome",
    );
    r.row("redirects", last.redirects, "Redirects followed");
    r.row("refused", last.refused, "registrations Refused");
    r.row(
        "disconnects",
        last.disconnects,
        "welcomed connections lost before the stop",
    );
    r.row(
        "goodbyes",
        last.goodbyes,
        "agents whose Goodbye the server took at the stop",
    );
    r.row(
        "client_sockets",
        d.sockets,
        "client UDP sockets (quinn endpoints) of the fleet",
    );
    r.row(
        "agents_per_shard",
        json!(d.per_shard),
        "agents registered per server shard (SO_REUSEPORT spread)",
    );

    r.section("heartbeats (steady phase)");
    r.row("steady_s", round3(steady), "length of the steady phase");
    r.row(
        "heartbeats_per_s",
        per_s(se.heartbeats - s0.heartbeats, steady),
        "Heartbeat messages handed to quinn per second (datagrams, or stream writes with --stream-heartbeats)",
    );
    #[allow(clippy::cast_precision_loss)]
    let expected = s0.live as f64 / args.heartbeat.as_secs_f64();
    r.row(
        "heartbeats_expected_per_s",
        round1(expected),
        "live agents / --heartbeat: what the fleet should send",
    );
    r.percentiles(
        "probe_rtt",
        &d.probe_us,
        "shard-loop probe: GetJob of an absent id, from each agent socket to the shard its \
         agents are on, answered by that shard's loop without disk I/O (QUIC both ways + \
         queueing behind heartbeats + one loop turn)",
    );
    r.row(
        "probe_errors",
        last.probe_errors,
        "probes failed or timed out",
    );
    for f in &d.server_stats {
        let what = if f.name.starts_with("heartbeat") {
            "the server's own figure (`hodei stats`, steady phase): a heartbeat decoded by its \
             connection's task → applied by its shard (queue wait + loop turn + handling)"
        } else if f.name.starts_with("store_commit") {
            "the server's own figure (`hodei stats`, steady phase): one batch's journal write \
             and fdatasync"
        } else {
            "the server's own figure (`hodei stats`, steady phase)"
        };
        // Percentiles in ms, like the rest of the report.
        match f.name.strip_suffix("_us") {
            Some(stem) => r.row(format!("server_{stem}_ms"), ms(f.value), what),
            None => r.row(format!("server_{}", f.name), f.value, what),
        }
    }
    r.row(
        "quic_sent_packets",
        last.quic_sent_packets,
        "QUIC packets the agents sent",
    );
    r.row(
        "quic_lost_packets",
        last.quic_lost_packets,
        "of which declared lost (retransmitted)",
    );
    r.row(
        "server_udp_drops_connect",
        json!(d.drops.0),
        "datagrams the kernel dropped on the server's sockets (receive buffer full) up to the \
         steady phase",
    );
    r.row(
        "server_udp_drops_steady",
        json!(d.drops.0.zip(d.drops.1).map(|(a, b)| b.saturating_sub(a))),
        "... during the steady phase",
    );
    r.row(
        "loadgen_udp_drops",
        json!(d.drops.2),
        "datagrams dropped on the fleet's sockets (receive buffer full)",
    );
    r.row(
        "udp_in_errors",
        d.udp.in_errors,
        "kernel UDP InErrors during the run (whole machine)",
    );
    r.row(
        "udp_rcvbuf_errors",
        d.udp.rcvbuf_errors,
        "kernel UDP RcvbufErrors (socket buffer full: drops)",
    );
    r.row(
        "udp_sndbuf_errors",
        d.udp.sndbuf_errors,
        "kernel UDP SndbufErrors",
    );

    r.section("jobs (steady phase, while submitting)");
    r.row(
        "submit_window_s",
        round3(window),
        "steady phase minus the final wind-down",
    );
    r.row(
        "jobs_submitted",
        last.submitted,
        "Submit requests sent (one job each)",
    );
    r.row("jobs_acked", last.acked, "acknowledged (durable)");
    r.row(
        "submit_errors",
        last.submit_errors,
        "Submit requests that failed",
    );
    r.row(
        "submit_skipped",
        last.submit_skipped,
        "submit ticks skipped: 4096 requests in flight, or the connection being replaced",
    );
    r.row(
        "submit_acked_per_s",
        per_s(sw.acked - s0.acked, window),
        "acknowledged submissions per second",
    );
    r.row(
        "jobs_assigned",
        last.assigns,
        "Assigns received by the fleet",
    );
    r.row(
        "jobs_finished",
        last.finished_acked,
        "Finished reports the server acknowledged (FinishedAck)",
    );
    r.row(
        "jobs_per_s",
        per_s(sw.finished_acked - s0.finished_acked, window),
        "FinishedAcks per second during the submit window",
    );
    r.percentiles(
        "dispatch",
        &d.dispatch.ack_to_assign,
        "submit acknowledgement read by the client -> Assign read by a simulated agent (same \
         wall clock; an Assign read before its ack counts as 0)",
    );
    r.row(
        "dispatch_before_ack",
        d.dispatch.before_ack,
        "Assigns read before their acknowledgement",
    );
    r.row(
        "dispatch_unseen",
        d.dispatch.unseen,
        "acknowledged jobs no agent received before the stop",
    );
    r.percentiles(
        "submit_to_assign",
        &d.dispatch.submit_to_assign,
        "Submit request sent -> Assign read (includes waiting for a stream, at most 100 \
         per connection on the server, and the durable write)",
    );
    r.row("cancels", last.cancels, "Cancels of running jobs");
    r.row("abandons", last.abandons, "Abandons");
    r.row("drains", last.drains, "Drains");

    r.section("server process (/proc)");
    let srv = &d.server;
    r.row(
        "server_pid",
        json!(d.server_pid),
        "pid whose /proc figures follow (none: no figures)",
    );
    r.row(
        "server_rss_start_mib",
        opt(srv.start.map(|s| s.rss_mib)),
        "RSS before the fleet connected",
    );
    r.row(
        "server_rss_idle_mib",
        opt(srv.idle.map(|s| s.rss_mib)),
        "RSS after the connect phase and a 1 s settle (heartbeats only)",
    );
    r.row(
        "server_rss_end_mib",
        opt(srv.end.map(|s| s.rss_mib)),
        "RSS at the end of the steady phase",
    );
    r.row(
        "server_rss_mib",
        opt(srv.end.map(|s| s.rss_mib)),
        "(the same, under a short name)",
    );
    r.row(
        "server_rss_peak_mib",
        opt(srv.end.map(|s| s.hwm_mib)),
        "peak RSS of the process (VmHWM)",
    );
    #[allow(clippy::cast_precision_loss)]
    let per_agent = match (srv.start, srv.idle) {
        (Some(a), Some(b)) if last.connected > 0 => {
            Some((b.rss_mib - a.rss_mib) * 1024.0 / last.connected as f64)
        }
        _ => None,
    };
    r.row(
        "server_rss_per_agent_kib",
        opt(per_agent),
        "(idle RSS - start RSS) / connections",
    );
    r.row(
        "server_cpu_connect_pct",
        opt(srv
            .start
            .zip(srv.connected)
            .and_then(|(a, b)| cpu_pct(&a, &b))),
        "server utime+stime / wall during the connect phase (100 = one core)",
    );
    r.row(
        "server_cpu_pct",
        opt(srv.idle.zip(srv.end).and_then(|(a, b)| cpu_pct(&a, &b))),
        "server utime+stime / wall during the steady phase (100 = one core)",
    );
    r.row(
        "server_threads",
        srv.end.map_or(Value::Null, |s| json!(s.threads)),
        "server threads at the end",
    );
    r.row(
        "server_exited_during_run",
        d.server_died,
        "the run was cut short by the server exiting",
    );
    if let Some(e) = end {
        r.row(
            "server_exit",
            e.status.clone(),
            "how the spawned server ended",
        );
        r.row("server_died", e.died, "it exited by itself during the run");
        r.row(
            "server_log_warnings",
            e.warnings,
            "WARN/ERROR lines in its log",
        );
        r.row(
            "server_log_tail",
            json!(e.tail),
            "last warnings (or last lines if it died)",
        );
    }

    r.section("load generator");
    let (a, b) = &d.me_steady;
    r.row(
        "loadgen_cpu_pct",
        opt(a.zip(*b).and_then(|(a, b)| cpu_pct(&a, &b))),
        "this process during the steady phase (100 = one core; same machine as the server)",
    );
    r.row(
        "loadgen_rss_mib",
        opt(b.map(|s| s.rss_mib)),
        "this process's RSS at the end",
    );
    r.row(
        "threads_not_stopped",
        d.threads_left,
        "fleet threads still running 5 s after the stop",
    );
    r.row("errors", json!(d.errors), "first error of each kind");
    r
}

/// Prints the report.
pub fn print(args: &Args, server: &str, d: &RunData, end: Option<&ServerEnd>) {
    let report = build(args, d, end);
    let machine = crate::procstat::machine();
    if args.json {
        let mut o = Map::new();
        o.insert("machine".into(), machine);
        o.insert("params".into(), params(args, server));
        for (_, rows) in report.sections {
            for row in rows {
                o.insert(row.key, row.value);
            }
        }
        println!("{}", Value::Object(o));
        return;
    }
    println!("hodei-loadtest — machine: {machine}");
    println!("params: {}", params(args, server));
    for (title, rows) in report.sections {
        println!("\n== {title}");
        for row in rows {
            let v = match &row.value {
                Value::String(s) => s.clone(),
                Value::Null => "n/a".to_owned(),
                v => v.to_string(),
            };
            println!("  {:<28} {:>12}   {}", row.key, v, row.what);
        }
    }
}
