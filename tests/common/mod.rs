//! Real-process test harness: a `hodei server` and `hodei agent` processes on loopback, and
//! the `hodei` CLI. Every wait polls a condition against a deadline.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod tmpfs;

pub const HODEI: &str = env!("CARGO_BIN_EXE_hodei");

/// A scratch directory removed when the test passes (kept on failure for inspection).
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("hodei-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
    pub fn path(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Runs `f` on a current-thread runtime: raw QUIC tests drive their own connections.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Runs `hodei server --data-dir data <flags>` and asserts that it refuses to start with an
/// error containing `names`.
pub fn assert_server_refuses(data: &Path, flags: &[&str], names: &str) {
    let out = Command::new(HODEI)
        .args(["server", "--data-dir"])
        .arg(data)
        .args(flags)
        .output()
        .expect("run hodei server");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{flags:?} accepted: {out:?}");
    assert!(err.contains(names), "{flags:?}: {err}");
}

/// Waits until `f` returns Some, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills a child on drop so a failing test leaves no process behind.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> i32 {
        i32::try_from(self.0.id()).unwrap()
    }
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }
    /// Waits for exit with a deadline; returns the exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        wait_for("process exit", timeout, || self.0.try_wait().ok().flatten())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A server process and what the CLI needs to reach it.
pub struct Server {
    pub proc: Option<Proc>,
    pub data: PathBuf,
    pub addr: String,
    pub log: PathBuf,
    pub shards: usize,
    /// Extra `hodei server` flags.
    pub flags: Vec<String>,
}

impl Server {
    pub fn start(scratch: &Scratch, shards: usize) -> Self {
        let port = free_port();
        let mut s = Self {
            proc: None,
            data: scratch.path("data"),
            addr: format!("127.0.0.1:{port}"),
            log: scratch.path("server.log"),
            shards,
            flags: Vec::new(),
        };
        s.restart();
        s
    }

    /// A server with extra flags (e.g. short grace periods).
    pub fn start_with(scratch: &Scratch, shards: usize, flags: &[&str]) -> Self {
        let port = free_port();
        let mut s = Self {
            proc: None,
            data: scratch.path("data"),
            addr: format!("127.0.0.1:{port}"),
            log: scratch.path("server.log"),
            shards,
            flags: flags.iter().map(|f| (*f).to_owned()).collect(),
        };
        s.restart();
        s
    }

    pub fn spawn(&self, extra: &[&str]) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(HODEI)
            .args([
                "server",
                "--listen",
                &self.addr,
                "--shards",
                &self.shards.to_string(),
            ])
            .arg("--data-dir")
            .arg(&self.data)
            .args(&self.flags)
            .args(extra)
            .env("RUST_LOG", "info,hodei=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc(child)
    }

