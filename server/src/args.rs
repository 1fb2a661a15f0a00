//! `hodei server`'s command line: its flags, their defaults and their checks, turned into
//! [`ServerOptions`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::ServerOptions;

/// The flags of `hodei server` (and of the server part of `hodei up`).
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// Where the store, the CA and the certificates live.
    #[arg(long, default_value = ".hodei")]
    data_dir: PathBuf,
    /// UDP address of the QUIC endpoint (shared by all shards).
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// Shards (pinned threads); default one per core.
    #[arg(long)]
    shards: Option<usize>,
    /// Agents heartbeat this often (see --heartbeat-timeout for when silence drops one).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// An agent silent this long is treated as disconnected (default: 3 heartbeat intervals;
    /// at least 2).
    #[arg(long, value_parser = humantime::parse_duration)]
    heartbeat_timeout: Option<Duration>,
    /// A dropped agent that does not reconnect within this is lost; its jobs are requeued
    /// (at least 1s: agents fence themselves after half of it, see agent/src/session/lease.rs).
    #[arg(long, default_value = "10s", value_parser = parse_at_least_1s)]
    disconnect_grace: Duration,
    /// After a restart, a job that was on an agent waits this long for it to re-attach (at
    /// least half the disconnect grace plus 500ms, so that an agent cut off by the restart
    /// has killed the job before it is retried). Default: 15s, or half the disconnect grace
    /// plus 1s if that is more.
    #[arg(long, value_parser = humantime::parse_duration)]
    reattach_grace: Option<Duration>,
    /// An assignment its agent has not started within this goes back to the queue (at
    /// least 1s: a prefetching agent reports a job still queued after 300 ms).
    #[arg(long, default_value = "30s", value_parser = parse_at_least_1s)]
    assign_timeout: Duration,
    /// UDP socket receive/send buffer per shard socket, bytes (capped by net.core.rmem_max;
    /// the kernel default of ~208 KiB drops handshakes when thousands of agents connect). A
    /// limit, not an allocation: it fills only while a shard is behind.
    #[arg(long, default_value_t = 16 << 20)]
    udp_buffer: usize,
    /// Enable UDP generic segmentation offload (costs ~80 us per round trip on some VMs).
    #[arg(long)]
    gso: bool,
    /// Established connections one source IP may hold per shard (a 10,000-agent load test
    /// from one host needs about 10,000 / shards).
    #[arg(long, default_value_t = 16_384)]
    max_conns_per_ip: u32,
    /// Handshakes one source IP may have in progress per shard; more are refused at once.
    #[arg(long, default_value_t = 256)]
    max_handshakes_per_ip: u32,
    /// Lifetime of agents' client certificates (they renew at two thirds of it).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    agent_cert_ttl: Duration,
    /// Do not pin shard threads to cores (pinning helps when the server has the machine to
    /// itself; see tuning/README.md for what it did here).
    #[arg(long)]
    no_pin: bool,
    /// Least time between the starts of two store commits of a shard (at most 100ms). 0
    /// commits each batch as soon as the one before it is on disk. More means fewer,
    /// larger commits under sustained load, so less CPU per job, and delays every answer,
    /// assignment and acknowledgement by up to this much on each shard it passes through.
    /// Only for agents that prefetch (`hodei agent --prefetch`): without a queue on the
    /// agent, a slot waits for a commit (two across shards) between jobs (tuning/README.md).
    #[arg(long, default_value = "0s", value_parser = parse_commit_interval)]
    commit_interval: Duration,
    /// Free space the data dir's filesystem keeps for what is already running: below it new
    /// jobs are refused (`store full: ...`) while results, output and cancels are still
    /// written; below a quarter of it nothing is written and every client write is refused
    /// until space is freed (writing then resumes by itself). 0 turns the checks off.
    #[arg(long, default_value = "256M", value_parser = hodei_core::spec::parse_size)]
    min_free_space: u64,
    /// Output kept per attempt of a job submitted without `--max-output` (at most 1T); past
    /// it the agent drops the rest and the job's log ends with a line saying how much.
    #[arg(long, default_value = "1G", value_parser = parse_max_output)]
    max_output: u64,
    /// Jobs finished longer ago than this are deleted, with their output; events and
    /// audit records older than this go too (the audit chain is checkpointed first, so
    /// `hodei audit verify` still passes). At least 1s; `off` (or 0) keeps everything. A
    /// short window deletes a job soon after it ends: `job get` then says it expired.
    #[arg(long, default_value = "7d", value_parser = parse_retain_finished)]
    retain_finished: RetainFinished,
}

