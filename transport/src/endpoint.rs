//! Sockets and QUIC endpoints.
//!
//! The server runs one endpoint per shard, all on one UDP port shared with `SO_REUSEPORT`: the
//! kernel hashes each client's address to one of the sockets, so an agent's packets reach the
//! shard that accepted it without a hop between threads. Each endpoint lives on the tokio
//! `current_thread` runtime of its shard thread.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::error::TransportError;
use crate::tls::SERVER_NAME;

/// QUIC transport settings shared by servers and clients.
#[derive(Clone, Debug)]
pub struct TransportOptions {
    /// UDP generic segmentation offload. Off by default: on this VM's loopback it adds ~80 µs
    /// to every round trip, far more than it saves for Hodei's small messages.
    pub gso: bool,
    /// How often a client pings an otherwise quiet connection, so that it is not closed for
    /// idleness and a dead peer is noticed. Servers do not ping (their clients do; with 10,000
    /// agents, server pings would double the idle traffic). Zero disables.
    pub keep_alive: Duration,
    /// A connection with no traffic for this long is closed; this also bounds how long a
    /// handshake with an absent server waits. Zero disables (not recommended).
    pub idle_timeout: Duration,
    /// `SO_RCVBUF`/`SO_SNDBUF` for sockets made by [`bind_reuseport`]; `None` keeps the
    /// system default. The kernel caps it at `net.core.rmem_max`/`wmem_max`; the first
    /// socket it caps in a process logs one info line saying so.
    pub udp_buffer_bytes: Option<usize>,
    /// Ask the peer to delay its ACKs up to this long, or until more than 16 packets arrived
    /// (QUIC ACK-frequency extension), so a server does not answer every small heartbeat with
    /// an ACK packet of its own. Messages are not delayed, only the ACKs of them; a sender whose
    /// congestion window is about to fill asks for an immediate ACK (the patch in
    /// `vendor/quinn-proto`). `None` keeps QUIC's default (an ACK for every second packet, or
    /// after 25 ms).
    pub peer_ack_delay: Option<Duration>,
}

impl Default for TransportOptions {
    fn default() -> Self {
        Self {
            gso: false,
            keep_alive: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            udp_buffer_bytes: None,
            peer_ack_delay: None,
        }
    }
}

/// The ACK delay agents ask of the server ([`TransportOptions::peer_ack_delay`]). With
/// heartbeats every 100 ms the server sends about one ACK a second instead of one per
/// heartbeat: 35–40 % less server CPU per heartbeat (`tuning/README.md`). The cost: the delay
/// is part of the agent's probe timeout (PTO), so a lost packet with nothing sent after it is
/// resent after about 1 s instead of ~25 ms; the agent's idle timeout is at least 3 PTOs
/// (3 s on a LAN, so a dead server is still noticed within about 3 s, ~3.5 s at 100 ms RTT);
/// and a closed connection drains for 3 PTOs, so an agent's bounded wait for its close at
/// exit now takes its full second.
pub const AGENT_PEER_ACK_DELAY: Duration = Duration::from_secs(1);

/// The largest UDP payload an endpoint accepts, and the bound of its path MTU discovery.
/// QUIC starts every path at 1,200 bytes and probes up; a path that drops big datagrams is
/// found by quinn's black-hole detection and falls back. quinn's defaults (1,472 accepted,
/// discovery up to 1,452) fit an Ethernet frame: on loopback (MTU 64 KiB) or jumbo frames
/// they cut output and batches into 1.4 KB packets, each a syscall, a netfilter pass and a
/// wake-up of the receiver. Bigger is faster but not free: the server's RSS with 10,000 idle agents grew with it (1,472: 440 MiB;
/// 4,096: 477; 8,192: 509; 16,384: 521, against a 512 MiB target), while a 200 MB output job
/// took 1.34 s, 0.84, 0.80 and 0.53 s (`tuning/README.md`).
pub const MAX_UDP_PAYLOAD: u16 = 4096;
// What quinn accepts (`EndpointConfig::max_udp_payload_size`), checked at compile time.
const _: () = assert!(MAX_UDP_PAYLOAD >= 1200 && MAX_UDP_PAYLOAD <= 65_527);

