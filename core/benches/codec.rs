//! `cargo bench -p hodei-core`: encode and validated decode of the hot messages
//! (a heartbeat, an assignment), in ns per operation, as hdrhistogram percentiles over
//! batches of 1,000 operations.

use std::hint::black_box;
use std::time::Instant;

use hdrhistogram::Histogram;
use hodei_core::frame::{HEADER_LEN, Wire};
use hodei_core::ids::{Attempt, JobId};
use hodei_core::spec::JobSpec;
use hodei_core::wire::{FromAgent, ToAgent};

const BATCH: u32 = 1_000;

fn measure(name: &str, mut op: impl FnMut()) {
    let mut h = Histogram::<u64>::new(3).unwrap_or_else(|_| std::process::exit(1));
    for _ in 0..50 {
        op(); // warm-up
    }
    for _ in 0..500 {
        let t = Instant::now();
        for _ in 0..BATCH {
            op();
        }
        let per = t.elapsed().as_nanos() / u128::from(BATCH);
        let _ = h.record(u64::try_from(per).unwrap_or(u64::MAX));
    }
    println!(
        "{name:<28} p50 {:>6} ns  p99 {:>6} ns  max {:>6} ns",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max()
    );
}

fn main() {
    let hb = FromAgent::Heartbeat {
        running: 3,
        load: 120,
    };
    let assign = ToAgent::Assign {
        job: JobId::new(1, 2, 3),
        attempt: Attempt(1),
        spec: JobSpec::exec("/bin/true", &["a", "b"]),
        secrets: Vec::new(),
    };
    let mut buf = Vec::with_capacity(4096);
    measure("encode heartbeat", || {
        buf.clear();
        let _ = black_box(&hb).encode_into(&mut buf);
    });
    let hb_frame = hb.to_frame().unwrap_or_default();
    measure("decode heartbeat", || {
        let _ = black_box(FromAgent::decode(&hb_frame[HEADER_LEN..]));
    });
    measure("encode assign", || {
        buf.clear();
        let _ = black_box(&assign).encode_into(&mut buf);
    });
    let a_frame = assign.to_frame().unwrap_or_default();
    measure("decode assign", || {
        let _ = black_box(ToAgent::decode(&a_frame[HEADER_LEN..]));
    });
}
