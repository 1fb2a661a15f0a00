//! Real QUIC over 127.0.0.1: SO_REUSEPORT endpoints, the generated CA, framed messages, and
//! what happens with untrusted CAs, hostile bytes and damaged TLS files.

use std::error::Error;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use hodei_core::frame::{FrameError, Wire};
use hodei_core::spec::JobSpec;
use hodei_core::wire::{FromAgent, JobRequest, ToServer};
use hodei_transport::{
    FrameReader, FrameWriter, MAX_UDP_PAYLOAD, TransportError, TransportOptions, bind_reuseport,
    client_config, client_endpoint, connect, ensure_server_tls, server_config, server_endpoint,
};
use tokio::sync::mpsc;
use tokio::time::timeout;

type TestResult = Result<(), Box<dyn Error>>;

/// Every wait in these tests is bounded by this.
const DEADLINE: Duration = Duration::from_secs(10);

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> std::io::Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let name = format!(
            "hodei-transport-{tag}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server endpoint on 127.0.0.1 with a fresh CA in `dir`; returns it and its address.
fn server_in(dir: &Path) -> Result<(quinn::Endpoint, SocketAddr), Box<dyn Error>> {
    let opts = TransportOptions::default();
    let tls = ensure_server_tls(dir)?;
    let socket = bind_reuseport("127.0.0.1:0".parse()?, &opts)?;
    let endpoint = server_endpoint(
        socket,
        server_config(&tls, &tls.cert()?, &opts)?,
        &tls.reset_key,
    )?;
    let addr = endpoint.local_addr()?;
    Ok((endpoint, addr))
}

async fn client_to(ca: &Path, addr: SocketAddr) -> Result<quinn::Connection, Box<dyn Error>> {
    let endpoint = client_endpoint(
        addr,
        client_config(
            ca,
            hodei_core::wire::ALPN_CLIENT,
            &TransportOptions::default(),
        )?,
    )?;
    Ok(timeout(DEADLINE, connect(&endpoint, addr)).await??)
}

/// Serves every connection of `endpoint`: each bidi stream gets its one `FromAgent` and then
/// its `ToServer` messages echoed back, then is finished.
async fn echo_server(endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(async move {
                    let (mut reader, mut writer) = (FrameReader::new(recv), FrameWriter::new(send));
                    if let Ok(Some(msg)) = reader.next::<FromAgent>().await
                        && writer.send(&msg).await.is_err()
                    {
                        return;
                    }
                    while let Ok(Some(msg)) = reader.next::<ToServer>().await {
                        if writer.send(&msg).await.is_err() {
                            return;
                        }
                    }
                    let _ = writer.finish();
                });
            }
        });
    }
}

#[tokio::test]
async fn reuseport_endpoints_carry_framed_messages() -> TestResult {
    let dir = TempDir::new("roundtrip")?;
    let opts = TransportOptions::default();
    let tls = ensure_server_tls(dir.path())?;
    let cfg = server_config(&tls, &tls.cert()?, &opts)?;

    // Two shards on one port.
    let first = bind_reuseport("127.0.0.1:0".parse()?, &opts)?;
    let addr = first.local_addr()?;
    let second = bind_reuseport(addr, &opts)?;
    let shard_a = server_endpoint(first, cfg.clone(), &[7u8; 32])?;
    let shard_b = server_endpoint(second, cfg, &[7u8; 32])?;
    assert_eq!(shard_a.local_addr()?, addr);
    assert_eq!(shard_b.local_addr()?, addr);
    tokio::spawn(echo_server(shard_a.clone()));
    tokio::spawn(echo_server(shard_b.clone()));

    let heartbeat = FromAgent::Heartbeat {
        running: 3,
        load: 142,
    };
    let submit = ToServer::Job(JobRequest::Submit {
        specs: vec![JobSpec::exec("echo", &["hello", "world"])],
    });

    // Several connections from different ports, so both shards are likely to serve some;
    // every one must work whichever shard the kernel picks.
    for _ in 0..4 {
        let conn = client_to(&tls.ca_cert_path, addr).await?;
        let (send, recv) = timeout(DEADLINE, conn.open_bi()).await??;
        let (mut writer, mut reader) = (FrameWriter::new(send), FrameReader::new(recv));
        writer.push(&heartbeat)?;
        writer.push(&submit)?;
        assert!(writer.has_pending());
        timeout(DEADLINE, writer.flush()).await??;
        assert!(!writer.has_pending());
        writer.finish()?;

        assert_eq!(
            timeout(DEADLINE, reader.next::<FromAgent>()).await??,
            Some(heartbeat.clone())
        );
        assert_eq!(
            timeout(DEADLINE, reader.next::<ToServer>()).await??,
            Some(submit.clone())
        );
        assert_eq!(timeout(DEADLINE, reader.next::<ToServer>()).await??, None);
        // A finished stream stays finished.
        assert_eq!(timeout(DEADLINE, reader.next::<ToServer>()).await??, None);
        conn.close(0u32.into(), b"done");
    }
    shard_a.close(0u32.into(), b"");
    shard_b.close(0u32.into(), b"");
    Ok(())
}

