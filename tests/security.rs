//! Security with real processes: API tokens and roles, secrets (sealed at rest, delivered
//! to the job only, masked in `hodei job logs`), and the tamper-evident audit log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use hodei_core::log_block;
use std::process::Command;
use std::time::Duration;

use common::{HODEI, Scratch, Server, block_on, wait_for};

/// Runs the CLI with an explicit token (and no admin.token fallback: HODEI_CA points at the
/// real CA, but `--token` wins).
fn cli_as(s: &Server, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(HODEI)
        .args(args)
        .env("HODEI_SERVER", &s.addr)
        .env("HODEI_CA", s.ca())
        .env("HODEI_TOKEN", token)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn text(o: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn token(s: &Server, role: &str, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["token", "create", "--role", role, "--name", name];
    args.extend_from_slice(extra);
    s.ok(&args).trim().to_owned()
}

#[test]
fn roles_and_tokens_are_enforced() {
    let scratch = Scratch::new("sec-roles");
    let s = Server::start(&scratch, 2);
    let _a = s.agent(&scratch, "a", 2, &[]);
    s.wait_workers(1);
    // The admin token was written 0600 on first start.
    let mode = std::fs::metadata(s.data.join("admin.token"))
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap();
    assert_eq!(mode, 0o600);

    // No valid token: refused, non-zero, and the server logs why.
    let out = cli_as(&s, "hodei_0000000000000001_xxxx", &["job", "list"]);
    let (_, err) = text(&out);
    assert!(!out.status.success());
    assert!(err.contains("refused"), "{err}");
    wait_for(
        "the refusal in the server log",
        Duration::from_secs(10),
        || {
            s.log_text()
                .contains("refused a client request")
                .then_some(())
        },
    );

    // A reader may read but not submit; the error names the missing permission.
    let reader = token(&s, "reader", "rita", &[]);
    assert!(cli_as(&s, &reader, &["job", "list"]).status.success());
    let out = cli_as(&s, &reader, &["job", "submit", "--", "true"]);
    let (_, err) = text(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("role reader lacks the submit permission"),
        "{err}"
    );
    let out = cli_as(&s, &reader, &["token", "create", "--role", "admin"]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("manage-tokens"), "{:?}", text(&out));
    // A reader may read the server's figures, but only an operator may restart them.
    assert!(cli_as(&s, &reader, &["stats"]).status.success());
    let out = cli_as(&s, &reader, &["stats", "--reset"]);
    assert!(!out.status.success());
    assert!(
        text(&out)
            .1
            .contains("role reader lacks the manage-workers permission"),
        "{:?}",
        text(&out)
    );

    // Submitters see and cancel only their own jobs.
    let alice = token(&s, "submitter", "alice", &[]);
    let bob = token(&s, "submitter", "bob", &[]);
    let out = cli_as(&s, &alice, &["job", "submit", "--", "echo", "hi"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let id = text(&out).0.trim().to_owned();
    let out = cli_as(&s, &bob, &["job", "get", &id]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("no job"), "{:?}", text(&out));
    assert!(!cli_as(&s, &bob, &["job", "cancel", &id]).status.success());
    let out = cli_as(&s, &bob, &["job", "list", "--json"]);
    assert!(!text(&out).0.contains(&id), "bob sees alice's job");
    let out = cli_as(&s, &alice, &["job", "list", "--json"]);
    assert!(text(&out).0.contains(&id), "alice does not see her job");
    let job = s.wait_job(&id, "alice's job to finish", |j| j["state"] == "succeeded");
    assert_eq!(job["owner"], "alice");
    // Submitters cannot read the event stream, which is everyone's.
    assert!(!cli_as(&s, &alice, &["events"]).status.success());

    // An expired token stops working.
    let short = token(&s, "reader", "brief", &["--ttl", "1s"]);
    wait_for("the token to expire", Duration::from_secs(10), || {
        let out = cli_as(&s, &short, &["job", "list"]);
        (!out.status.success() && text(&out).1.contains("expired")).then_some(())
    });
    // A revoked one at once.
    let listed = s.ok(&["token", "list", "--json"]);
    let rita_id = listed
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|t| t["name"] == "rita")
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .unwrap();
    s.ok(&["token", "revoke", &rita_id]);
    let out = cli_as(&s, &reader, &["job", "list"]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("revoked"), "{:?}", text(&out));
    // Tokens are stored hashed: no token text in the store.
    let store = dump_dir(&s.data.join("store"));
    for t in [&reader, &alice, &bob] {
        // `hodei_<id>_<secret>`: the secret is URL-safe base64 and may hold `_` itself, so
        // split off the first two parts only (the last `_` could leave a 2-byte "secret"
        // that random store bytes contain by chance).
        let secret = t.splitn(3, '_').nth(2).unwrap();
        assert_eq!(secret.len(), 43, "{t}");
        assert!(
            !contains(&store, secret.as_bytes()),
            "a token secret is in the store"
        );
    }
}

#[test]
fn secrets_reach_only_their_job_and_are_masked() {
    let scratch = Scratch::new("sec-secrets");
    let s = Server::start(&scratch, 2);
    let _a = s.agent(&scratch, "a", 2, &[]);
    s.wait_workers(1);
    let value = "s3cr3t-Value-0123456789";
    // Value on stdin, never a flag.
    let mut child = Command::new(HODEI)
        .args(["secret", "set", "db_pass"])
        .env("HODEI_SERVER", &s.addr)
        .env("HODEI_CA", s.ca())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), value.as_bytes()).unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    assert!(s.ok(&["secret", "list"]).contains("db_pass"));

    // A job that prints it (raw, split across writes, base64) through the files delivery.
    let script = scratch.path("leak.sh");
    std::fs::write(
        &script,
        "V=$(cat \"$HODEI_SECRETS_DIR/db_pass\")\n\
         echo \"raw: $V\"\n\
         printf 'split: %s' \"${V:0:7}\"; sleep 0.2; printf '%s\\n' \"${V:7}\"\n\
         printf %s \"$V\" | base64\n\
         env | grep -c s3cr3t || true\n",
    )
    .unwrap();
    let id = s.submit(&["--secret", "db_pass", "--script", script.to_str().unwrap()]);
    s.wait_job(&id, "the files job to succeed", |j| {
        j["state"] == "succeeded"
    });
    let logs = s.ok(&["job", "logs", &id]);
    assert!(!logs.contains(value), "secret in logs: {logs}");
    assert!(logs.contains("raw: [REDACTED:db_pass]"), "{logs}");
    assert!(logs.contains("split: [REDACTED:db_pass]"), "{logs}");
    assert!(
        !logs.contains("czNjcjN0LVZhbHVlLTAxMjM0NTY3ODk"),
        "base64 leaked: {logs}"
    );
    // `env | grep -c` printed 0: no environment variable holds it.
    assert!(logs.lines().any(|l| l.trim() == "0"), "{logs}");

    // Stdin delivery: one JSON object.
    let id = s.submit(&[
        "--secret",
        "db_pass",
        "--secret-delivery",
        "stdin",
        "--",
        "cat",
    ]);
    s.wait_job(&id, "the stdin job to succeed", |j| {
        j["state"] == "succeeded"
    });
    let logs = s.ok(&["job", "logs", &id]);
    assert!(
        logs.contains("{\"db_pass\":\"[REDACTED:db_pass]\"}"),
        "{logs}"
    );

    // An unknown secret is refused at submit.
    let out = s.cli(&["job", "submit", "--secret", "nope", "--", "true"]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("unknown secret"), "{:?}", text(&out));

    // Never in clear in the store or the server's log.
    let store = dump_dir(&s.data.join("store"));
    assert!(
        !contains(&store, value.as_bytes()),
        "secret in clear in the store"
    );
    assert!(!s.log_text().contains(value), "secret in the server log");
    s.ok(&["secret", "rm", "db_pass"]);
    assert!(!s.ok(&["secret", "list"]).contains("db_pass"));
}

#[test]
fn audit_log_records_who_did_what_and_detects_tampering() {
    let scratch = Scratch::new("sec-audit");
    let mut s = Server::start(&scratch, 2);
    let _a = s.agent(&scratch, "a", 2, &[]);
    s.wait_workers(1);
    let alice = token(&s, "submitter", "alice", &[]);
    let out = cli_as(&s, &alice, &["job", "submit", "--", "true"]);
    let id = text(&out).0.trim().to_owned();
    s.wait_job(&id, "the job to succeed", |j| j["state"] == "succeeded");
    let records = s.ok(&["audit", "--job", &id, "--json"]);
    let recs: Vec<serde_json::Value> = records
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = recs.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"job.pending"), "{actions:?}");
    assert!(actions.contains(&"job.succeeded"), "{actions:?}");
    let pending = recs.iter().find(|r| r["action"] == "job.pending").unwrap();
    assert_eq!(pending["actor"], "alice");
    assert!(
        s.ok(&["audit", "--actor", "admin"])
            .contains("token.create")
    );
    assert!(s.ok(&["audit", "verify"]).contains("intact"));

    // Stop cleanly, edit one stored record, start again: verify names it.
    let mut p = s.proc.take().unwrap();
    p.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(20)).success());
    let edited = tamper(&s.data.join("store"));
    s.restart();
    let out = s.cli(&["audit", "verify"]);
    let (_, err) = text(&out);
    assert!(!out.status.success(), "tampering not detected");
    assert!(
        err.contains(&format!("record {edited}:")) && err.contains("edited"),
        "{err}"
    );
}