    /// (Re)starts the server process and waits until it answers.
    pub fn restart(&mut self) {
        self.proc = Some(self.spawn(&[]));
        wait_for("the server to answer", Duration::from_secs(30), || {
            self.ca().exists().then_some(())?;
            self.cli(&["worker", "list"]).status.success().then_some(())
        });
    }

    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal(nix::sys::signal::Signal::SIGKILL);
            p.wait_exit(Duration::from_secs(10));
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.data.join("ca.pem")
    }

    /// The CLI pointed at this server.
    fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(HODEI);
        cmd.args(args)
            .env("HODEI_SERVER", &self.addr)
            .env("HODEI_CA", self.ca())
            .env("RUST_LOG", "warn");
        cmd
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_command(args).output().unwrap()
    }

    /// Starts the CLI without waiting for it (killed on drop); its output is discarded.
    pub fn spawn_cli(&self, args: &[&str]) -> Proc {
        Proc(
            self.cli_command(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    /// Runs the CLI, asserting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "hodei {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    /// A raw QUIC client endpoint that trusts this server's CA, speaking `alpn` and
    /// presenting `identity` if given, and the server's address (call inside [`block_on`]).
    pub fn endpoint(
        &self,
        alpn: &[u8],
        identity: Option<&hodei_transport::ClientIdentity>,
    ) -> (quinn::Endpoint, std::net::SocketAddr) {
        let addr: std::net::SocketAddr = self.addr.parse().unwrap();
        let opts = hodei_transport::TransportOptions::default();
        let cfg = hodei_transport::client_config_with(&self.ca(), alpn, &opts, identity).unwrap();
        (hodei_transport::client_endpoint(addr, cfg).unwrap(), addr)
    }

    /// Joins as an agent from the test itself (for raw QUIC tests): the client identity.
    pub fn join_identity(&self) -> hodei_transport::ClientIdentity {
        use hodei_core::wire::{ALPN_CLIENT, ControlRequest, FromServer, Request};
        let token = self.join_token();
        block_on(async {
            let (key_pem, public_key) = hodei_transport::new_agent_key().unwrap();
            let (ep, addr) = self.endpoint(ALPN_CLIENT, None);
            let conn = hodei_transport::connect(&ep, addr).await.unwrap();
            let (send, recv) = conn.open_bi().await.unwrap();
            let mut w = hodei_transport::FrameWriter::new(send);
            w.send(&Request {
                token,
                body: ControlRequest::Join { public_key }.into(),
            })
            .await
            .unwrap();
            w.finish().unwrap();
            let mut r = hodei_transport::FrameReader::new(recv);
            match r.next::<FromServer>().await.unwrap() {
                Some(FromServer::Joined { cert_pem, .. }) => {
                    hodei_transport::ClientIdentity { cert_pem, key_pem }
                }
                other => panic!("join refused: {other:?}"),
            }
        })
    }

    /// A raw agent connection for protocol tests (call inside [`block_on`]): connects with
    /// `identity` and says `Hello` with one slot, as `worker` if given. Returns the endpoint
    /// (keep it alive), the connection, and its stream's writer and reader.
    pub async fn raw_hello(
        &self,
        identity: &hodei_transport::ClientIdentity,
        worker: Option<hodei_core::ids::WorkerId>,
    ) -> (
        quinn::Endpoint,
        quinn::Connection,
        hodei_transport::FrameWriter,
        hodei_transport::FrameReader,
    ) {
        use hodei_core::wire::{ALPN_AGENT, FromAgent, Hello, Resources};
        let (ep, addr) = self.endpoint(ALPN_AGENT, Some(identity));
        let conn = hodei_transport::connect(&ep, addr).await.unwrap();
        let (send, recv) = conn.open_bi().await.unwrap();
        let mut w = hodei_transport::FrameWriter::new(send);
        let r = hodei_transport::FrameReader::new(recv);
        let hello = Hello {
            worker,
            hostname: "raw".into(),
            resources: Resources {
                slots: 1,
                cpus: 1,
                memory: 1 << 30,
                labels: Vec::new(),
            },
            held: Vec::new(),
        };
        w.send(&FromAgent::Hello(hello)).await.unwrap();
        (ep, conn, w, r)
    }

    /// [`Server::raw_hello`] as a new worker, and its `Welcome` read: also returns the
    /// worker id.
    pub async fn raw_agent(
        &self,
        identity: &hodei_transport::ClientIdentity,
    ) -> (
        quinn::Endpoint,
        quinn::Connection,
        hodei_transport::FrameWriter,
        hodei_transport::FrameReader,
        String,
    ) {
        let (ep, conn, w, mut r) = self.raw_hello(identity, None).await;
        match r.next::<hodei_core::wire::ToAgent>().await.unwrap() {
            Some(hodei_core::wire::ToAgent::Welcome { worker, .. }) => {
                (ep, conn, w, r, worker.to_string())
            }
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    /// The state of worker `id` in `worker list`.
    pub fn worker_state(&self, id: &str) -> String {
        let v = self.json(&["worker", "list", "--json"]);
        v.as_array()
            .and_then(|ws| ws.iter().find(|w| w["id"] == id))
            .and_then(|w| w["state"].as_str())
            .unwrap_or("absent")
            .to_owned()
    }

    /// A join token for one agent.
    pub fn join_token(&self) -> String {
        self.ok(&[
            "token", "create", "--role", "agent", "--uses", "1", "--ttl", "1h",
        ])
        .trim()
        .to_owned()
    }

    pub fn agent(&self, scratch: &Scratch, name: &str, slots: u32, extra: &[&str]) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(scratch.path(&format!("{name}.log")))
            .unwrap();
        let child = Command::new(HODEI)
            .args([
                "agent",
                "--server",
                &self.addr,
                "--slots",
                &slots.to_string(),
            ])
            .arg("--ca")
            .arg(self.ca())
            .arg("--work-dir")
            .arg(scratch.path(name))
            .args(extra)
            // Joins once; a restarted agent with the same work dir reuses its certificate.
            .env("HODEI_JOIN_TOKEN", self.join_token())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc(child)
    }

    /// Waits until `n` workers are ready.
    pub fn wait_workers(&self, n: usize) {
        wait_for(
            &format!("{n} ready workers"),
            Duration::from_secs(30),
            || {
                let v = self.json(&["worker", "list", "--json"]);
                let ready = v
                    .as_array()?
                    .iter()
                    .filter(|w| w["state"] == "ready" || w["state"] == "busy")
                    .count();
                (ready >= n).then_some(())
            },
        );
    }

    pub fn submit(&self, args: &[&str]) -> String {
        let mut a = vec!["job", "submit"];
        a.extend_from_slice(args);
        self.ok(&a).trim().to_owned()
    }

    pub fn job(&self, id: &str) -> serde_json::Value {
        self.json(&["job", "get", id, "--json"])
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Waits (at most 10 s) until `conn` is closed, and returns why.
pub async fn closed(conn: &quinn::Connection) -> quinn::ConnectionError {
    tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("the connection was not closed within 10 s")
}

pub fn pid_alive(pid: i32) -> bool {
    // A zombie still has /proc/<pid>; count it as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            != Some("Z")
    })
}

pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl Server {
    /// Waits until a job satisfies `f`, returning its JSON.
    pub fn wait_job(
        &self,
        id: &str,
        what: &str,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_for(what, Duration::from_secs(60), || {
            let j = self.job(id);
            f(&j).then_some(j)
        })
    }

    /// The worker id of the agent whose log says it registered.
    pub fn worker_of(scratch: &Scratch, agent: &str) -> String {
        wait_for("the agent to register", Duration::from_secs(30), || {
            let log = std::fs::read_to_string(scratch.path(&format!("{agent}.log"))).ok()?;
            let line = log.lines().find(|l| l.contains("registered"))?;
            let plain: String = strip_ansi(line);
            plain
                .split("worker=")
                .nth(1)
                .map(|w| w.split_whitespace().next().unwrap_or("").to_owned())
        })
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, '\u{1b}') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

/// Resident memory of a process, in KiB (0 once it is gone).
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
