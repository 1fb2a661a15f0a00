//! Completions over time: job finish times (wall-clock µs from the job records) counted per
//! interval, as a rate, for the throughput-over-time plots.

use std::time::Duration;

use crate::plot::Line;

/// About 200 points over `span`, each interval at least 100 ms (finer is mostly noise).
pub fn auto_interval(span: Duration) -> Duration {
    let ms = u64::try_from(span.as_millis() / 200).unwrap_or(u64::MAX);
    Duration::from_millis(ms.max(100))
}

/// Jobs finished per second in each `interval` from `t0` (µs) until the last finish.
pub fn per_interval(finished_us: &[u64], t0_us: u64, interval: Duration) -> Vec<f64> {
    let step = u64::try_from(interval.as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    let mut counts: Vec<u64> = Vec::new();
    for &f in finished_us {
        let i = usize::try_from(f.saturating_sub(t0_us) / step).unwrap_or(usize::MAX);
        if i >= counts.len() {
            counts.resize(i + 1, 0);
        }
        counts[i] += 1;
    }
    #[allow(clippy::cast_precision_loss)]
    counts
        .into_iter()
        .map(|c| c as f64 / interval.as_secs_f64())
        .collect()
}

/// A plot line of [`per_interval`] rates, each at the middle of its interval (seconds).
pub fn line(name: &str, rates: &[f64], interval: Duration) -> Line {
    let w = interval.as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let points = rates
        .iter()
        .enumerate()
        .map(|(i, r)| ((i as f64 + 0.5) * w, *r))
        .collect();
    Line {
        name: name.to_owned(),
        points,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finishes_are_counted_per_interval() {
        let i = Duration::from_millis(100);
        // t0 = 1 s; finishes at +0.05, +0.06, +0.25 (and one before t0, counted first).
        let r = per_interval(&[1_050_000, 1_060_000, 1_250_000, 900_000], 1_000_000, i);
        assert_eq!(r, vec![30.0, 0.0, 10.0]);
        assert_eq!(auto_interval(Duration::from_secs(10)), i);
        assert_eq!(
            auto_interval(Duration::from_secs(60)),
            Duration::from_millis(300)
        );
    }
}
