//! Real-process tests of secrets on the agent: delivery as files or on stdin, masking in the
//! output (split writes, encoded and multi-line values), a spool that never holds a value,
//! and the secrets directory gone after every kind of end (and after a crash, on start).
//! Every wait is bounded by a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hodei_agent::runner::{
    RunEvent, RunEventKind, RunHandle, RunnerOptions, Secrets, clean_leftover_secrets, read_spool,
    spawn_job,
};
use hodei_core::ids::{Attempt, JobId};
use hodei_core::job::Outcome;
use hodei_core::spec::{Command, JobSpec, SecretDelivery};
use hodei_core::wire::{Chunk, SecretValue, Stream};
use tokio::sync::mpsc;

mod common;
use common::{
    DEADLINE, assert_spawn_failed, check_events, collect, options, scratch, stream_bytes,
};

fn check(kinds: &[RunEventKind]) -> (Outcome, Vec<Chunk>) {
    check_events(kinds, false)
}

/// A value long enough for every masked form (raw, base64 at any alignment, URL-encoded).
const TOKEN: &str = "s3cr3t-Value-42!";

fn job(seq: u64) -> JobId {
    JobId::new(0, 2, seq)
}

/// A script job that uses `secrets` (name, value), delivered as `delivery`.
fn script(body: &str, delivery: SecretDelivery, secrets: &[(&str, &[u8])]) -> (JobSpec, Secrets) {
    let mut spec = JobSpec::exec("unused", &[]);
    spec.command = Command::Script {
        body: body.to_owned(),
    };
    spec.secrets = secrets.iter().map(|(n, _)| (*n).to_owned()).collect();
    spec.secret_delivery = delivery;
    let values = secrets
        .iter()
        .map(|(n, v)| SecretValue {
            name: (*n).to_owned(),
            value: v.to_vec(),
        })
        .collect();
    (spec, Secrets::new(values))
}

fn start(
    opts: &Arc<RunnerOptions>,
    id: JobId,
    (spec, secrets): (JobSpec, Secrets),
) -> (RunHandle, mpsc::Receiver<RunEvent>) {
    let (tx, rx) = mpsc::channel(64);
    let handle = spawn_job(id, Attempt(1), spec, secrets, Arc::clone(opts), tx);
    (handle, rx)
}

