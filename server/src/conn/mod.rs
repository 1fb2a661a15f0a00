//! Connection tasks of a shard: [`admission`] accepts a connection if its source is within
//! its limits and tells agents from clients by ALPN; [`agent`] reads an agent's frames and
//! datagrams into the shard's loop and writes what the loop releases to it; [`client`] serves
//! one request per stream. A peer that sends garbage, a message of another version or
//! anything out of protocol gets its connection closed and a log line.

pub mod admission;
mod agent;
mod client;
pub(crate) mod pages;

use std::cell::Cell;

pub use admission::{Limits, accept_loop};

thread_local! {
    // Connection and request numbers are per shard thread: no shared counter on the hot path.
    static NEXT_ID: Cell<u64> = const { Cell::new(0) };
}

pub(crate) fn next_id() -> u64 {
    NEXT_ID.with(|c| {
        c.set(c.get() + 1);
        c.get()
    })
}