/// quinn's endpoint settings with Hodei's [`MAX_UDP_PAYLOAD`].
fn endpoint_config(mut cfg: quinn::EndpointConfig) -> quinn::EndpointConfig {
    // Cannot fail: the bound is within quinn's range (checked above at compile time).
    let _ = cfg.max_udp_payload_size(MAX_UDP_PAYLOAD);
    cfg
}

/// Concurrent streams a peer may open to the server (more wait on the peer's side).
pub const SERVER_STREAMS: u32 = 64;
/// Bytes a connection may have unread by the server, all streams together.
pub const SERVER_CONN_WINDOW: u32 = 16 << 20;
/// Bytes one stream may have unread by the server.
pub const SERVER_STREAM_WINDOW: u32 = 4 << 20;

impl TransportOptions {
    /// The quinn transport config for one side; `keep_alive` is false for servers.
    pub(crate) fn transport_config(
        &self,
        keep_alive: bool,
    ) -> Result<quinn::TransportConfig, TransportError> {
        let mut t = quinn::TransportConfig::default();
        t.enable_segmentation_offload(self.gso);
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(MAX_UDP_PAYLOAD);
        t.mtu_discovery_config(Some(mtu));
        if !keep_alive {
            // Server side: what one peer may make the server hold. Agents use one stream,
            // clients one per request; nobody opens unidirectional streams. The windows bound
            // the bytes a connection can have in flight towards the server.
            t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(SERVER_STREAMS));
            t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
            t.receive_window(quinn::VarInt::from_u32(SERVER_CONN_WINDOW));
            t.stream_receive_window(quinn::VarInt::from_u32(SERVER_STREAM_WINDOW));
        }
        // Agents' heartbeats (`crate::datagram`): quinn's bound on what waits unread. Servers
        // send none, but quinn sends datagrams only from a side that could receive them.
        t.datagram_receive_buffer_size(Some(crate::DATAGRAM_RECEIVE_BUFFER));
        let ping = (keep_alive && !self.keep_alive.is_zero()).then_some(self.keep_alive);
        t.keep_alive_interval(ping);
        let idle = if self.idle_timeout.is_zero() {
            None
        } else {
            Some(
                quinn::IdleTimeout::try_from(self.idle_timeout).map_err(|_| {
                    TransportError::Config(format!(
                        "idle timeout {:?} is too large",
                        self.idle_timeout
                    ))
                })?,
            )
        };
        t.max_idle_timeout(idle);
        if let Some(delay) = self.peer_ack_delay {
            let mut f = quinn::AckFrequencyConfig::default();
            // An ACK after more than 16 packets or after `delay`, whichever comes first.
            f.ack_eliciting_threshold(quinn::VarInt::from_u32(16))
                .max_ack_delay(Some(delay));
            t.ack_frequency_config(Some(f));
        }
        Ok(t)
    }
}

/// Whether [`bind_reuseport`] has already said that the kernel capped its buffers: the
/// sentence is the same for every shard's socket, so it is said once per process.
static BUFFER_NOTICE_GIVEN: AtomicBool = AtomicBool::new(false);

/// The buffer size a socket was granted, from what `getsockopt` reports: Linux doubles the
/// size it grants (the extra is its bookkeeping) and reports the doubled figure.
fn granted(reported: usize) -> usize {
    if cfg!(target_os = "linux") {
        reported / 2
    } else {
        reported
    }
}

/// The UDP buffer size asked for and what the kernel granted each direction.
struct BufferCaps {
    requested: usize,
    recv: Option<usize>,
    send: Option<usize>,
}