/// Changes one letter of the actor of the first record, from the third of a chain on, that
/// names one; returns its seq. Records are stored in blocks of consecutive records under the
/// first one's key (`hodei_core::log_block`).
fn tamper(store: &std::path::Path) -> u64 {
    let db = fjall::Database::builder(store).open().unwrap();
    let audit = db
        .keyspace("audit", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    let all: Vec<(Vec<u8>, Vec<u8>)> = audit
        .iter()
        .map(|kv| {
            let (k, v) = kv.into_inner().unwrap();
            (k.to_vec(), v.to_vec())
        })
        .collect();
    for (k, v) in all {
        let first = u64::from_be_bytes(k[2..10].try_into().unwrap());
        let entries = log_block::entries(&v).unwrap();
        for (i, e) in entries.iter().enumerate() {
            let seq = first + i as u64;
            let found = [&b"alice"[..], b"agent@", b"server", b"admin"]
                .iter()
                .find_map(|n| e.windows(n.len()).position(|w| w == *n));
            let (Some(at), true) = (found, seq >= 2) else {
                continue;
            };
            // The entry's place inside the stored value.
            let at = e.as_ptr() as usize - v.as_ptr() as usize + at;
            let mut edited = v.clone();
            edited[at] = edited[at].to_ascii_uppercase();
            audit.insert(k, edited).unwrap();
            db.persist(fjall::PersistMode::SyncAll).unwrap();
            return seq;
        }
    }
    panic!("no audit record from the third on names an actor");
}

fn dump_dir(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for e in walk(dir) {
        if let Ok(b) = std::fs::read(&e) {
            all.extend_from_slice(&b);
        }
    }
    all
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Runs `hodei agent`, which should refuse to start; returns its stderr. An agent that
/// does start is killed and fails the test (never a hang).
fn agent_refuses(s: &Server, scratch: &Scratch, name: &str, join: Option<&str>) -> String {
    let err_path = scratch.path(&format!("{name}.err"));
    let mut cmd = Command::new(HODEI);
    cmd.args(["agent", "--server", &s.addr, "--slots", "1"])
        .arg("--ca")
        .arg(s.ca())
        .arg("--work-dir")
        .arg(scratch.path(name))
        .env_remove("HODEI_JOIN_TOKEN")
        .env("RUST_LOG", "warn")
        .stderr(std::fs::File::create(&err_path).unwrap());
    if let Some(t) = join {
        cmd.args(["--join", t]);
    }
    let mut child = common::Proc(cmd.spawn().unwrap());
    let status = wait_for("the agent to exit", Duration::from_secs(20), || {
        child.0.try_wait().unwrap()
    });
    assert!(!status.success(), "the agent started");
    std::fs::read_to_string(&err_path).unwrap()
}

fn now_ms() -> u64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    u64::try_from(d.as_millis()).unwrap()
}

/// When the certificate an agent in `work_dir` holds now expires (its `identity.json`).
fn first_cert_expiry(work_dir: &std::path::Path) -> u64 {
    let meta = std::fs::read_to_string(work_dir.join("identity.json")).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
    meta["expires_at_ms"].as_u64().unwrap()
}

/// Agents join with a token and then connect with mTLS only; each refusal says why; the
/// certificate is renewed, and after the first one expired the agent comes back to a
/// restarted server with the renewed one; server certificate rotation and worker revocation.
#[test]
fn agents_join_with_mtls_and_refusals_are_explained() {
    let scratch = Scratch::new("sec-mtls");
    let mut s = Server::start_with(&scratch, 2, &["--agent-cert-ttl", "10s"]);

    // No certificate and no token: the agent says how to join.
    let err = agent_refuses(&s, &scratch, "nojoin", None);
    assert!(err.contains("--join"), "{err}");
    // A used-up token.
    let once = s.join_token();
    let mut first = Command::new(HODEI);
    first
        .args([
            "agent", "--server", &s.addr, "--slots", "1", "--join", &once,
        ])
        .arg("--ca")
        .arg(s.ca())
        .arg("--work-dir")
        .arg(scratch.path("first"))
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(scratch.path("first.log")).unwrap());
    let _first = common::Proc(first.spawn().unwrap());
    s.wait_workers(1);
    // The certificate it joined with; the renewed ones come later.
    let first_expiry = first_cert_expiry(&scratch.path("first"));
    let err = agent_refuses(&s, &scratch, "second", Some(&once));
    assert!(err.contains("no uses left"), "{err}");
    // An expired token.
    let brief = s
        .ok(&["token", "create", "--role", "agent", "--ttl", "1s"])
        .trim()
        .to_owned();
    wait_for("the join token to expire", Duration::from_secs(10), || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let listed = s.ok(&["token", "list", "--json"]);
        listed
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .any(|t| {
                t["expires_at_ms"]
                    .as_u64()
                    .is_some_and(|e| u128::from(e) <= now)
            })
            .then_some(())
    });
    let err = agent_refuses(&s, &scratch, "late", Some(&brief));
    assert!(err.contains("expired"), "{err}");
    // A reader's token cannot join.
    let reader = token(&s, "reader", "rita", &[]);
    let err = agent_refuses(&s, &scratch, "reader", Some(&reader));
    assert!(err.contains("join"), "{err}");

    // A QUIC client speaking the agent protocol without a certificate is cut off, and the
    // server log says why.
    block_on(async {
        let (ep, addr) = s.endpoint(hodei_core::wire::ALPN_AGENT, None);
        let conn = hodei_transport::connect(&ep, addr).await.unwrap();
        common::closed(&conn).await;
    });
    wait_for(
        "the no-certificate refusal in the log",
        Duration::from_secs(10),
        || s.log_text().contains("no client certificate").then_some(()),
    );

    // A certificate from another server's CA fails the handshake.
    let other_scratch = Scratch::new("sec-mtls-other");
    let other = Server::start(&other_scratch, 1);
    let foreign = other.agent(&other_scratch, "foreign", 1, &[]);
    other.wait_workers(1);
    drop(foreign);
    let mut cmd = Command::new(HODEI);
    cmd.args(["agent", "--server", &s.addr, "--slots", "1"])
        .arg("--ca")
        .arg(s.ca())
        .arg("--work-dir")
        .arg(other_scratch.path("foreign"))
        .env_remove("HODEI_JOIN_TOKEN")
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::null());
    let _foreign = common::Proc(cmd.spawn().unwrap());
    wait_for(
        "the foreign certificate's refusal",
        Duration::from_secs(20),
        || {
            let log = s.log_text();
            (log.contains("handshake failed") && log.contains("invalid peer certificate"))
                .then_some(())
        },
    );

    // The certificate is renewed (10 s life, renewed at 55-75 % of it) while a job runs on;
    // once the first certificate has expired, and just after a renewal (so the certificate
    // the agent holds outlives the outage), the server restarts, and the agent's reconnect
    // uses the renewed one: the job is re-attached and ends at its first attempt.
    let gate = scratch.path("gate");
    let id = s.submit(&[
        "--",
        "sh",
        "-c",
        &format!("while [ ! -e {} ]; do sleep 0.05; done", gate.display()),
    ]);
    s.wait_job(&id, "the job to run", |j| j["state"] == "running");
    let renewals = || {
        std::fs::read_to_string(scratch.path("first.log"))
            .unwrap_or_default()
            .matches("agent certificate renewed")
            .count()
    };
    wait_for(
        "the first certificate to expire",
        Duration::from_secs(30),
        || (now_ms() > first_expiry).then_some(()),
    );
    let before = renewals();
    wait_for(
        "a renewal after the first certificate expired",
        Duration::from_secs(30),
        || (renewals() > before).then_some(()),
    );
    s.kill9();
    s.restart();
    let reattached = |j: &serde_json::Value| {
        j["state"] == "running"
            && j["attempts"] == 1
            && s.worker_state(j["worker"].as_str().unwrap_or("")) != "absent"
    };
    s.wait_job(
        &id,
        "the job to be re-attached after the restart",
        reattached,
    );
    std::fs::write(&gate, "").unwrap();
    let job = s.wait_job(&id, "the job to succeed across the renewal", |j| {
        j["state"] == "succeeded" || j["state"] == "failed"
    });
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 1, "the job was retried: {job}");
    assert!(s.ok(&["audit"]).contains("agent.renew"));

    // The server rotates its certificate without a restart; clients keep working.
    let before = std::fs::read(s.data.join("server.pem")).unwrap();
    s.ok(&["token", "rotate-server-cert"]);
    assert_ne!(before, std::fs::read(s.data.join("server.pem")).unwrap());
    s.ok(&["job", "list"]);
    let id = s.submit(&["--", "true"]);
    s.wait_job(&id, "a job after the rotation", |j| {
        j["state"] == "succeeded"
    });

    // Revoking the worker cuts its agent off at once.
    let workers = s.json(&["worker", "list", "--json"]);
    let wid = workers
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["state"] == "ready" || w["state"] == "busy")
        .map(|w| w["id"].as_str().unwrap().to_owned())
        .unwrap();
    s.ok(&["worker", "revoke", &wid]);
    wait_for(
        "the revoked agent to be refused",
        Duration::from_secs(20),
        || s.log_text().contains("is revoked").then_some(()),
    );
    wait_for(
        "the revoked worker to be disconnected",
        Duration::from_secs(20),
        || {
            let ws = s.json(&["worker", "list", "--json"]);
            ws.as_array()?
                .iter()
                .any(|w| w["id"] == wid.as_str() && w["state"] != "ready" && w["state"] != "busy")
                .then_some(())
        },
    );
}