/// `--retain-finished`: a window, or none (`off`).
#[derive(Clone, Copy, Debug)]
struct RetainFinished(Option<Duration>);

impl ServerArgs {
    /// The options these flags describe, or why they break a guarantee together.
    ///
    /// # Errors
    /// A heartbeat timeout under two heartbeats (one late heartbeat would drop a healthy
    /// agent), or a re-attach grace that ends before an agent that lost the restarting server
    /// has killed its jobs (it keeps them for its lease, half the disconnect grace, counted
    /// from the last packet it heard; 500 ms more cover the kill and the clocks' skew).
    pub fn options(&self) -> Result<ServerOptions, String> {
        let heartbeat_timeout = self.heartbeat_timeout.unwrap_or(self.heartbeat * 3);
        if heartbeat_timeout < self.heartbeat * 2 {
            return Err(format!(
                "--heartbeat-timeout {} is less than two --heartbeat intervals ({}): one late \
                 heartbeat would drop a healthy agent",
                humantime::format_duration(heartbeat_timeout),
                humantime::format_duration(self.heartbeat * 2),
            ));
        }
        let least_reattach = self.disconnect_grace / 2 + Duration::from_millis(500);
        let reattach_grace = self.reattach_grace.unwrap_or_else(|| {
            (self.disconnect_grace / 2 + Duration::from_secs(1)).max(Duration::from_secs(15))
        });
        if reattach_grace < least_reattach {
            return Err(format!(
                "--reattach-grace {} is less than half the --disconnect-grace plus 500ms ({}): \
                 a job could be retried while the agent that lost the server still runs it",
                humantime::format_duration(reattach_grace),
                humantime::format_duration(least_reattach),
            ));
        }
        let shards = self.shards.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        });
        let transport = hodei_transport::TransportOptions {
            gso: self.gso,
            udp_buffer_bytes: Some(self.udp_buffer),
            ..Default::default()
        };
        Ok(ServerOptions {
            data_dir: self.data_dir.clone(),
            listen: self.listen,
            shards,
            heartbeat: self.heartbeat,
            heartbeat_timeout,
            disconnect_grace: self.disconnect_grace,
            reattach_grace,
            assign_timeout: self.assign_timeout,
            transport,
            pin: !self.no_pin,
            agent_cert_ttl: self.agent_cert_ttl,
            limits: crate::conn::Limits {
                conns_per_ip: self.max_conns_per_ip.max(1),
                handshakes_per_ip: self.max_handshakes_per_ip.max(1),
            },
            commit_interval: self.commit_interval,
            min_free_space: self.min_free_space,
            max_output: self.max_output,
            retain_finished: self.retain_finished.0,
        })
    }
}

fn parse_retain_finished(s: &str) -> Result<RetainFinished, String> {
    if s == "off" || s == "0" {
        return Ok(RetainFinished(None));
    }
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (or `off`)"))?;
    if d < Duration::from_secs(1) {
        return Err("must be at least 1s, or `off`".to_owned());
    }
    Ok(RetainFinished(Some(d)))
}

fn parse_max_output(s: &str) -> Result<u64, String> {
    let max = hodei_core::spec::limits::MAX_OUTPUT;
    match hodei_core::spec::parse_size(s) {
        Ok(n) if n > 0 && n <= max => Ok(n),
        Ok(_) => Err(format!("must be 1 byte to {} GiB", max >> 30)),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_at_least_1s(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(1) {
        return Err("must be at least 1s".to_owned());
    }
    Ok(d)
}

fn parse_commit_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d > Duration::from_millis(100) {
        return Err("must be at most 100ms".to_owned());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--retain-finished` takes a duration of at least 1s, or `off`/`0` for none.
    #[test]
    fn retain_finished_is_a_window_or_off() {
        let parse = |s| parse_retain_finished(s).map(|r| r.0);
        assert_eq!(parse("7d"), Ok(Some(Duration::from_secs(7 * 86_400))));
        assert_eq!(parse("1s"), Ok(Some(Duration::from_secs(1))));
        assert_eq!(parse("off"), Ok(None));
        assert_eq!(parse("0"), Ok(None));
        assert!(parse("500ms").is_err());
        assert!(parse("soon").is_err());
    }
}
