//! Command-line flags, and the settings they resolve to (a loopback server address, a job
//! mode, per-thread shares). Anything that is not loopback is refused here, before a single
//! packet is sent.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;

/// What a simulated agent does with an `Assign`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobMode {
    /// Report `Started` and `Finished { Exited(0) }` at once.
    Noop,
    /// Report `Started`, then `Finished { Exited(0) }` after this long.
    Sleep(Duration),
}

impl FromStr for JobMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "noop" {
            return Ok(Self::Noop);
        }
        if let Some(d) = s.strip_prefix("sleep:") {
            return humantime::parse_duration(d)
                .map(Self::Sleep)
                .map_err(|e| format!("bad sleep duration {d:?}: {e}"));
        }
        Err(format!(
            "unknown job mode {s:?}: use noop or sleep:DUR (e.g. sleep:50ms)"
        ))
    }
}

impl std::fmt::Display for JobMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Noop => f.write_str("noop"),
            Self::Sleep(d) => write!(f, "sleep:{}", humantime::format_duration(*d)),
        }
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

/// Flags of `hodei-loadtest`.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "hodei-loadtest",
    about = "Simulates a fleet of Hodei agents (real QUIC connections) against a loopback server \
             and reports connections, heartbeats/s, dispatch latency, job throughput and the \
             server's RSS and CPU."
)]
pub struct Args {
    /// A running server (must be a loopback address, e.g. 127.0.0.1:7700); needs --ca.
    #[arg(
        long,
        conflicts_with = "spawn_server",
        required_unless_present = "spawn_server"
    )]
    pub server: Option<String>,
    /// The running server's CA certificate (its data dir's ca.pem).
    #[arg(long, requires = "server")]
    pub ca: Option<PathBuf>,
    /// The running server's pid, to read its RSS and CPU from /proc.
    #[arg(long, requires = "server")]
    pub server_pid: Option<i32>,
    /// Start a throwaway `hodei server` from this binary (temporary data dir, loopback,
    /// stopped at the end).
    #[arg(long, value_name = "PATH_TO_HODEI")]
    pub spawn_server: Option<PathBuf>,
    /// Shards of the spawned server (default: its own, one per core).
    #[arg(long, requires = "spawn_server")]
    pub shards: Option<usize>,
    /// Extra argument for the spawned `hodei server` (repeatable), e.g.
    /// `--server-arg=--heartbeat=500ms`.
    #[arg(long, requires = "spawn_server", allow_hyphen_values = true)]
    pub server_arg: Vec<String>,
    /// Simulated agents (one QUIC connection each).
    #[arg(long, default_value_t = 1000)]
    pub agents: usize,
    /// Threads of simulated agents, each a tokio current_thread runtime.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Agents per client UDP socket (quinn endpoint). The server's SO_REUSEPORT spreads
    /// connections over its shards by socket address, so more sockets spread them better.
    #[arg(long, default_value_t = 250)]
    pub per_socket: usize,
    /// Heartbeat interval of every agent (first one at a jittered offset).
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub heartbeat: Duration,
    /// Send heartbeats on the agent's stream, as agents before datagram heartbeats did
    /// (for comparing, or for a server that reads no datagrams).
    #[arg(long)]
    pub stream_heartbeats: bool,
    /// Slots each agent offers.
    #[arg(long, default_value_t = 1)]
    pub slots: u32,
    /// What an agent does with an assignment: `noop` or `sleep:DUR`.
    #[arg(long, default_value = "noop")]
    pub job: JobMode,
    /// Jobs per second submitted one per request over a client connection during the steady
    /// phase (0: none).
    #[arg(long, default_value_t = 0.0)]
    pub submit_rate: f64,
    /// Shard-loop probes per second, whole fleet (0: none); see README.
    #[arg(long, default_value_t = 200.0)]
    pub probe_rate: f64,
    /// Hard limit of the whole run, connect phase included.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub duration: Duration,
    /// The connect phase ends at the latest this long after the start, so that the rest of
    /// --duration is measured with whatever connected (default: half of --duration).
    #[arg(long, value_parser = duration)]
    pub connect_timeout: Option<Duration>,
    /// Spread the agents' first connection attempts evenly over this long.
    #[arg(long, default_value = "0s", value_parser = duration)]
    pub ramp: Duration,
    /// Handshakes (connect + Hello/Welcome) in flight at once, whole fleet.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// QUIC keep-alive of agent connections (the real agent uses 2s).
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub keep_alive: Duration,
    /// Ask the server to delay its ACKs up to this long (QUIC ACK frequency), as the real
    /// agent does (1s, `AGENT_PEER_ACK_DELAY`); `0s` leaves QUIC's own (an ACK per two
    /// packets or 25 ms). See tuning/README.md.
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub peer_ack_delay: Duration,
    /// QUIC idle timeout of agent connections; also bounds a handshake (the real agent
    /// uses 3s).
    #[arg(long, default_value = "3s", value_parser = duration)]
    pub idle_timeout: Duration,
    /// Print a status line on stderr every second.
    #[arg(long)]
    pub progress: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    /// `--connect-timeout`, or half of `--duration`.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout.unwrap_or(self.duration / 2)
    }

    /// Checks the numbers that have to be positive and consistent.
    pub fn check(&self) -> Result<()> {
        if self.agents == 0 {
            bail!("--agents must be at least 1");
        }
        if self.threads == 0 || self.threads > 256 {
            bail!("--threads must be between 1 and 256");
        }
        if self.per_socket == 0 {
            bail!("--per-socket must be at least 1");
        }
        if self.slots == 0 {
            bail!("--slots must be at least 1");
        }
        if self.heartbeat < Duration::from_millis(1) {
            bail!("--heartbeat must be at least 1ms");
        }
        if self.duration.is_zero() {
            bail!("--duration must be positive");
        }
        if self.ramp >= self.connect_timeout() {
            bail!("--ramp must be shorter than the connect timeout (default: half of --duration)");
        }
        if self.connect_timeout() > self.duration {
            bail!("--connect-timeout must not exceed --duration");
        }
        if self.connect_concurrency == 0 {
            bail!("--connect-concurrency must be at least 1");
        }
        // The delay is part of the probe timeout, and quinn keeps an idle connection for at
        // least three of those: a longer one would silently stretch --idle-timeout.
        if !self.idle_timeout.is_zero() && self.peer_ack_delay * 3 > self.idle_timeout {
            bail!("--peer-ack-delay must be at most a third of --idle-timeout");
        }
        for (name, r) in [
            ("--submit-rate", self.submit_rate),
            ("--probe-rate", self.probe_rate),
        ] {
            if !r.is_finite() || !(0.0..=1_000_000.0).contains(&r) {
                bail!("{name} must be between 0 and 1000000 (got {r})");
            }
        }
        if self.server.is_some() && self.ca.is_none() {
            bail!("--server needs --ca (the server's ca.pem)");
        }
        Ok(())
    }
}