/// Path MTU discovery takes a loopback connection past Ethernet-sized datagrams, up to
/// [`MAX_UDP_PAYLOAD`] and no further: a batch of assignments or output is not cut into
/// 1.4 KB packets where the path carries more.
#[tokio::test]
async fn loopback_paths_grow_past_ethernet_datagrams() -> TestResult {
    let dir = TempDir::new("mtu")?;
    let (endpoint, addr) = server_in(dir.path())?;
    tokio::spawn(echo_server(endpoint.clone()));
    let conn = client_to(&dir.path().join("ca.pem"), addr).await?;
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let mtu = conn.stats().path.current_mtu;
        assert!(mtu <= MAX_UDP_PAYLOAD, "{mtu} > {MAX_UDP_PAYLOAD}");
        // On loopback the search ends exactly at the bound.
        if mtu == MAX_UDP_PAYLOAD {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "MTU still {mtu} after {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    conn.close(0u32.into(), b"done");
    endpoint.close(0u32.into(), b"");
    Ok(())
}

#[tokio::test]
async fn client_trusting_another_ca_is_refused() -> TestResult {
    let server_dir = TempDir::new("server")?;
    let other_dir = TempDir::new("other")?;
    let (endpoint, addr) = server_in(server_dir.path())?;
    tokio::spawn(echo_server(endpoint.clone()));
    let other = ensure_server_tls(other_dir.path())?;

    let client = client_endpoint(
        addr,
        client_config(
            &other.ca_cert_path,
            hodei_core::wire::ALPN_CLIENT,
            &TransportOptions::default(),
        )?,
    )?;
    let result = timeout(DEADLINE, connect(&client, addr)).await?;
    match result {
        Err(e @ TransportError::Handshake { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&addr.to_string()), "{text}");
        }
        Err(other) => return Err(format!("expected a handshake error, got: {other}").into()),
        Ok(_) => return Err("connected with an untrusted CA".into()),
    }

    // The server still serves clients that trust it.
    let ca = server_dir.path().join("ca.pem");
    client_to(&ca, addr).await?;
    Ok(())
}

