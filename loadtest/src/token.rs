//! The API token the load generator's client requests carry: `HODEI_TOKEN`, else the
//! `admin.token` a server writes beside its CA file on its first start.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result};
use hodei_core::wire::{ControlRequest, FromServer, Request, ToServer};

static TOKEN: OnceLock<String> = OnceLock::new();

/// Reads the token once, before any request.
pub fn load(ca: &Path) -> Result<()> {
    let token = match std::env::var("HODEI_TOKEN") {
        Ok(t) => t,
        Err(_) => {
            let path = ca
                .parent()
                .map_or_else(|| "admin.token".into(), |d| d.join("admin.token"));
            std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {} (or set HODEI_TOKEN)", path.display()))?
        }
    };
    let _ = TOKEN.set(token.trim().to_owned());
    Ok(())
}

/// `body` with the token.
pub fn request(body: impl Into<ToServer>) -> Request {
    Request {
        token: TOKEN.get().cloned().unwrap_or_default(),
        body: body.into(),
    }
}

/// The client certificate every simulated agent presents (agents connect with mTLS only):
/// one join, with the token, for the whole fleet. They all share its identity, which is
/// fine for load: the server checks the certificate, not that identities are unique.
pub fn join(server: SocketAddr, ca: &Path) -> Result<hodei_transport::ClientIdentity> {
    use hodei_core::wire::ALPN_CLIENT;
    use hodei_transport::TransportOptions;
    let (key_pem, public_key) = hodei_transport::new_agent_key()?;
    let cfg = hodei_transport::client_config(ca, ALPN_CLIENT, &TransportOptions::default())?;
    match one_request(server, cfg, ControlRequest::Join { public_key })? {
        Some(FromServer::Joined { cert_pem, .. }) => {
            Ok(hodei_transport::ClientIdentity { cert_pem, key_pem })
        }
        Some(FromServer::Error { message, .. }) => {
            anyhow::bail!("the server refused the join: {message}")
        }
        _ => anyhow::bail!("the server did not answer the join"),
    }
}

/// Longest wait for a [`one_request`] answer, handshake included.
const ONE_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `body` (with the token) on a connection of its own, from the calling thread; its first
/// answer.
pub fn one_request(
    server: SocketAddr,
    cfg: quinn::ClientConfig,
    body: impl Into<ToServer>,
) -> Result<Option<FromServer>> {
    let body = body.into();
    use hodei_transport::{FrameReader, FrameWriter};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime for a request")?;
    rt.block_on(async {
        let ep = hodei_transport::client_endpoint(server, cfg)?;
        let ask = async {
            let conn = hodei_transport::connect(&ep, server).await?;
            let (send, recv) = conn.open_bi().await?;
            let mut w = FrameWriter::new(send);
            w.send(&request(body)).await?;
            w.finish()?;
            let reply = FrameReader::new(recv).next::<FromServer>().await?;
            conn.close(0u32.into(), b"done");
            anyhow::Ok(reply)
        };
        let reply = tokio::time::timeout(ONE_REQUEST_TIMEOUT, ask)
            .await
            .context("the server did not answer in time")??;
        ep.wait_idle().await;
        Ok(reply)
    })
}
