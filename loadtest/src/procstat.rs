//! Figures read from /proc: a process's CPU time and memory, the kernel's UDP error
//! counters, and the machine (cores, kernel, CPU model, memory).

use serde_json::{Value, json};

/// One reading of a process.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    /// utime + stime, in seconds.
    pub cpu_s: f64,
    /// VmRSS, in MiB.
    pub rss_mib: f64,
    /// VmHWM (peak RSS), in MiB.
    pub hwm_mib: f64,
    /// Threads.
    pub threads: u64,
    /// When it was taken.
    pub at: Option<std::time::Instant>,
}

/// Clock ticks per second of /proc's CPU times.
fn clk_tck() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        #[allow(clippy::cast_precision_loss)]
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

/// Reads `/proc/<pid>` (`None`: this process); `None` if the process is gone.
pub fn sample(pid: Option<i32>) -> Option<ProcSample> {
    let dir = pid.map_or_else(|| "/proc/self".to_owned(), |p| format!("/proc/{p}"));
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields count from the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of the man page, so utime (14) and stime (15) are at 11, 12.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    #[allow(clippy::cast_precision_loss)]
    let cpu_s = (ticks(11)? + ticks(12)?) as f64 / clk_tck();
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    #[allow(clippy::cast_precision_loss)]
    let kib = |name: &str| field(name).map_or(0.0, |k| k as f64 / 1024.0);
    Some(ProcSample {
        cpu_s,
        rss_mib: kib("VmRSS:"),
        hwm_mib: kib("VmHWM:"),
        threads: field("Threads:").unwrap_or(0),
        at: Some(std::time::Instant::now()),
    })
}

/// CPU use between two samples, in % of one core (200 % = two cores busy).
pub fn cpu_pct(from: &ProcSample, to: &ProcSample) -> Option<f64> {
    let wall = to.at?.checked_duration_since(from.at?)?.as_secs_f64();
    (wall > 0.0).then(|| (to.cpu_s - from.cpu_s) / wall * 100.0)
}

/// The kernel's UDP counters (whole machine): `InErrors`, `RcvbufErrors`, `SndbufErrors`.
#[derive(Clone, Copy, Debug, Default)]
pub struct UdpErrors {
    pub in_errors: u64,
    pub rcvbuf_errors: u64,
    pub sndbuf_errors: u64,
}

impl UdpErrors {
    pub fn read() -> Self {
        let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
        let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
        let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
            return Self::default();
        };
        let get = |name: &str| {
            names
                .split_whitespace()
                .position(|n| n == name)
                .and_then(|i| values.split_whitespace().nth(i))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Self {
            in_errors: get("InErrors"),
            rcvbuf_errors: get("RcvbufErrors"),
            sndbuf_errors: get("SndbufErrors"),
        }
    }

    pub fn since(self, before: Self) -> Self {
        Self {
            in_errors: self.in_errors.saturating_sub(before.in_errors),
            rcvbuf_errors: self.rcvbuf_errors.saturating_sub(before.rcvbuf_errors),
            sndbuf_errors: self.sndbuf_errors.saturating_sub(before.sndbuf_errors),
        }
    }
}

/// Datagrams the kernel dropped on the UDP sockets of a process (`None`: this one),
/// because their receive buffer was full: the `drops` column of /proc/net/udp{,6} for the
/// sockets among its open files. Counted since each socket was created.
pub fn udp_drops(pid: Option<i32>) -> Option<u64> {
    let dir = pid.map_or_else(|| "/proc/self".to_owned(), |p| format!("/proc/{p}"));
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("{dir}/fd"))
        .ok()?
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .collect();
    let mut drops = 0;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
            if let (Some(inode), Some(d)) = (f.get(9), f.get(12))
                && inodes.contains(*inode)
            {
                drops += d.parse::<u64>().unwrap_or(0);
            }
        }
    }
    Some(drops)
}

/// The machine a result was measured on.
pub fn machine() -> Value {
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_owned();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    let mem_gib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0.0, |kib| {
            #[allow(clippy::cast_precision_loss)]
            let g = kib as f64 / (1024.0 * 1024.0);
            (g * 10.0).round() / 10.0
        });
    let load = read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    json!({"cores": cores, "kernel": kernel, "cpu": cpu, "mem_gib": mem_gib, "loadavg_at_start": load})
}

/// Raises the soft open-files limit to the hard limit; returns the soft limit in force.
pub fn raise_nofile() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = sample(None);
        assert!(s.is_some_and(|s| s.rss_mib > 0.0 && s.threads >= 1 && s.cpu_s >= 0.0));
        let pid = i32::try_from(std::process::id()).unwrap_or(0);
        assert!(sample(Some(pid)).is_some());
        assert!(sample(Some(i32::MAX)).is_none());
    }
}
