//! `hodei up`, the README's one command: a server and two local agents in one process tree,
//! usable by the CLI, and all of it gone after Ctrl-C.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{HODEI, Proc, Scratch, free_port, pid_alive, wait_for};

#[test]
fn up_runs_a_server_and_two_agents_and_stops_them_on_ctrl_c() {
    let scratch = Scratch::new("up");
    let addr = format!("127.0.0.1:{}", free_port());
    let data = scratch.path("data");
    let mut up = Proc(
        Command::new(HODEI)
            .args(["up", "--listen", &addr, "--slots", "2", "--data-dir"])
            .arg(&data)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let cli = |args: &[&str]| {
        Command::new(HODEI)
            .args(args)
            .env("HODEI_SERVER", &addr)
            .env("HODEI_CA", data.join("ca.pem"))
            .output()
            .unwrap()
    };
    let workers = wait_for("two agents", Duration::from_secs(30), || {
        let out = cli(&["worker", "list", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v.as_array()?.len() == 2).then_some(v)
    });
    assert!(
        workers
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["state"] == "ready"),
        "{workers}"
    );
    let id =
        String::from_utf8(cli(&["job", "submit", "--", "echo", "hello from up"]).stdout).unwrap();
    let id = id.trim();
    assert!(
        cli(&["job", "wait", id, "--timeout", "30s"])
            .status
            .success()
    );
    assert_eq!(
        String::from_utf8(cli(&["job", "logs", id]).stdout).unwrap(),
        "hello from up\n"
    );

    // The agents are children of `hodei up`.
    let children: Vec<i32> =
        std::fs::read_to_string(format!("/proc/{}/task/{}/children", up.pid(), up.pid()))
            .unwrap()
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
    assert_eq!(children.len(), 2, "{children:?}");
    up.signal(nix::sys::signal::Signal::SIGINT);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    for c in children {
        wait_for("agent exit", Duration::from_secs(10), || {
            (!pid_alive(c)).then_some(())
        });
    }
}
