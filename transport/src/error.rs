//! The one error type of this crate. Variants are grouped by the operation that returns them
//! (TLS material, endpoints and connecting, framed streams); every message names the file or
//! address involved so an operator can act on it without a backtrace.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use hodei_core::frame::FrameError;

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    // --- TLS material (`ensure_server_tls`, `server_config`, `client_config`) ---
    /// A TLS file or the data directory could not be read, written or created.
    #[error("could not {action} {}: {source}", path.display())]
    File {
        /// What was attempted ("read", "write", "create directory", ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A TLS file exists but does not hold what it should. It is left untouched: Hodei never
    /// overwrites key material it did not just create.
    #[error("{} is not a valid {what}: {reason}", path.display())]
    InvalidFile {
        /// The file.
        path: PathBuf,
        /// What it should hold ("PEM certificate", "PEM private key", ...).
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A TLS file is missing while files that depend on it exist, so it cannot be recreated
    /// without invalidating them.
    #[error("{} is missing: {reason}", path.display())]
    MissingFile {
        /// The missing file.
        path: PathBuf,
        /// Why it cannot simply be generated, and what to do.
        reason: &'static str,
    },
    /// Generating a key pair or signing a certificate failed.
    #[error("could not generate the {what}: {source}")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// The rcgen error.
        #[source]
        source: rcgen::Error,
    },
    /// rustls refused the configuration (for example a key that does not match its
    /// certificate).
    #[error("invalid TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// A QUIC setting is out of range or the crypto provider lacks the suite QUIC needs.
    #[error("invalid QUIC configuration: {0}")]
    Config(String),

    // --- Endpoints and connecting ---
    /// An endpoint was created outside a tokio runtime (quinn would panic there).
    #[error("{0} must be called from within a tokio runtime")]
    NoRuntime(&'static str),
    /// The UDP socket could not be set up as a QUIC endpoint.
    #[error("could not open a QUIC endpoint for {addr}: {source}")]
    Endpoint {
        /// The local address, or for a client the server it was meant to reach.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Nothing answered the handshake before the idle timeout.
    #[error("no Hodei server answered at {addr} (is it running?)")]
    NoServer {
        /// The server address.
        addr: SocketAddr,
    },
    /// The TLS handshake failed: most often the client does not trust the server's CA.
    #[error(
        "TLS handshake with {addr} failed: {reason} (does this client trust the server's CA, ca.pem in the server's data directory?)"
    )]
    Handshake {
        /// The server address.
        addr: SocketAddr,
        /// What the TLS layer reported.
        reason: String,
    },
    /// Connecting failed for another reason (bad address, endpoint closing, peer closed).
    #[error("could not connect to {addr}: {reason}")]
    Connect {
        /// The server address.
        addr: SocketAddr,
        /// What quinn reported.
        reason: String,
    },

    // --- Framed streams ---
    /// A frame had another protocol version, was too large, or its payload was malformed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({buffered} bytes of an incomplete frame)")]
    Truncated {
        /// Bytes of the incomplete frame that had arrived.
        buffered: usize,
    },
    /// Reading the stream failed (reset by the peer, connection lost).
    #[error("could not read from the stream: {0}")]
    Read(#[from] quinn::ReadError),
    /// Writing the stream failed (stopped by the peer, connection lost).
    #[error("could not write to the stream: {0}")]
    Write(#[from] quinn::WriteError),
    /// The stream was already finished or reset.
    #[error("the stream is already finished or reset")]
    Closed(#[from] quinn::ClosedStream),
    /// The connection is gone (sending a datagram).
    #[error("the connection is lost: {0}")]
    Lost(#[from] quinn::ConnectionError),
    /// `finish` was called with messages still in the buffer; they would have been lost.
    #[error("finish() called with {0} unflushed bytes; flush() first")]
    Unflushed(usize),
}
