//! Hodei's QUIC transport: everything between a shard (or an agent, or the CLI) and the
//! network, and nothing about what the messages mean.
//!
//! - [`tls`]: the server's private CA and certificate, created on first start in its data
//!   directory, and the rustls/quinn configs (TLS 1.3, ring, ALPN `hodei-agent/1` or `hodei-client/1`). Clients trust only
//!   that CA and always ask for [`SERVER_NAME`].
//! - [`pki`]: certificates issued while running: agents' short-lived client certificates
//!   (mTLS), and server certificate rotation without a restart.
//! - [`endpoint`]: `SO_REUSEPORT` UDP sockets, so each shard runs its own quinn endpoint on the
//!   shared port on its own `current_thread` runtime; client endpoints; connecting with errors
//!   that say which address failed and why.
//! - [`framed`]: [`FrameReader`]/[`FrameWriter`] carry the versioned, length-framed rkyv
//!   messages of [`hodei_core::wire`] over QUIC streams; nothing a peer sends can panic them.
//! - [`datagram`]: one such message in a QUIC datagram (agents' heartbeats).
//!
//! The crate is runtime-light: it needs a tokio runtime only where quinn does (endpoints). Its
//! only global state is a flag that keeps the notice about kernel-capped UDP buffers to one
//! line per process.

pub mod datagram;
pub mod endpoint;
mod error;
pub mod framed;
pub mod pki;
pub mod tls;

pub use datagram::{DATAGRAM_RECEIVE_BUFFER, decode_datagram, send_datagram};
pub use endpoint::{
    AGENT_PEER_ACK_DELAY, MAX_UDP_PAYLOAD, TransportOptions, bind_reuseport, client_endpoint,
    connect, server_endpoint,
};
pub use error::TransportError;
pub use framed::{FrameReader, FrameWriter};
pub use pki::{Authority, ServerCert, check_agent_key, new_agent_key, peer_cert};
pub use tls::{
    ClientIdentity, SERVER_NAME, ServerTls, client_config, client_config_with, ensure_server_tls,
    server_config, write_server_cert,
};
