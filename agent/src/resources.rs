//! What this host offers to jobs: CPUs and memory (sysinfo), and its load.

/// CPUs, total memory in bytes.
#[must_use]
pub fn detect() -> (u32, u64) {
    let cpus = std::thread::available_parallelism()
        .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    (cpus, sys.total_memory())
}

/// 1-minute load average × 100.
#[must_use]
pub fn load() -> u32 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let l = (sysinfo::System::load_average().one * 100.0) as u32;
    l
}

/// This host's name.
#[must_use]
pub fn hostname() -> String {
    sysinfo::System::host_name().unwrap_or_else(|| "unknown".to_owned())
}
