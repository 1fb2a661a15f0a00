//! The server's own figures (`ControlRequest::Stats`, what `hodei stats` prints), read at the
//! start of the steady phase (and reset there) and at its end: the heartbeat handling time
//! the server measures itself (decoded → applied by its shard), beside the probe's round
//! trip, and its store commit times.

use std::net::SocketAddr;

use anyhow::{Result, bail};
use hodei_core::wire::{ControlRequest, Figure, FromServer};

/// One `Stats` request on a connection of its own.
pub fn read(server: SocketAddr, cfg: &quinn::ClientConfig, reset: bool) -> Result<Vec<Figure>> {
    match crate::token::one_request(server, cfg.clone(), ControlRequest::Stats { reset })? {
        Some(FromServer::Stats(f)) => Ok(f),
        Some(FromServer::Error { message, .. }) => bail!("stats request refused: {message}"),
        _ => bail!("the server did not answer the stats request"),
    }
}