impl BufferCaps {
    /// One plain sentence when the kernel granted less than asked, naming the sysctl that
    /// caps it; `None` when nothing was capped.
    fn notice(&self) -> Option<String> {
        let capped = |got: Option<usize>| got.filter(|g| *g < self.requested);
        let (recv, send) = (capped(self.recv), capped(self.send));
        let (size, sysctl) = match (recv, send) {
            (None, None) => return None,
            (Some(r), None) => (r, "net.core.rmem_max"),
            (None, Some(s)) => (s, "net.core.wmem_max"),
            (Some(r), Some(s)) => (r.min(s), "net.core.rmem_max and net.core.wmem_max"),
        };
        Some(format!(
            "UDP socket buffers are capped at {} by {sysctl}, below the {} asked for; run `hodei-tuning` for advice",
            size_text(size),
            size_text(self.requested)
        ))
    }
}

/// `16 MiB`, `208 KiB`, or bytes when smaller than a KiB.
fn size_text(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

/// A nonblocking UDP socket bound to `addr` with `SO_REUSEPORT`, so several shards can bind
/// the same port, and with the buffer sizes of `opts.udp_buffer_bytes` if set.
///
/// # Errors
/// If the socket cannot be created, configured or bound (the message names `addr`).
pub fn bind_reuseport(addr: SocketAddr, opts: &TransportOptions) -> std::io::Result<UdpSocket> {
    let context = |what: &str, e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("{what} UDP socket for {addr}: {e}"))
    };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| context("creating", e))?;
    socket
        .set_reuse_port(true)
        .map_err(|e| context("setting SO_REUSEPORT on", e))?;
    if let Some(bytes) = opts.udp_buffer_bytes {
        socket
            .set_recv_buffer_size(bytes)
            .map_err(|e| context("setting SO_RCVBUF on", e))?;
        socket
            .set_send_buffer_size(bytes)
            .map_err(|e| context("setting SO_SNDBUF on", e))?;
        // The kernel caps the sizes silently: say so once per process, not per socket.
        let capped = BufferCaps {
            requested: bytes,
            recv: socket.recv_buffer_size().ok().map(granted),
            send: socket.send_buffer_size().ok().map(granted),
        };
        if let Some(notice) = capped.notice()
            && !BUFFER_NOTICE_GIVEN.swap(true, Ordering::Relaxed)
        {
            tracing::info!("{notice}");
        }
    }
    socket
        .set_nonblocking(true)
        .map_err(|e| context("making nonblocking", e))?;
    socket
        .bind(&addr.into())
        .map_err(|e| context("binding", e))?;
    Ok(socket.into())
}

/// A quinn server endpoint on `socket`, driven by the *current* tokio runtime (the shard's
/// `current_thread` runtime): quinn spawns its driver task there.
///
/// # Errors
/// Outside a tokio runtime, or if quinn cannot set up the socket.
pub fn server_endpoint(
    socket: UdpSocket,
    cfg: quinn::ServerConfig,
    reset_key: &[u8],
) -> Result<quinn::Endpoint, TransportError> {
    // quinn would panic spawning its driver without a runtime; refuse instead.
    tokio::runtime::Handle::try_current()
        .map_err(|_| TransportError::NoRuntime("server_endpoint"))?;
    let addr = socket
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    // The same reset key in every shard and across restarts (see `ServerTls::reset_key`).
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_key);
    quinn::Endpoint::new(
        endpoint_config(quinn::EndpointConfig::new(Arc::new(key))),
        Some(cfg),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| TransportError::Endpoint { addr, source })
}

