//! CPU time of the cluster's processes, from `/proc/<pid>/stat`: what a scenario cost per
//! job, a figure far steadier than jobs/s on a shared VM (it does not move with the time
//! other tenants take, only with the work done).

/// A process's CPU time, in seconds: its own (utime + stime) and that of its reaped
/// children (cutime + cstime: an agent's jobs).
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    pub own: f64,
    pub children: f64,
}

impl std::ops::Sub for Cpu {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Self {
            own: self.own - o.own,
            children: self.children - o.children,
        }
    }
}

impl std::ops::Add for Cpu {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self {
            own: self.own + o.own,
            children: self.children + o.children,
        }
    }
}

/// `pid`'s CPU so far; zero if it cannot be read (the process is gone).
pub fn cpu(pid: u32) -> Cpu {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Cpu::default();
    };
    // The command name is in parentheses and may hold spaces: fields count from the last ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return Cpu::default();
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of the man page, so utime..cstime (14..17) are at 11..14.
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let hz = match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        #[allow(clippy::cast_precision_loss)]
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    };
    #[allow(clippy::cast_precision_loss)]
    Cpu {
        own: (tick(11) + tick(12)) as f64 / hz,
        children: (tick(13) + tick(14)) as f64 / hz,
    }
}
