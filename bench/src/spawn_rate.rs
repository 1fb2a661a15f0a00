//! The machine's raw process spawn rate: how fast it runs `/bin/true` to completion with no
//! Hodei in between. Measured in the same run as the `/bin/true` jobs, so that both see the
//! same machine load; `throughput` measures it both before and after its jobs and pools the
//! two, because a shared VM's speed drifts by 10–20 % within a minute.

use std::time::{Duration, Instant};

use anyhow::Result;

pub struct SpawnRate {
    pub spawned: usize,
    pub secs: f64,
}

impl SpawnRate {
    /// Spawns per second (0 for an empty measurement).
    #[allow(clippy::cast_precision_loss)]
    pub fn per_s(&self) -> f64 {
        if self.secs > 0.0 {
            self.spawned as f64 / self.secs
        } else {
            0.0
        }
    }

    /// Both measurements as one: all their spawns over all their time.
    pub fn pooled(&self, other: &Self) -> Self {
        Self {
            spawned: self.spawned + other.spawned,
            secs: self.secs + other.secs,
        }
    }
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
    Ok(SpawnRate {
        spawned,
        secs: t0.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::SpawnRate;

    /// Pooling weighs each measurement by its length: a short slow one cannot halve the rate.
    #[test]
    fn pooled_rate_is_all_spawns_over_all_time() {
        let a = SpawnRate {
            spawned: 30_000,
            secs: 10.0,
        };
        let b = SpawnRate {
            spawned: 1000,
            secs: 1.0,
        };
        let p = a.pooled(&b);
        assert_eq!(p.spawned, 31_000);
        assert!((p.secs - 11.0).abs() < 1e-9);
        assert!((p.per_s() - 31_000.0 / 11.0).abs() < 1e-6);
        let none = SpawnRate {
            spawned: 0,
            secs: 0.0,
        };
        assert!(none.pooled(&none).per_s().abs() < f64::EPSILON);
    }
}
