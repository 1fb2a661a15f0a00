//! Admission: what one source address may hold on a shard (handshakes in progress,
//! established connections), checked before a handshake costs any crypto work; then the
//! handshake, and the hand-off by ALPN to the agent or the client side.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use hodei_core::wire::{ALPN_AGENT, ALPN_CLIENT};
use tokio::sync::mpsc::UnboundedSender;
use tracing::warn;

use super::agent::agent_conn;
use super::client::client_conn;
use crate::control::Control;
use crate::shard_thread::Input;
use crate::store::Store;

/// What one source address may hold on one shard (the kernel spreads a source's
/// connections over the shards, so the server-wide bound is this times the shard count).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Established connections per source IP.
    pub conns_per_ip: u32,
    /// Handshakes in progress per source IP (a handshake flood is refused before it costs
    /// crypto work).
    pub handshakes_per_ip: u32,
}

/// Per source IP: handshakes in progress, established connections, refusals so far.
#[derive(Default)]
struct Source {
    handshaking: u32,
    established: u32,
    refused: u64,
}

type Sources = Rc<RefCell<HashMap<IpAddr, Source>>>;

/// Counts a connection of `ip` in one state for as long as it lives.
struct Slot {
    sources: Sources,
    ip: IpAddr,
    established: bool,
}

impl Slot {
    fn establish(&mut self) {
        let mut map = self.sources.borrow_mut();
        if let Some(s) = map.get_mut(&self.ip) {
            s.handshaking = s.handshaking.saturating_sub(1);
            s.established += 1;
        }
        self.established = true;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.sources.borrow_mut();
        if let Some(s) = map.get_mut(&self.ip) {
            if self.established {
                s.established = s.established.saturating_sub(1);
            } else {
                s.handshaking = s.handshaking.saturating_sub(1);
            }
            if s.established == 0 && s.handshaking == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Admits a new connection from `ip`, or says why not.
fn admit(sources: &Sources, ip: IpAddr, limits: Limits) -> Result<Slot, String> {
    let mut map = sources.borrow_mut();
    let s = map.entry(ip).or_default();
    let why = if s.handshaking >= limits.handshakes_per_ip {
        Some(format!("{} handshakes in progress", s.handshaking))
    } else if s.established >= limits.conns_per_ip {
        Some(format!("{} connections open", s.established))
    } else {
        None
    };
    if let Some(why) = why {
        s.refused += 1;
        // The first refusal and every 1000th: a flood must not flood the log too.
        let n = s.refused;
        return Err(if n == 1 || n.is_multiple_of(1000) {
            format!("{why} (refusal {n} for this source)")
        } else {
            String::new()
        });
    }
    s.handshaking += 1;
    drop(map);
    Ok(Slot {
        sources: Rc::clone(sources),
        ip,
        established: false,
    })
}

/// Accepts connections on `endpoint` until it closes, each in a task of its own.
pub async fn accept_loop(
    endpoint: quinn::Endpoint,
    tx: UnboundedSender<Input>,
    store: Store,
    control: Arc<Control>,
    limits: Limits,
) {
    let sources: Sources = Rc::default();
    while let Some(incoming) = endpoint.accept().await {
        let remote = incoming.remote_address();
        let mut slot = match admit(&sources, remote.ip(), limits) {
            Ok(s) => s,
            Err(why) => {
                if !why.is_empty() {
                    warn!(%remote, "refusing connections from this source: {why}");
                }
                incoming.refuse();
                continue;
            }
        };
        let tx = tx.clone();
        let store = store.clone();
        let control = Arc::clone(&control);
        tokio::task::spawn_local(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    warn!(%remote, "handshake failed: {e}");
                    return;
                }
            };
            slot.establish();
            let alpn = conn
                .handshake_data()
                .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                .and_then(|h| h.protocol);
            match alpn.as_deref() {
                Some(p) if p == ALPN_AGENT => agent_conn(conn, tx, control).await,
                Some(p) if p == ALPN_CLIENT => client_conn(conn, tx, store, control).await,
                _ => {
                    warn!(%remote, "unknown application protocol; closing");
                    conn.close(2u32.into(), b"unknown protocol");
                }
            }
            drop(slot);
        });
    }
}
