//! The CLI's connection to a server: one QUIC connection, one stream per request.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;

use anyhow::{Context, Result, bail};
use hodei_core::wire::{ALPN_CLIENT, ErrorKind, FromServer, Request, ToServer};
use hodei_transport::{FrameReader, FrameWriter, TransportOptions};

/// A connected client.
pub struct Client {
    conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
    token: String,
}

/// Resolves `host:port`.
pub fn resolve(server: &str) -> Result<SocketAddr> {
    server
        .to_socket_addrs()
        .with_context(|| format!("invalid server address {server:?} (expected host:port)"))?
        .next()
        .with_context(|| format!("server address {server:?} resolves to nothing"))
}

impl Client {
    /// Connects to `server`, trusting the CA in `ca`; every request carries `token`.
    pub async fn connect(server: &str, ca: &Path, token: String) -> Result<Self> {
        let addr = resolve(server)?;
        // A CLI call should fail fast when no server answers.
        let opts = TransportOptions {
            idle_timeout: std::time::Duration::from_secs(3),
            ..TransportOptions::default()
        };
        let cfg = hodei_transport::client_config(ca, ALPN_CLIENT, &opts).with_context(|| {
            format!("cannot use CA file {} (set --ca or HODEI_CA)", ca.display())
        })?;
        let endpoint = hodei_transport::client_endpoint(addr, cfg)?;
        let conn = hodei_transport::connect(&endpoint, addr).await?;
        Ok(Self {
            conn,
            _endpoint: endpoint,
            token,
        })
    }

    /// Sends a request and hands each reply to `f` until the server ends the stream or `f`
    /// returns false. A server error becomes an `Err`.
    pub async fn stream(
        &self,
        body: impl Into<ToServer>,
        mut f: impl FnMut(FromServer) -> Result<bool>,
    ) -> Result<()> {
        let (send, recv) = self
            .conn
            .open_bi()
            .await
            .context("cannot open a stream to the server")?;
        let mut w = FrameWriter::new(send);
        w.send(&Request {
            token: self.token.clone(),
            body: body.into(),
        })
        .await?;
        w.finish()?;
        let mut r = FrameReader::new(recv);
        while let Some(msg) = r.next::<FromServer>().await? {
            if let FromServer::Error { kind, message } = msg {
                match kind {
                    ErrorKind::NotFound
                    | ErrorKind::Invalid
                    | ErrorKind::Internal
                    | ErrorKind::Unauthenticated
                    | ErrorKind::Forbidden => bail!("{message}"),
                }
            }
            if !f(msg)? {
                break;
            }
        }
        Ok(())
    }

    /// Sends a request and collects every reply.
    pub async fn request(&self, body: impl Into<ToServer>) -> Result<Vec<FromServer>> {
        let mut out = Vec::new();
        self.stream(body, |m| {
            out.push(m);
            Ok(true)
        })
        .await?;
        Ok(out)
    }
}
