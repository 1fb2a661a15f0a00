//! Time as the shard sees it: microseconds since the Unix epoch, handed in by the driver.
//!
//! The sans-IO shard never reads a clock; the real driver passes wall-clock time and the
//! simulation passes a virtual one. Microseconds keep dispatch-latency figures meaningful.

/// Microseconds since the Unix epoch.
pub type Micros = u64;

/// Milliseconds to [`Micros`].
#[must_use]
pub const fn ms(v: u64) -> Micros {
    v * 1_000
}

/// Wall-clock now, for drivers (never called by the shard core itself).
#[must_use]
pub fn wall_now() -> Micros {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