/// An agent's certificate cannot be used to register as another agent's worker (and take
/// over its jobs): the connection is closed and the server says why.
#[test]
fn a_certificate_cannot_claim_another_agents_worker() {
    let scratch = Scratch::new("sec-claim");
    let s = Server::start(&scratch, 1);
    let _a = s.agent(&scratch, "a", 1, &[]);
    s.wait_workers(1);
    let victim = Server::worker_of(&scratch, "a");
    let mallory = s.join_identity();
    block_on(async {
        let (_ep, conn, _w, _r) = s.raw_hello(&mallory, Some(victim.parse().unwrap())).await;
        // Closed, or the server kept a connection claiming another agent's worker.
        let reason = common::closed(&conn).await;
        assert!(reason.to_string().contains("another agent"), "{reason}");
    });
    wait_for("the refusal in the log", Duration::from_secs(10), || {
        s.log_text().contains("belongs to").then_some(())
    });
    // The real agent is still its worker.
    let ws = s.json(&["worker", "list", "--json"]);
    assert!(
        ws.as_array()
            .unwrap()
            .iter()
            .any(|w| w["id"] == victim.as_str() && w["hostname"] != "mallory")
    );
}

/// The worker's owner is kept across a server restart: with its agent gone, another
/// agent's certificate still cannot register as that worker (and re-attach its jobs).
#[test]
fn a_worker_stays_its_agents_after_a_restart() {
    let scratch = Scratch::new("sec-claim-restart");
    let mut s = Server::start(&scratch, 1);
    let mut a = s.agent(&scratch, "a", 1, &[]);
    s.wait_workers(1);
    let victim = Server::worker_of(&scratch, "a");
    a.signal(nix::sys::signal::Signal::SIGKILL);
    a.wait_exit(Duration::from_secs(10));
    s.restart();
    let mallory = s.join_identity();
    block_on(async {
        let (_ep, conn, _w, _r) = s.raw_hello(&mallory, Some(victim.parse().unwrap())).await;
        let reason = common::closed(&conn).await;
        assert!(reason.to_string().contains("another agent"), "{reason}");
    });
}
