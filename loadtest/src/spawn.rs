//! `--spawn-server`: a throwaway `hodei server` on 127.0.0.1 with a temporary data dir (as in
//! `bench/src/cluster.rs`), its log in that dir, stopped (SIGTERM, then SIGKILL) and removed
//! at the end. Its pid is what /proc is read for.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hodei_core::wire::ALPN_CLIENT;
use hodei_transport::TransportOptions;

/// How long the server may take to create its CA and answer a handshake.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long it gets to stop after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

pub struct SpawnedServer {
    child: Child,
    dir: PathBuf,
    pub addr: SocketAddr,
    pub ca: PathBuf,
    log: PathBuf,
    /// Set once it was seen to exit.
    exited: Option<ExitStatus>,
}

/// How the server ended, and what its log said.
pub struct ServerEnd {
    /// Exit status, or why there is none.
    pub status: String,
    /// It exited by itself during the run (it was not stopped by us).
    pub died: bool,
    /// Lines at WARN or ERROR level.
    pub warnings: usize,
    /// The last few of them.
    pub tail: Vec<String>,
}

impl SpawnedServer {
    /// Starts the server and waits until it answers a client handshake.
    pub fn start(hodei: &Path, shards: Option<usize>, extra: &[String]) -> Result<Self> {
        if !hodei.is_file() {
            bail!(
                "{} is not a file: build it with `cargo build --release -p hodei`",
                hodei.display()
            );
        }
        let dir = std::env::temp_dir().join(format!("hodei-loadtest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .context("cannot pick a free UDP port")?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = dir.join("server.log");
        let log_file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = Command::new(hodei);
        cmd.arg("server")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(dir.join("data"));
        if let Some(n) = shards {
            cmd.arg("--shards").arg(n.to_string());
        }
        cmd.args(extra)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {} server", hodei.display()))?;
        let mut server = Self {
            child,
            ca: dir.join("data/ca.pem"),
            dir,
            addr,
            log,
            exited: None,
        };
        if let Err(e) = server.wait_ready() {
            let end = server.stop();
            let tail = end.tail.join("\n");
            bail!("{e:#}; server {}; its last log lines:\n{tail}", end.status);
        }
        Ok(server)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.ca.exists() {
            if self.exited().is_some() || Instant::now() > deadline {
                bail!("the server did not create {}", self.ca.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let opts = TransportOptions {
            idle_timeout: Duration::from_secs(1),
            ..TransportOptions::default()
        };
        let cfg = hodei_transport::client_config(&self.ca, ALPN_CLIENT, &opts)?;
        let addr = self.addr;
        loop {
            let ok = rt.block_on(async {
                let ep = hodei_transport::client_endpoint(addr, cfg.clone())?;
                let conn = hodei_transport::connect(&ep, addr).await?;
                conn.close(0u32.into(), b"ready check");
                ep.wait_idle().await;
                Ok::<_, anyhow::Error>(())
            });
            match ok {
                Ok(()) => return Ok(()),
                Err(e) if self.exited().is_some() || Instant::now() > deadline => {
                    return Err(e.context("the server did not answer a handshake"));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    pub fn pid(&self) -> Option<i32> {
        i32::try_from(self.child.id()).ok()
    }

    /// Its exit status if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Stops it (if it still runs), reads its log and removes the temporary dir.
    pub fn stop(mut self) -> ServerEnd {
        let died = self.exited().is_some();
        if !died && let Some(pid) = self.pid() {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while self.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if self.exited().is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        let status = match self.exited {
            Some(s) => s.to_string(),
            None if !died => "killed after it ignored SIGTERM".to_owned(),
            None => "unknown".to_owned(),
        };
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let bad: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect();
        let tail = if died {
            text.lines().rev().take(10).collect::<Vec<_>>()
        } else {
            bad.iter().rev().take(5).copied().collect()
        };
        let end = ServerEnd {
            status,
            died,
            warnings: bad.len(),
            tail: tail.into_iter().rev().map(str::to_owned).collect(),
        };
        let _ = std::fs::remove_dir_all(&self.dir);
        end
    }
}