/// A client endpoint on an ephemeral port of `server`'s address family, with `cfg` as its
/// default client config.
///
/// # Errors
/// Outside a tokio runtime, or if the socket cannot be bound.
pub fn client_endpoint(
    server: SocketAddr,
    cfg: quinn::ClientConfig,
) -> Result<quinn::Endpoint, TransportError> {
    tokio::runtime::Handle::try_current()
        .map_err(|_| TransportError::NoRuntime("client_endpoint"))?;
    let bind = if server.is_ipv6() {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    };
    let failed = |source| TransportError::Endpoint { addr: bind, source };
    let socket = UdpSocket::bind(bind).map_err(failed)?;
    let mut endpoint = quinn::Endpoint::new(
        endpoint_config(quinn::EndpointConfig::default()),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(failed)?;
    endpoint.set_default_client_config(cfg);
    Ok(endpoint)
}

/// Connects to the Hodei server at `addr` (SNI [`SERVER_NAME`]) and waits for the handshake.
/// An absent server is noticed after the idle timeout of the endpoint's client config.
///
/// # Errors
/// [`TransportError::NoServer`] when nothing answered, [`TransportError::Handshake`] when TLS
/// failed (e.g. an untrusted CA), [`TransportError::Connect`] otherwise; all name `addr`.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
) -> Result<quinn::Connection, TransportError> {
    let connecting = endpoint
        .connect(addr, SERVER_NAME)
        .map_err(|e| TransportError::Connect {
            addr,
            reason: e.to_string(),
        })?;
    connecting.await.map_err(|e| classify(addr, e))
}

/// TLS alerts travel as QUIC error codes 0x100..=0x1ff (RFC 9001 §4.8).
fn is_crypto(code: quinn::TransportErrorCode) -> bool {
    (0x100..0x200).contains(&u64::from(code))
}

fn classify(addr: SocketAddr, e: quinn::ConnectionError) -> TransportError {
    use quinn::ConnectionError as E;
    match e {
        E::TimedOut => TransportError::NoServer { addr },
        E::TransportError(t) if is_crypto(t.code) => {
            let reason = if t.reason.is_empty() {
                t.to_string()
            } else {
                t.reason
            };
            TransportError::Handshake { addr, reason }
        }
        E::ConnectionClosed(c) if is_crypto(c.error_code) => TransportError::Handshake {
            addr,
            reason: format!("refused by the server: {c}"),
        },
        E::VersionMismatch => TransportError::Connect {
            addr,
            reason: "the peer supports no QUIC version this build speaks".to_owned(),
        },
        other => TransportError::Connect {
            addr,
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::{BufferCaps, TransportOptions, bind_reuseport, size_text};

    #[test]
    fn sizes_read_as_an_operator_writes_them() {
        assert_eq!(size_text(16 << 20), "16 MiB");
        assert_eq!(size_text(212_992), "208 KiB");
        assert_eq!(size_text(512), "512 bytes");
    }

    #[test]
    fn the_notice_names_only_the_sysctls_that_capped() {
        let caps = |recv, send| BufferCaps {
            requested: 16 << 20,
            recv,
            send,
        };
        assert_eq!(caps(Some(16 << 20), Some(16 << 20)).notice(), None);
        assert_eq!(caps(None, None).notice(), None);
        assert_eq!(
            caps(Some(212_992), Some(16 << 20)).notice().as_deref(),
            Some(
                "UDP socket buffers are capped at 208 KiB by net.core.rmem_max, below the 16 MiB asked for; run `hodei-tuning` for advice"
            )
        );
        let both = caps(Some(4 << 20), Some(212_992))
            .notice()
            .unwrap_or_default();
        assert!(
            both.contains("at 208 KiB by net.core.rmem_max and net.core.wmem_max"),
            "{both}"
        );
    }

    /// A size under the kernel's caps is granted as asked (no notice), so the halving of what
    /// Linux reports is right; 64 KiB is below every distribution's default cap.
    #[test]
    fn a_buffer_below_the_cap_is_granted_as_asked() -> std::io::Result<()> {
        let opts = TransportOptions {
            udp_buffer_bytes: Some(64 << 10),
            ..TransportOptions::default()
        };
        let socket = socket2::Socket::from(bind_reuseport(
            "127.0.0.1:0".parse().map_err(std::io::Error::other)?,
            &opts,
        )?);
        let caps = BufferCaps {
            requested: 64 << 10,
            recv: Some(super::granted(socket.recv_buffer_size()?)),
            send: Some(super::granted(socket.send_buffer_size()?)),
        };
        assert_eq!(caps.recv, Some(64 << 10));
        assert_eq!(caps.send, Some(64 << 10));
        assert_eq!(caps.notice(), None);
        Ok(())
    }
}