/// Resolves `--server` and refuses anything that is not a loopback address.
pub fn loopback_server(text: &str) -> Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = text
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve --server {text:?} (expected HOST:PORT)"))?
        .collect();
    if addrs.is_empty() {
        bail!("--server {text:?} resolves to no address");
    }
    if let Some(bad) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        bail!(
            "--server {text:?} resolves to {bad}, which is not a loopback address: \
             hodei-loadtest only targets a server on this machine (127.0.0.0/8 or ::1)"
        );
    }
    // Prefer IPv4 when a name resolves to both.
    let addr = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied();
    addr.with_context(|| format!("--server {text:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_modes_parse() {
        assert_eq!("noop".parse::<JobMode>(), Ok(JobMode::Noop));
        assert_eq!(
            "sleep:50ms".parse::<JobMode>(),
            Ok(JobMode::Sleep(Duration::from_millis(50)))
        );
        assert!("sleep:forever".parse::<JobMode>().is_err());
        assert!("true".parse::<JobMode>().is_err());
    }

    #[test]
    fn simulated_agents_ask_for_the_real_agents_ack_delay() {
        let args = Args::try_parse_from(["hodei-loadtest", "--server", "127.0.0.1:7700"])
            .map_err(|e| e.to_string());
        assert_eq!(
            args.map(|a| a.peer_ack_delay),
            Ok(hodei_transport::AGENT_PEER_ACK_DELAY)
        );
    }

    #[test]
    fn an_ack_delay_past_a_third_of_the_idle_timeout_is_refused() {
        let check = |delay: &str| {
            let argv = [
                "hodei-loadtest",
                "--server",
                "127.0.0.1:7700",
                "--ca",
                "ca.pem",
            ];
            Args::try_parse_from(argv.into_iter().chain(["--peer-ack-delay", delay]))
                .map_err(|e| e.to_string())
                .and_then(|a| a.check().map_err(|e| e.to_string()))
        };
        assert_eq!(check("1s"), Ok(()));
        assert!(check("0s").is_ok());
        assert!(check("1001ms").is_err_and(|e| e.contains("--peer-ack-delay")));
    }

    #[test]
    fn only_loopback_is_accepted() {
        assert!(loopback_server("127.0.0.1:7700").is_ok());
        assert!(loopback_server("[::1]:7700").is_ok());
        assert!(loopback_server("127.3.2.1:1").is_ok());
        assert!(loopback_server("10.0.0.1:7700").is_err());
        assert!(loopback_server("0.0.0.0:7700").is_err());
        assert!(loopback_server("8.8.8.8:53").is_err());
        assert!(loopback_server("no-port").is_err());
    }
}
