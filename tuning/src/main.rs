//! `hodei-tuning`: prints the settings of this machine that matter to a Hodei server and
//! what to change. It reads only (/proc, /sys); it never changes a setting. The measured
//! effect of each knob is in `tuning/README.md`.

use std::process::ExitCode;

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

fn read_u64(path: &str) -> Option<u64> {
    read(path)?.split_whitespace().next()?.parse().ok()
}

struct Check {
    name: &'static str,
    current: String,
    advice: Option<String>,
}

fn main() -> ExitCode {
    let mut checks = Vec::new();
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    checks.push(Check {
        name: "cores (default --shards)",
        current: cores.to_string(),
        advice: None,
    });
    // The server asks for 16 MiB UDP buffers (--udp-buffer); the kernel caps it at rmem_max.
    let want: u64 = 16 << 20;
    for (key, path) in [
        ("net.core.rmem_max", "/proc/sys/net/core/rmem_max"),
        ("net.core.wmem_max", "/proc/sys/net/core/wmem_max"),
    ] {
        let v = read_u64(path);
        checks.push(Check {
            name: key,
            current: v.map_or_else(|| "unreadable".to_owned(), |v| v.to_string()),
            advice: v.filter(|v| *v < want).map(|_| format!("sysctl -w {key}={want}  (the server's --udp-buffer is capped by it; small buffers drop handshakes when thousands of agents connect, and heartbeats while a shard is behind)")),
        });
    }
    let files = read("/proc/sys/fs/file-max");
    checks.push(Check {
        name: "fs.file-max",
        current: files.unwrap_or_else(|| "unreadable".to_owned()),
        advice: None,
    });
    let governor = read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor");
    checks.push(Check {
        name: "cpu0 scaling governor",
        current: governor
            .clone()
            .unwrap_or_else(|| "none (VM or fixed)".to_owned()),
        advice: governor
            .filter(|g| g != "performance")
            .map(|_| "use the performance governor for stable latency".to_owned()),
    });
    println!("{:<32} {:<20} advice", "setting", "current");
    let mut advised = 0;
    for c in &checks {
        println!(
            "{:<32} {:<20} {}",
            c.name,
            c.current,
            c.advice.as_deref().unwrap_or("ok")
        );
        advised += usize::from(c.advice.is_some());
    }
    println!();
    println!(
        "hodei server knobs: --shards N (default {cores}), --udp-buffer BYTES (16 MiB), --gso (off: on this VM's loopback GSO costs ~80 us per round trip), --heartbeat (1s)."
    );
    if advised > 0 {
        println!("{advised} setting(s) could be improved (see advice above).");
    }
    ExitCode::SUCCESS
}