async fn run(
    opts: &Arc<RunnerOptions>,
    id: JobId,
    job: (JobSpec, Secrets),
) -> (Outcome, Vec<Chunk>) {
    let (_handle, mut rx) = start(opts, id, job);
    check(&collect(&mut rx).await)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The raw spool file of an attempt (empty if the job printed nothing).
fn raw_spool(opts: &RunnerOptions, id: JobId) -> Vec<u8> {
    std::fs::read(opts.work_root.join("spool").join(format!("{id}-1.out"))).unwrap_or_default()
}

/// Waits until a job wrote a path into `file`, and returns it.
async fn read_path(file: &Path) -> PathBuf {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Ok(s) = std::fs::read_to_string(file)
            && s.ends_with('\n')
        {
            return PathBuf::from(s.trim_end());
        }
        assert!(
            Instant::now() < end,
            "timed out waiting for {}",
            file.display()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Where a secrets directory may be: tmpfs, or the work root's fallback.
fn is_secrets_dir(opts: &RunnerOptions, dir: &Path) -> bool {
    let name = dir.file_name().unwrap().to_str().unwrap();
    let parent = dir.parent().unwrap();
    name.starts_with("hodei-secrets-")
        && (parent == Path::new("/dev/shm") || parent == opts.work_root.join("secrets"))
}

#[tokio::test]
async fn files_are_private_masked_and_removed() {
    let root = scratch("files");
    let opts = options(&root);
    let envfile = root.join("env.txt");
    let body = format!(
        "d=\"$HODEI_SECRETS_DIR\"\n\
         echo \"$d\"\n\
         stat -c %a \"$d\" \"$d/TOKEN\"\n\
         printf 'v=<%s>\\n' \"$(cat \"$d/TOKEN\")\"\n\
         cat \"$d/TOKEN\" >&2\n\
         env > '{}'\n",
        envfile.display()
    );
    let id = job(1);
    let spec = script(&body, SecretDelivery::Files, &[("TOKEN", TOKEN.as_bytes())]);
    let (outcome, chunks) = run(&opts, id, spec).await;
    assert_eq!(outcome, Outcome::Exited(0));
    let out = stream_bytes(&chunks, Stream::Stdout);
    let mut lines = out.lines();
    let dir = PathBuf::from(lines.next().unwrap());
    assert!(is_secrets_dir(&opts, &dir), "{}", dir.display());
    assert_eq!(lines.next(), Some("700"), "directory mode: {out}");
    assert_eq!(lines.next(), Some("600"), "file mode: {out}");
    assert_eq!(lines.next(), Some("v=<[REDACTED:TOKEN]>"), "{out}");
    assert_eq!(lines.next(), None);
    assert_eq!(stream_bytes(&chunks, Stream::Stderr), "[REDACTED:TOKEN]");
    assert!(!dir.exists(), "the secrets directory outlived the job");
    // The environment names the directory and holds no value.
    let env = std::fs::read(&envfile).unwrap();
    assert!(contains(
        &env,
        format!("HODEI_SECRETS_DIR={}\n", dir.display()).as_bytes()
    ));
    assert!(!contains(&env, TOKEN.as_bytes()), "a value is in the env");
    // Neither the spool nor the script file holds the value.
    let spool = raw_spool(&opts, id);
    assert!(contains(&spool, b"[REDACTED:TOKEN]"));
    assert!(!contains(&spool, TOKEN.as_bytes()));
    let script = std::fs::read(opts.work_root.join("scripts").join(format!("{id}-1.sh"))).unwrap();
    assert!(!contains(&script, TOKEN.as_bytes()));
}

#[tokio::test]
async fn stdin_gets_one_json_object_and_is_masked() {
    let root = scratch("stdin");
    let opts = options(&root);
    let copy = root.join("stdin.json");
    // `tee`: the copy on disk shows what the job really got, the output what left the host.
    let body = format!(
        "tee '{}'\necho\necho \"${{HODEI_SECRETS_DIR-unset}}\" >&2\n",
        copy.display()
    );
    let quoted: &[u8] = b"line1\n\"quoted\" \\ end";
    let spec = script(
        &body,
        SecretDelivery::Stdin,
        &[("A", TOKEN.as_bytes()), ("B", quoted)],
    );
    let id = job(2);
    let (outcome, chunks) = run(&opts, id, spec).await;
    assert_eq!(outcome, Outcome::Exited(0));
    assert_eq!(
        std::fs::read_to_string(&copy).unwrap(),
        format!(r#"{{"A":"{TOKEN}","B":"line1\n\"quoted\" \\ end"}}"#)
    );
    // B is masked in its JSON-escaped form too: echoing the object reveals nothing.
    assert_eq!(
        stream_bytes(&chunks, Stream::Stdout),
        "{\"A\":\"[REDACTED:A]\",\"B\":\"[REDACTED:B]\"}\n"
    );
    assert_eq!(stream_bytes(&chunks, Stream::Stderr), "unset\n");
    let spool = raw_spool(&opts, id);
    assert!(!contains(&spool, TOKEN.as_bytes()) && !contains(&spool, b"quoted"));
}

#[tokio::test]
async fn stdin_nobody_reads_does_not_block() {
    let root = scratch("stdin-unread");
    let opts = options(&root);
    // More JSON than a pipe holds (64 KiB), so the writer can only end with EPIPE. Many
    // values of 1 KiB rather than one large one: compiling a redactor for a single long
    // value takes time that grows with the square of its length.
    let names: Vec<String> = (0..64).map(|i| format!("S{i}")).collect();
    let mut x: u32 = 1;
    let values: Vec<Vec<u8>> = (0..64)
        .map(|_| {
            (0..1100)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    b"abcdefghijklmnopqrstuvwxyz0123456789"[(x >> 16) as usize % 36]
                })
                .collect()
        })
        .collect();
    let secrets: Vec<(&str, &[u8])> = names
        .iter()
        .zip(&values)
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    let spec = script("sleep 0.1\necho done\n", SecretDelivery::Stdin, &secrets);
    let (outcome, chunks) = run(&opts, job(3), spec).await;
    assert_eq!(outcome, Outcome::Exited(0));
    assert_eq!(stream_bytes(&chunks, Stream::Stdout), "done\n");
}

/// Runs `true` needing secret `name`, sent `values`; returns its spawn failure message.
async fn spawn_failure(
    opts: &Arc<RunnerOptions>,
    id: JobId,
    name: &str,
    delivery: SecretDelivery,
    values: &[(&str, &[u8])],
) -> String {
    let (mut spec, secrets) = script("true", delivery, values);
    spec.secrets = vec![name.to_owned()];
    let (_h, mut rx) = start(opts, id, (spec, secrets));
    let kinds = collect(&mut rx).await;
    let [
        RunEventKind::Finished {
            outcome: Outcome::SpawnFailed(msg),
            ..
        },
    ] = kinds.as_slice()
    else {
        panic!("expected SpawnFailed, got {kinds:?}");
    };
    msg.clone()
}

#[tokio::test]
async fn bad_secrets_fail_to_start_naming_the_secret() {
    let root = scratch("bad");
    let opts = options(&root);
    // Not UTF-8: cannot be a JSON string.
    let bin: &[u8] = &[0xff, 0xfe, b'z', b'q', b'9'];
    let msg = spawn_failure(
        &opts,
        job(10),
        "BIN",
        SecretDelivery::Stdin,
        &[("BIN", bin)],
    )
    .await;
    assert!(msg.contains("BIN") && msg.contains("UTF-8"), "{msg}");
    assert!(!msg.contains("zq9"), "{msg}");
    // Named by the spec, missing from the assignment.
    let msg = spawn_failure(&opts, job(11), "ABSENT", SecretDelivery::Files, &[]).await;
    assert!(msg.contains("ABSENT"), "{msg}");
    // A name that would leave the directory (the server refuses it; the agent checks again).
    let msg = spawn_failure(
        &opts,
        job(12),
        "../escape",
        SecretDelivery::Files,
        &[("../escape", b"zq9zq9")],
    )
    .await;
    assert!(msg.contains("escape"), "{msg}");
    assert!(!root.join("escape").exists() && !Path::new("/dev/shm/escape").exists());
    assert_eq!(clean_leftover_secrets(&opts), 0, "nothing may be left");
}

#[tokio::test]
async fn spawn_failure_removes_the_secrets_dir() {
    let root = scratch("spawn-fail");
    let opts = options(&root);
    let mut spec = JobSpec::exec("hodei-no-such-program-xyz", &[]);
    spec.secrets = vec!["TOKEN".into()];
    let secrets = Secrets::new(vec![SecretValue {
        name: "TOKEN".into(),
        value: TOKEN.into(),
    }]);
    let (_h, mut rx) = start(&opts, job(20), (spec, secrets));
    let kinds = collect(&mut rx).await;
    assert_spawn_failed(&kinds);
    // A directory still there would be found (and removed) as a leftover.
    assert_eq!(clean_leftover_secrets(&opts), 0);
}

#[tokio::test]
async fn split_encoded_and_multiline_values_are_masked() {
    let root = scratch("forms");
    let opts = options(&root);
    let multi: &[u8] = b"first line\nsecond line";
    // SPLIT reaches the pipe in two writes 200 ms apart, in the middle of a line whose start
    // must not wait for the rest. V is also printed base64-encoded (padded, and wrapped by
    // nothing), and on stderr; M spans lines.
    let body = "d=\"$HODEI_SECRETS_DIR\"\n\
                printf 'x abc'\nsleep 0.2\nprintf 'def y\\n'\n\
                printf %s \"$(cat \"$d/V\")\" | base64\n\
                printf %s \"$(cat \"$d/V\")\" | base64 | tr '+/' '-_'\n\
                cat \"$d/M\"; echo\n\
                printf 'err:%s\\n' \"$(cat \"$d/V\")\" >&2\n";
    let spec = script(
        body,
        SecretDelivery::Files,
        &[("SPLIT", b"abcdef"), ("V", TOKEN.as_bytes()), ("M", multi)],
    );
    let id = job(30);
    let (_h, mut rx) = start(&opts, id, spec);
    let kinds = collect(&mut rx).await;
    // What precedes a possible secret start is not held back: `x ` leaves in a batch of its
    // own while the job sleeps (the batch interval is 50 ms, the sleep 200 ms).
    let RunEventKind::Output { chunks: first, .. } = &kinds[1] else {
        panic!("{kinds:?}");
    };
    assert_eq!(stream_bytes(first, Stream::Stdout), "x ", "{kinds:?}");
    let (outcome, chunks) = check(&kinds);
    assert_eq!(outcome, Outcome::Exited(0));
    let out = stream_bytes(&chunks, Stream::Stdout);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("x [REDACTED:SPLIT] y"), "{out}");
    let b64 = "czNjcjN0LVZhbHVlLTQyIQ";
    for _ in 0..2 {
        let line = lines.next().unwrap();
        assert!(line.starts_with("[REDACTED:V]"), "{line}");
        assert!(!line.contains(&b64[..b64.len() - 2]), "{line}");
    }
    assert_eq!(lines.next(), Some("[REDACTED:M]"), "{out}");
    assert_eq!(lines.next(), None, "{out}");
    assert_eq!(stream_bytes(&chunks, Stream::Stderr), "err:[REDACTED:V]\n");
    let spool = raw_spool(&opts, id);
    for value in [&b"abcdef"[..], TOKEN.as_bytes(), multi, b"first line"] {
        assert!(!contains(&spool, value));
    }
}

#[tokio::test]
async fn tiny_batches_stay_bounded_and_match_the_spool() {
    let root = scratch("tiny");
    let opts = Arc::new(RunnerOptions {
        batch_bytes: 4,
        ..(*options(&root)).clone()
    });
    // Each 3-byte secret becomes a 12-byte label: more than a batch may hold.
    let body = "for i in 1 2 3; do cat \"$HODEI_SECRETS_DIR/K\"; done; echo\n";
    let spec = script(body, SecretDelivery::Files, &[("K", b"k3y")]);
    let id = job(40);
    let (_h, mut rx) = start(&opts, id, spec);
    let kinds = collect(&mut rx).await;
    for kind in &kinds {
        if let RunEventKind::Output { chunks, .. } = kind {
            let len: usize = chunks.iter().map(|c| c.data.len()).sum();
            assert!(len <= 4, "batch of {len} bytes exceeds batch_bytes");
        }
    }
    let (outcome, chunks) = check(&kinds);
    assert_eq!(outcome, Outcome::Exited(0));
    let out = stream_bytes(&chunks, Stream::Stdout);
    assert_eq!(out, "[REDACTED:K]".repeat(3) + "\n");
    let spooled = read_spool(&opts, id, Attempt(1), 0).unwrap();
    assert_eq!(stream_bytes(&spooled, Stream::Stdout), out);
    assert!(!contains(&raw_spool(&opts, id), b"k3y"));
}

#[tokio::test]
async fn secrets_dir_is_removed_after_timeout_and_cancel() {
    let root = scratch("kill");
    let opts = options(&root);
    for (i, cancel) in [false, true].into_iter().enumerate() {
        let dirfile = root.join(format!("dir-{i}"));
        let body = format!(
            "echo \"$HODEI_SECRETS_DIR\" > '{}'\nsleep 300 &\nwait\n",
            dirfile.display()
        );
        let (mut spec, secrets) = script(&body, SecretDelivery::Files, &[("T", TOKEN.as_bytes())]);
        if !cancel {
            spec.timeout_ms = Some(300);
        }
        let (handle, mut rx) = start(&opts, job(50 + i as u64), (spec, secrets));
        let dir = read_path(&dirfile).await;
        assert!(is_secrets_dir(&opts, &dir), "{}", dir.display());
        assert_eq!(std::fs::read(dir.join("T")).unwrap(), TOKEN.as_bytes());
        if cancel {
            handle.cancel();
        }
        let (outcome, _) = check(&collect(&mut rx).await);
        let expected = if cancel {
            Outcome::Cancelled
        } else {
            Outcome::TimedOut
        };
        assert_eq!(outcome, expected);
        assert!(
            !dir.exists(),
            "the secrets directory outlived a {expected:?} job"
        );
    }
}

#[tokio::test]
async fn leftovers_of_this_agent_only_are_cleaned() {
    let root = scratch("leftovers");
    let opts = options(&root);
    let dirfile = root.join("dir");
    let body = format!(
        "echo \"$HODEI_SECRETS_DIR\" > '{}'\nexec sleep 300\n",
        dirfile.display()
    );
    let spec = script(&body, SecretDelivery::Files, &[("T", TOKEN.as_bytes())]);
    // A running job's directory stands in for one a crashed agent left: on start, nothing of
    // this agent runs, so every directory with its tag is a leftover.
    let (handle, mut rx) = start(&opts, job(60), spec);
    let dir = read_path(&dirfile).await;
    // Another agent's directory (another work root, another tag) on the same root.
    let other = dir.parent().unwrap().join(format!(
        "hodei-secrets-0000000000000000-test-{}",
        std::process::id()
    ));
    std::fs::create_dir(&other).unwrap();
    assert_eq!(clean_leftover_secrets(&opts), 1);
    assert!(!dir.exists());
    assert!(other.exists(), "another agent's directory was removed");
    std::fs::remove_dir(&other).unwrap();
    handle.cancel();
    let (outcome, _) = check(&collect(&mut rx).await);
    assert_eq!(outcome, Outcome::Cancelled);
}