#[tokio::test]
async fn silent_address_reports_no_server() -> TestResult {
    let dir = TempDir::new("silent")?;
    let tls = ensure_server_tls(dir.path())?;
    // A bound socket that never answers: no risk of another test's server on the port.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let addr = silent.local_addr()?;
    let opts = TransportOptions {
        idle_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let client = client_endpoint(
        addr,
        client_config(&tls.ca_cert_path, hodei_core::wire::ALPN_CLIENT, &opts)?,
    )?;
    match timeout(DEADLINE, connect(&client, addr)).await? {
        Err(e @ TransportError::NoServer { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains(&addr.to_string()) && text.contains("is it running?"),
                "{text}"
            );
            Ok(())
        }
        Err(other) => Err(format!("expected NoServer, got: {other}").into()),
        Ok(_) => Err("connected to a silent socket".into()),
    }
}

/// What the server's reader made of one stream.
type Outcome = Result<Option<FromAgent>, TransportError>;

/// Accepts one connection and reports, per bidi stream, the first two reads of its
/// `FromAgent` reader.
async fn inspecting_server(
    endpoint: quinn::Endpoint,
    out: mpsc::UnboundedSender<(Outcome, Outcome)>,
) {
    let Some(incoming) = endpoint.accept().await else {
        return;
    };
    let Ok(conn) = incoming.await else { return };
    while let Ok((_send, recv)) = conn.accept_bi().await {
        let mut reader = FrameReader::new(recv);
        let first = reader.next::<FromAgent>().await;
        let second = reader.next::<FromAgent>().await;
        if out.send((first, second)).is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn hostile_bytes_are_errors_not_panics() -> TestResult {
    let dir = TempDir::new("hostile")?;
    let (endpoint, addr) = server_in(dir.path())?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = tokio::spawn(inspecting_server(endpoint, tx));
    let conn = client_to(&dir.path().join("ca.pem"), addr).await?;

    let valid = FromAgent::Heartbeat {
        running: 1,
        load: 2,
    }
    .to_frame()?;
    let mut other_version = valid.clone();
    other_version[..2].copy_from_slice(&7u16.to_le_bytes());
    let mut malformed_then_valid = Vec::new();
    malformed_then_valid.extend_from_slice(&valid[..2]);
    malformed_then_valid.extend_from_slice(&5u32.to_le_bytes());
    malformed_then_valid.extend_from_slice(&[0xff; 5]);
    malformed_then_valid.extend_from_slice(&valid);
    let mut oversized = valid[..2].to_vec();
    oversized.extend_from_slice(&u32::MAX.to_le_bytes());

    let cases: [(&str, Vec<u8>); 6] = [
        (
            "garbage",
            b"\xde\xad\xbe\xef this is not a frame at all".to_vec(),
        ),
        ("other version", other_version),
        ("oversized", oversized),
        ("truncated", valid[..valid.len() - 1].to_vec()),
        ("malformed then valid", malformed_then_valid),
        ("valid", valid),
    ];
    for (name, bytes) in &cases {
        let (mut send, _recv) = timeout(DEADLINE, conn.open_bi()).await??;
        timeout(DEADLINE, send.write_all(bytes)).await??;
        send.finish()?;
        let (first, second) = timeout(DEADLINE, rx.recv())
            .await?
            .ok_or("server stopped")?;
        match *name {
            "garbage" => assert!(
                matches!(
                    first,
                    Err(TransportError::Frame(FrameError::Version { .. }))
                ),
                "{name}: {first:?}"
            ),
            "other version" => assert!(
                matches!(
                    first,
                    Err(TransportError::Frame(FrameError::Version { got: 7 }))
                ),
                "{name}: {first:?}"
            ),
            "oversized" => assert!(
                matches!(
                    first,
                    Err(TransportError::Frame(FrameError::TooLarge { .. }))
                ),
                "{name}: {first:?}"
            ),
            "truncated" => assert!(
                matches!(first, Err(TransportError::Truncated { .. })),
                "{name}: {first:?}"
            ),
            "malformed then valid" => {
                assert!(
                    matches!(first, Err(TransportError::Frame(FrameError::Malformed(_)))),
                    "{name}: {first:?}"
                );
                assert!(
                    matches!(
                        second,
                        Ok(Some(FromAgent::Heartbeat {
                            running: 1,
                            load: 2
                        }))
                    ),
                    "{name}: {second:?}"
                );
            }
            _ => {
                assert!(
                    matches!(first, Ok(Some(FromAgent::Heartbeat { .. }))),
                    "{name}: {first:?}"
                );
                assert!(matches!(second, Ok(None)), "{name}: {second:?}");
            }
        }
    }
    conn.close(0u32.into(), b"done");
    server.abort();
    Ok(())
}

#[tokio::test]
async fn tls_files_persist_and_damage_is_reported() -> TestResult {
    let dir = TempDir::new("files")?;
    let first = ensure_server_tls(dir.path())?;
    let ca_path = dir.path().join("ca.pem");
    assert_eq!(first.ca_cert_path, ca_path);
    let ca_before = std::fs::read(&ca_path)?;
    let server_before = std::fs::read(dir.path().join("server.pem"))?;

    let second = ensure_server_tls(dir.path())?;
    assert_eq!(
        std::fs::read(&ca_path)?,
        ca_before,
        "ca.pem must not change"
    );
    assert_eq!(std::fs::read(dir.path().join("server.pem"))?, server_before);
    assert_eq!(second.cert_chain, first.cert_chain);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for key in ["ca.key", "server.key"] {
            let mode = std::fs::metadata(dir.path().join(key))?
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{key} has mode {mode:o}");
        }
    }

    // A lost server.pem is reissued by the same CA: clients keep trusting the server.
    std::fs::remove_file(dir.path().join("server.pem"))?;
    let reissued = ensure_server_tls(dir.path())?;
    assert_eq!(std::fs::read(&ca_path)?, ca_before);
    let (endpoint, addr) = {
        let opts = TransportOptions::default();
        let socket = bind_reuseport("127.0.0.1:0".parse()?, &opts)?;
        let endpoint = server_endpoint(
            socket,
            server_config(&reissued, &reissued.cert()?, &opts)?,
            &reissued.reset_key,
        )?;
        let addr = endpoint.local_addr()?;
        (endpoint, addr)
    };
    tokio::spawn(echo_server(endpoint));
    client_to(&ca_path, addr).await?;

    // A damaged ca.pem is named in the error and left as it is.
    std::fs::write(
        &ca_path,
        b"-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n",
    )?;
    let damaged = std::fs::read(&ca_path)?;
    let err = ensure_server_tls(dir.path())
        .err()
        .ok_or("damaged ca.pem accepted")?;
    assert!(
        err.to_string().contains(&ca_path.display().to_string()),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&ca_path)?,
        damaged,
        "a damaged file must not be overwritten"
    );
    let err = client_config(
        &ca_path,
        hodei_core::wire::ALPN_CLIENT,
        &TransportOptions::default(),
    )
    .err()
    .ok_or("damaged CA trusted")?;
    assert!(
        err.to_string().contains(&ca_path.display().to_string()),
        "{err}"
    );

    std::fs::write(&ca_path, b"plain garbage")?;
    let err = ensure_server_tls(dir.path())
        .err()
        .ok_or("garbage ca.pem accepted")?;
    assert!(
        err.to_string().contains(&ca_path.display().to_string()),
        "{err}"
    );

    // A damaged key is named too.
    std::fs::write(&ca_path, &ca_before)?;
    let key_path = dir.path().join("server.key");
    std::fs::write(&key_path, b"junk")?;
    let err = ensure_server_tls(dir.path())
        .err()
        .ok_or("damaged server.key accepted")?;
    assert!(
        err.to_string().contains(&key_path.display().to_string()),
        "{err}"
    );

    // A missing CA file for a client is named.
    let missing = dir.path().join("nope.pem");
    let err = client_config(
        &missing,
        hodei_core::wire::ALPN_CLIENT,
        &TransportOptions::default(),
    )
    .err()
    .ok_or("missing CA accepted")?;
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
    Ok(())
}

#[test]
fn endpoints_outside_a_runtime_are_errors() -> TestResult {
    let dir = TempDir::new("noruntime")?;
    let opts = TransportOptions::default();
    let tls = ensure_server_tls(dir.path())?;
    let socket = bind_reuseport("127.0.0.1:0".parse()?, &opts)?;
    let addr = socket.local_addr()?;
    let server = server_endpoint(
        socket,
        server_config(&tls, &tls.cert()?, &opts)?,
        &tls.reset_key,
    );
    assert!(matches!(server, Err(TransportError::NoRuntime(_))));
    let client = client_endpoint(
        addr,
        client_config(&tls.ca_cert_path, hodei_core::wire::ALPN_CLIENT, &opts)?,
    );
    assert!(matches!(client, Err(TransportError::NoRuntime(_))));
    Ok(())
}

/// A server whose first connection is handed to the test (for its statistics); it reads that
/// connection's first stream, reports each heartbeat's arrival, and at the stream's end the
/// sum of their `load` fields.
async fn counting_server(
    endpoint: quinn::Endpoint,
    conn_tx: tokio::sync::oneshot::Sender<quinn::Connection>,
    events: mpsc::UnboundedSender<Option<usize>>,
) {
    let Some(incoming) = endpoint.accept().await else {
        return;
    };
    let Ok(conn) = incoming.await else { return };
    let _ = conn_tx.send(conn.clone());
    let Ok((_send, recv)) = conn.accept_bi().await else {
        return;
    };
    let mut reader = FrameReader::new(recv);
    let mut sum = 0;
    while let Ok(Some(msg)) = reader.next::<FromAgent>().await {
        if let FromAgent::Heartbeat { load, .. } = msg {
            sum += load as usize;
        }
        let _ = events.send(None);
    }
    let _ = events.send(Some(sum));
}

/// A client connection that asks the server to delay its ACKs, as agents do, with a stream
/// open to the server, once the delay and path MTU discovery are settled ([`settle`]).
struct AgentLike {
    conn: quinn::Connection,
    /// The server's side of `conn`, for its statistics.
    server_side: quinn::Connection,
    writer: FrameWriter,
    /// From [`counting_server`].
    events: mpsc::UnboundedReceiver<Option<usize>>,
}

impl AgentLike {
    async fn connect(dir: &Path, ack_delay: Duration) -> Result<Self, Box<dyn Error>> {
        let (endpoint, addr) = server_in(dir)?;
        let (conn_tx, conn_rx) = tokio::sync::oneshot::channel();
        let (events_tx, events) = mpsc::unbounded_channel();
        tokio::spawn(counting_server(endpoint, conn_tx, events_tx));
        let opts = TransportOptions {
            peer_ack_delay: Some(ack_delay),
            ..TransportOptions::default()
        };
        let client = client_endpoint(
            addr,
            client_config(&dir.join("ca.pem"), hodei_core::wire::ALPN_AGENT, &opts)?,
        )?;
        let conn = timeout(DEADLINE, connect(&client, addr)).await??;
        let server_side = timeout(DEADLINE, conn_rx).await??;
        let (send, _recv) = timeout(DEADLINE, conn.open_bi()).await??;
        let mut pair = Self {
            conn,
            server_side,
            writer: FrameWriter::new(send),
            events,
        };
        settle(
            &pair.conn,
            &pair.server_side,
            &mut pair.writer,
            &mut pair.events,
        )
        .await?;
        Ok(pair)
    }
}

/// Waits (bounded) until `events` reported `n` more heartbeats.
async fn heartbeats_arrive(
    events: &mut mpsc::UnboundedReceiver<Option<usize>>,
    n: usize,
) -> TestResult {
    for _ in 0..n {
        match timeout(DEADLINE, events.recv()).await? {
            Some(None) => {}
            other => return Err(format!("expected a heartbeat, got {other:?}").into()),
        }
    }
    Ok(())
}

/// Sends heartbeats until the server has applied the agent's ACK-frequency request and both
/// sides' path MTU discovery is over (its probes carry ACKs too), bounded by [`DEADLINE`].
async fn settle(
    conn: &quinn::Connection,
    server_side: &quinn::Connection,
    writer: &mut FrameWriter,
    events: &mut mpsc::UnboundedReceiver<Option<usize>>,
) -> TestResult {
    let heartbeat = FromAgent::Heartbeat {
        running: 0,
        load: 0,
    };
    let deadline = std::time::Instant::now() + DEADLINE;
    while server_side.stats().frame_rx.ack_frequency == 0
        || conn.stats().path.current_mtu < MAX_UDP_PAYLOAD
        || server_side.stats().path.current_mtu < MAX_UDP_PAYLOAD
    {
        timeout(DEADLINE, writer.send(&heartbeat)).await??;
        heartbeats_arrive(events, 1).await?;
        assert!(
            std::time::Instant::now() < deadline,
            "no ACK-frequency request, or MTU discovery still going, after {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Heartbeats far apart are acknowledged together: the agent asks for up to 1 s of ACK delay
/// and the server honours it. (quinn as released caps the request at max(RTT, 25 ms), so on
/// loopback every heartbeat 40 ms apart got an ACK packet of its own: the patch in
/// `vendor/quinn-proto`.)
#[tokio::test]
async fn sparse_heartbeats_are_acknowledged_together() -> TestResult {
    let dir = TempDir::new("acks")?;
    let AgentLike {
        conn,
        server_side,
        mut writer,
        mut events,
    } = AgentLike::connect(dir.path(), hodei_transport::AGENT_PEER_ACK_DELAY).await?;
    let heartbeat = FromAgent::Heartbeat {
        running: 0,
        load: 0,
    };
    let acks_before = server_side.stats().frame_tx.acks;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        timeout(DEADLINE, writer.send(&heartbeat)).await??;
    }
    heartbeats_arrive(&mut events, 10).await?;
    let acks = server_side.stats().frame_tx.acks - acks_before;
    // One ACK when the delay ends (two if this machine stretched the 400 ms past it).
    assert!(acks <= 3, "{acks} ACKs for 10 heartbeats 40 ms apart");
    conn.close(0u32.into(), b"done");
    Ok(())
}

/// A sender whose congestion window fills does not wait out the ACK delay it asked for: its
/// last packet asks for an immediate ACK. Without that, each window of a bulk transfer (a
/// job's output) waited for the delayed ACK, so the whole transfer may not take even one
/// such delay (it takes a few ms; without the patch, a megabyte took 4 s with a 1 s delay).
#[tokio::test]
async fn bulk_data_does_not_wait_for_delayed_acks() -> TestResult {
    let dir = TempDir::new("bulk")?;
    let ack_delay = Duration::from_secs(5);
    let AgentLike {
        conn,
        mut writer,
        mut events,
        ..
    } = AgentLike::connect(dir.path(), ack_delay).await?;
    // About 250 KB: several congestion windows (the first is 12 KB), but not so much that
    // the receive buffer could overflow while client and server share this thread.
    let frame = FromAgent::Heartbeat {
        running: 0,
        load: 1,
    };
    let frames = 10_000;
    for _ in 0..frames {
        writer.push(&frame)?;
    }
    timeout(DEADLINE, writer.flush()).await??;
    writer.finish()?;
    let all = async {
        heartbeats_arrive(&mut events, frames).await?;
        events
            .recv()
            .await
            .ok_or_else(|| "the server went away".into())
    };
    let sum: Result<Option<usize>, Box<dyn Error>> = timeout(ack_delay, all).await?;
    assert_eq!(sum?, Some(frames));
    assert!(conn.stats().frame_tx.immediate_ack > 0);
    conn.close(0u32.into(), b"done");
    Ok(())
}
