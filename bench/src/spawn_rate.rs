//! The machine's raw process spawn rate: how fast it runs `/bin/true` to completion with no
//! Hodei in between. Measured in the same run as the `/bin/true` jobs, so that both see the
//! same machine load.

use std::time::{Duration, Instant};

use anyhow::Result;

pub struct SpawnRate {
    pub per_s: f64,
    pub spawned: usize,
    pub secs: f64,
}

/// `parallel` threads each run `/bin/true` to completion, over and over, until `total`
/// processes ran or `max` passed, whichever comes first.
pub fn raw_spawn_rate(parallel: usize, total: usize, max: Duration) -> Result<SpawnRate> {
    let parallel = parallel.max(1);
    let per = total.div_ceil(parallel);
    let t0 = Instant::now();
    let deadline = t0 + max;
    let threads: Vec<_> = (0..parallel)
        .map(|_| {
            std::thread::spawn(move || -> std::io::Result<usize> {
                let mut n = 0;
                while n < per && Instant::now() < deadline {
                    std::process::Command::new("/bin/true").status()?;
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    let mut spawned = 0;
    for t in threads {
        spawned += t
            .join()
            .map_err(|_| anyhow::anyhow!("a spawner thread panicked"))??;
    }
    let secs = t0.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let per_s = spawned as f64 / secs;
    Ok(SpawnRate {
        per_s,
        spawned,
        secs,
    })
}
