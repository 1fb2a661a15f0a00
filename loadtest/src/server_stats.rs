//! The server's own figures (`ToServer::Stats`, what `hodei stats` prints), read at the
//! start of the steady phase (and reset there) and at its end: the heartbeat handling time
//! the server measures itself (decoded → applied by its shard), beside the probe's round
//! trip, and its store commit times.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hodei_core::wire::{Figure, FromServer, ToServer};
use hodei_transport::{FrameReader, FrameWriter};

/// Longest wait for the answer, handshake included.
const TIMEOUT: Duration = Duration::from_secs(10);

/// One `Stats` request on a connection of its own.
pub fn read(server: SocketAddr, cfg: &quinn::ClientConfig, reset: bool) -> Result<Vec<Figure>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime for the stats request")?;
    rt.block_on(async {
        let ep = hodei_transport::client_endpoint(server, cfg.clone())?;
        let ask = async {
            let conn = hodei_transport::connect(&ep, server).await?;
            let (send, recv) = conn.open_bi().await?;
            let mut w = FrameWriter::new(send);
            w.send(&crate::token::request(ToServer::Stats { reset }))
                .await?;
            w.finish()?;
            let reply = FrameReader::new(recv).next::<FromServer>().await?;
            conn.close(0u32.into(), b"done");
            anyhow::Ok(reply)
        };
        let reply = tokio::time::timeout(TIMEOUT, ask)
            .await
            .context("the server did not answer the stats request in time")??;
        ep.wait_idle().await;
        match reply {
            Some(FromServer::Stats(f)) => Ok(f),
            Some(FromServer::Error { message, .. }) => bail!("stats request refused: {message}"),
            _ => bail!("the server did not answer the stats request"),
        }
    })
}
