//! Shared pieces of Hodei's fuzz targets: the checks every decoded message goes through, and
//! representative messages the seed-corpus generator (`examples/make-corpus.rs`) encodes.

use hodei_core::event::{Event, EventKind, Subject};
use hodei_core::frame::{HEADER_LEN, MAX_FRAME, Wire, split_frame};
use hodei_core::ids::{Attempt, JobId, WorkerId};
use hodei_core::job::{JobRecord, Outcome, WorkerInfo};
use hodei_core::spec::{Command, JobSpec, Policy, RetryOn, SecretDelivery};
use hodei_core::state::{JobState, WorkerState};
use hodei_core::wire::{
    Chunk, ControlRequest, ErrorKind, FromAgent, FromServer, HeldJob, Hello, JobRequest, Request,
    Resources, SecretBytes, SecretInfo, SecretValue, Stream, ToAgent, ToServer, TokenInfo,
};

/// The key `auth_seal_open` opens with, and the seed corpus was sealed with. A test key: it
/// protects nothing.
pub const SEAL_TEST_KEY: [u8; 32] = *b"hodei-fuzz seal test key 32 byte";

/// What every decode target does with its input, which is one frame as a peer sends it (or as
/// the store keeps it): split the frame off, decode its payload, and if that succeeds, check
/// that the message encodes again and decodes to the same value.
///
/// Returns the decoded message for target-specific checks.
pub fn decode_frame<T: Wire + PartialEq + std::fmt::Debug>(data: &[u8]) -> Option<T> {
    let (payload, used) = split_frame(data).ok()??;
    assert_eq!(used, HEADER_LEN + payload.len());
    assert!(used <= data.len());
    let msg = T::decode(payload).ok()?;
    let frame = msg.to_frame().expect("a decoded message must encode again");
    assert!(frame.len() <= HEADER_LEN + MAX_FRAME);
    let (again, used) = split_frame(&frame)
        .expect("an encoded frame has a valid header")
        .expect("an encoded frame is complete");
    assert_eq!(used, frame.len());
    let back = T::decode(again).expect("an encoded message decodes");
    assert_eq!(back, msg, "decode(encode(decode(x))) != decode(x)");
    Some(msg)
}

/// What the server does with a spec it receives: validate it; render it for listings.
pub fn check_spec(spec: &JobSpec) {
    let _ = spec.validate();
    for name in &spec.secrets {
        let _ = hodei_core::spec::check_secret_name(name);
    }
    let _ = spec.command.display();
    let _ = spec.policy.retry_on.names();
}

/// What the server does with a client request's body: validate every submitted spec, and
/// check that the request's `Debug` (which the server logs on a denial) does not depend on a
/// secret value it carries.
pub fn check_to_server(body: &ToServer) {
    match body {
        ToServer::Job(JobRequest::Submit { specs } | JobRequest::SubmitWait { specs }) => {
            specs.iter().for_each(check_spec);
        }
        ToServer::Control(ControlRequest::SetSecret { name, value }) => {
            let blank = ToServer::Control(ControlRequest::SetSecret {
                name: name.clone(),
                value: SecretBytes(vec![0; value.0.len()]),
            });
            assert_eq!(
                format!("{body:?}"),
                format!("{blank:?}"),
                "Debug shows a secret value"
            );
        }
        _ => {}
    }
    let _ = body.permission();
    if let ToServer::Job(job) = body {
        let _ = (job.route(), job.audit());
    }
}

/// What an agent does with a server message: validate an assigned spec, and check that the
/// message's `Debug` does not depend on the secret values it carries.
pub fn check_to_agent(msg: &ToAgent) {
    if let ToAgent::Assign {
        job,
        attempt,
        spec,
        secrets,
    } = msg
    {
        check_spec(spec);
        let blank = ToAgent::Assign {
            job: *job,
            attempt: *attempt,
            spec: spec.clone(),
            secrets: secrets
                .iter()
                .map(|s| SecretValue {
                    name: s.name.clone(),
                    value: vec![0; s.value.len()],
                })
                .collect(),
        };
        assert_eq!(
            format!("{msg:?}"),
            format!("{blank:?}"),
            "Debug shows a secret value"
        );
    }
}

/// What the server does with an outcome an agent reports.
pub fn check_outcome(outcome: &Outcome) {
    let _ = outcome.state();
    let _ = outcome.retry_class();
    let _ = outcome.exit_code();
    let _ = outcome.error();
}

/// A job spec with every optional field set.
#[must_use]
#[allow(clippy::needless_update)] // the `..` keeps it compiling when `JobSpec` grows
pub fn full_spec() -> JobSpec {
    JobSpec {
        name: "nightly-build".into(),
        command: Command::Exec {
            program: "cargo".into(),
            args: vec!["build".into(), "--release".into(), "with space".into()],
        },
        env: vec![
            ("RUST_LOG".into(), "info".into()),
            ("_X1".into(), String::new()),
        ],
        workdir: Some("/tmp/work".into()),
        priority: -5,
        cpus: 2,
        memory: 512 << 20,
        labels: vec![
            ("os".into(), "linux".into()),
            ("arch".into(), "x86_64".into()),
        ],
        timeout_ms: Some(60_000),
        policy: Policy {
            retries: 2,
            retry_on: RetryOn(RetryOn::EXIT.0 | RetryOn::TIMEOUT.0),
            backoff_min_ms: 500,
            backoff_max_ms: 10_000,
            queue_timeout_ms: Some(30_000),
            idempotency_key: Some("build-42".into()),
            correlation_id: "corr-7".into(),
        },
        secrets: vec!["db_pass".into(), "api-key.v2".into()],
        secret_delivery: SecretDelivery::Stdin,
        owner: "ci".into(),
        max_output: Some(10 << 20),
        // Fields added later keep their defaults until listed here.
        ..JobSpec::exec("cargo", &[])
    }
}

/// A script job.
#[must_use]
pub fn script_spec() -> JobSpec {
    JobSpec {
        command: Command::Script {
            body: "\n  echo hello\nexit 3\n".into(),
        },
        ..JobSpec::exec("unused", &[])
    }
}

/// Specs that fail validation, one per rule, so the fuzzer starts next to every branch.
#[must_use]
pub fn invalid_specs() -> Vec<JobSpec> {
    let base = JobSpec::exec("true", &[]);
    let mut v = Vec::new();
    v.push(JobSpec::exec(" ", &[]));
    v.push(JobSpec::exec("a\0b", &[]));
    v.push(JobSpec {
        command: Command::Script { body: " \n".into() },
        ..base.clone()
    });
    let mut s = base.clone();
    s.name = "n".repeat(300);
    v.push(s);
    let mut s = base.clone();
    s.env.push(("1BAD".into(), "v".into()));
    v.push(s);
    let mut s = base.clone();
    s.labels.push((String::new(), "v".into()));
    v.push(s);
    let mut s = base.clone();
    s.workdir = Some(String::new());
    v.push(s);
    let mut s = base.clone();
    s.timeout_ms = Some(0);
    v.push(s);
    let mut s = base.clone();
    s.policy.backoff_min_ms = 10;
    s.policy.backoff_max_ms = 1;
    v.push(s);
    let mut s = base.clone();
    s.policy.idempotency_key = Some(String::new());
    v.push(s);
    let mut s = base.clone();
    s.secrets.push(".hidden".into());
    v.push(s);
    let mut s = base.clone();
    s.secrets = (0..65).map(|i| format!("s{i}")).collect();
    v.push(s);
    let mut s = base.clone();
    s.max_output = Some(0);
    v.push(s);
    let mut s = base;
    s.owner = "o".repeat(300);
    v.push(s);
    v
}

/// A job record in a final state.
#[must_use]
pub fn job_record() -> JobRecord {
    let mut r = JobRecord::new(JobId::new(3, 2, 99), full_spec(), 1_700_000_000_000_000);
    r.state = JobState::Failed;
    r.attempt = Attempt(3);
    r.worker = Some(WorkerId::new(1, 2, 5));
    r.exit_code = Some(2);
    r.error = Some("exited with code 2".into());
    r.started_at = Some(1_700_000_000_100_000);
    r.finished_at = Some(1_700_000_000_900_000);
    r.output_end = 4096;
    r.not_before = Some(1_700_000_001_000_000);
    r.ran = true;
    r.retry_of = Some(JobId::new(3, 1, 7));
    r
}

/// Representative agent → server messages (every variant).
#[must_use]
pub fn from_agent_samples() -> Vec<(&'static str, FromAgent)> {
    let job = JobId::new(2, 1, 10);
    vec![
        (
            "hello",
            FromAgent::Hello(Hello {
                worker: Some(WorkerId::new(0, 1, 3)),
                hostname: "build-01".into(),
                resources: Resources {
                    slots: 4,
                    cpus: 8,
                    memory: 16 << 30,
                    labels: vec![("os".into(), "linux".into())],
                },
                held: vec![HeldJob {
                    job,
                    attempt: Attempt(1),
                    cpus: 1,
                    memory: 1 << 20,
                }],
            }),
        ),
        (
            "hello-new",
            FromAgent::Hello(Hello {
                worker: None,
                hostname: String::new(),
                resources: Resources {
                    slots: 1,
                    cpus: 0,
                    memory: 0,
                    labels: vec![],
                },
                held: vec![],
            }),
        ),
        (
            "heartbeat",
            FromAgent::Heartbeat {
                running: 2,
                load: 150,
            },
        ),
        (
            "started",
            FromAgent::Started {
                job,
                attempt: Attempt(1),
                at: 12_345,
            },
        ),
        (
            "output",
            FromAgent::Output {
                job,
                attempt: Attempt(1),
                offset: 100,
                chunks: vec![
                    Chunk {
                        stream: Stream::Stdout,
                        data: b"hello world\n".to_vec(),
                    },
                    Chunk {
                        stream: Stream::Stderr,
                        data: b"warning: \xff\x00 bytes\n".to_vec(),
                    },
                ],
            },
        ),
        ("draining", FromAgent::Draining { timeout_ms: 30_000 }),
        ("goodbye", FromAgent::Goodbye),
        (
            "accepted",
            FromAgent::Accepted {
                job,
                attempt: Attempt(1),
            },
        ),
        (
            "finished-exited",
            FromAgent::Finished {
                job,
                attempt: Attempt(1),
                outcome: Outcome::Exited(1),
                at: 99,
            },
        ),
        (
            "finished-signaled",
            FromAgent::Finished {
                job,
                attempt: Attempt(2),
                outcome: Outcome::Signaled(9),
                at: 99,
            },
        ),
        (
            "finished-timedout",
            FromAgent::Finished {
                job,
                attempt: Attempt(2),
                outcome: Outcome::TimedOut,
                at: 99,
            },
        ),
        (
            "finished-spawnfailed",
            FromAgent::Finished {
                job,
                attempt: Attempt(2),
                outcome: Outcome::SpawnFailed("no such file".into()),
                at: 99,
            },
        ),
    ]
}

/// Representative server → agent messages (every variant).
#[must_use]
pub fn to_agent_samples() -> Vec<(&'static str, ToAgent)> {
    let job = JobId::new(2, 1, 10);
    let attempt = Attempt(1);
    vec![
        (
            "welcome",
            ToAgent::Welcome {
                worker: WorkerId::new(0, 1, 3),
                heartbeat_ms: 1_000,
                lease_ms: 30_000,
            },
        ),
        ("drain", ToAgent::Drain { timeout_ms: 5_000 }),
        ("redirect", ToAgent::Redirect { port: 7001 }),
        (
            "refused",
            ToAgent::Refused {
                reason: "unknown worker".into(),
            },
        ),
        (
            "assign-full",
            ToAgent::Assign {
                job,
                attempt,
                spec: full_spec(),
                secrets: vec![
                    SecretValue {
                        name: "db_pass".into(),
                        value: b"hunter2".to_vec(),
                    },
                    SecretValue {
                        name: "api-key.v2".into(),
                        value: vec![0, 255, b'\n', b'"'],
                    },
                ],
            },
        ),
        (
            "assign-script",
            ToAgent::Assign {
                job,
                attempt,
                spec: script_spec(),
                secrets: vec![],
            },
        ),
        ("cancel", ToAgent::Cancel { job, attempt }),
        ("abandon", ToAgent::Abandon { job, attempt }),
        (
            "resume",
            ToAgent::Resume {
                job,
                attempt,
                output_end: 4096,
            },
        ),
        (
            "output-ack",
            ToAgent::OutputAck {
                job,
                attempt,
                output_end: 8192,
            },
        ),
        ("finished-ack", ToAgent::FinishedAck { job, attempt }),
    ]
}

/// Representative client → server requests (every variant).
#[must_use]
pub fn to_server_samples() -> Vec<(&'static str, ToServer)> {
    let job = JobId::new(1, 1, 1);
    vec![
        (
            "submit",
            ToServer::from(JobRequest::Submit {
                specs: vec![full_spec(), script_spec(), JobSpec::exec("true", &[])],
            }),
        ),
        (
            "submit-invalid",
            ToServer::from(JobRequest::Submit {
                specs: invalid_specs(),
            }),
        ),
        (
            "submit-empty",
            ToServer::from(JobRequest::Submit { specs: vec![] }),
        ),
        (
            "submit-wait",
            ToServer::from(JobRequest::SubmitWait {
                specs: vec![JobSpec::exec("true", &[]), script_spec()],
            }),
        ),
        ("get-job", ToServer::from(JobRequest::GetJob { job })),
        (
            "list-jobs",
            ToServer::from(JobRequest::ListJobs { state: None }),
        ),
        (
            "list-jobs-running",
            ToServer::from(JobRequest::ListJobs {
                state: Some(JobState::Running),
            }),
        ),
        ("cancel", ToServer::from(JobRequest::Cancel { job })),
        (
            "logs",
            ToServer::from(JobRequest::Logs { job, follow: true }),
        ),
        ("wait", ToServer::from(JobRequest::Wait { job })),
        ("list-workers", ToServer::from(JobRequest::ListWorkers)),
        (
            "stats",
            ToServer::from(ControlRequest::Stats { reset: true }),
        ),
        ("retry", ToServer::from(JobRequest::Retry { job })),
        (
            "drain-worker",
            ToServer::from(JobRequest::DrainWorker {
                worker: WorkerId::new(0, 1, 2),
                timeout_ms: 10_000,
            }),
        ),
        (
            "events",
            ToServer::from(JobRequest::Events {
                since: vec![15, 22, 0, 7],
                job: Some(job),
                follow: true,
            }),
        ),
        (
            "create-token",
            ToServer::from(ControlRequest::CreateToken {
                role: "submitter".into(),
                name: "ci".into(),
                ttl_ms: Some(86_400_000),
                uses: Some(1),
            }),
        ),
        ("list-tokens", ToServer::from(ControlRequest::ListTokens)),
        (
            "revoke-token",
            ToServer::from(ControlRequest::RevokeToken {
                id: "0123456789abcdef".into(),
            }),
        ),
        (
            "set-secret",
            ToServer::from(ControlRequest::SetSecret {
                name: "db_pass".into(),
                value: SecretBytes(b"hunter2".to_vec()),
            }),
        ),
        ("list-secrets", ToServer::from(ControlRequest::ListSecrets)),
        (
            "remove-secret",
            ToServer::from(ControlRequest::RemoveSecret {
                name: "db_pass".into(),
            }),
        ),
        (
            "audit",
            ToServer::from(ControlRequest::Audit {
                job: Some(job),
                actor: Some("ci".into()),
                since_ms: Some(1_700_000_000_000),
            }),
        ),
        (
            "join",
            ToServer::from(ControlRequest::Join {
                public_key: vec![4; 65],
            }),
        ),
        (
            "revoke-worker",
            ToServer::from(ControlRequest::RevokeWorker {
                worker: WorkerId::new(1, 1, 1),
            }),
        ),
        (
            "rotate-server-cert",
            ToServer::from(ControlRequest::RotateServerCert),
        ),
        ("audit-verify", ToServer::from(ControlRequest::AuditVerify)),
    ]
}

/// A token in the canonical text form (not a real one).
pub const SAMPLE_TOKEN: &str = "hodei_0123456789abcdef_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

/// Representative requests: a token and a body, the first frame of every client stream.
#[must_use]
pub fn request_samples() -> Vec<(&'static str, Request)> {
    to_server_samples()
        .into_iter()
        .map(|(name, body)| {
            (
                name,
                Request {
                    token: SAMPLE_TOKEN.into(),
                    body,
                },
            )
        })
        .chain([(
            "no-token",
            Request {
                token: String::new(),
                body: JobRequest::ListWorkers.into(),
            },
        )])
        .collect()
}

/// Representative events (every subject and kind).
#[must_use]
pub fn event_samples() -> Vec<(&'static str, Event)> {
    vec![
        (
            "job",
            Event {
                shard: 1,
                seq: 42,
                at: 1_700_000_000_000_000,
                subject: Subject::Job(JobId::new(1, 1, 9)),
                correlation_id: "corr-7".into(),
                kind: EventKind::Job {
                    state: JobState::Running,
                    attempt: Attempt(1),
                    worker: Some(WorkerId::new(0, 1, 2)),
                },
                reason: None,
            },
        ),
        (
            "worker",
            Event {
                shard: 0,
                seq: 1,
                at: 5,
                subject: Subject::Worker(WorkerId::new(0, 1, 2)),
                correlation_id: String::new(),
                kind: EventKind::Worker {
                    state: WorkerState::Lost,
                },
                reason: Some("missed heartbeats".into()),
            },
        ),
        (
            "stale",
            Event {
                shard: 3,
                seq: u64::MAX,
                at: 0,
                subject: Subject::Job(JobId::new(3, 1, 1)),
                correlation_id: "c".into(),
                kind: EventKind::StaleReport {
                    attempt: Attempt(1),
                    worker: WorkerId::new(3, 1, 4),
                },
                reason: Some("attempt 1 is stale".into()),
            },
        ),
    ]
}

/// Representative server → client answers (every variant).
#[must_use]
pub fn from_server_samples() -> Vec<(&'static str, FromServer)> {
    let worker = WorkerInfo {
        id: WorkerId::new(0, 1, 2),
        hostname: "build-01".into(),
        state: WorkerState::Ready,
        slots: 4,
        running: 1,
        cpus: 8,
        memory: 16 << 30,
        labels: vec![("os".into(), "linux".into())],
        last_seen: 77,
    };
    vec![
        (
            "submitted",
            FromServer::Submitted {
                ids: vec![JobId::new(1, 1, 1), JobId::new(2, 1, 1)],
            },
        ),
        ("job", FromServer::Job(Box::new(job_record()))),
        (
            "jobs",
            FromServer::Jobs(vec![
                job_record(),
                JobRecord::new(JobId::new(0, 1, 1), script_spec(), 1),
            ]),
        ),
        ("workers", FromServer::Workers(vec![worker])),
        (
            "log",
            FromServer::Log(vec![Chunk {
                stream: Stream::Stdout,
                data: b"line 1\nline 2\n".to_vec(),
            }]),
        ),
        ("log-end", FromServer::LogEnd),
        (
            "events",
            FromServer::Events(event_samples().into_iter().map(|(_, e)| e).collect()),
        ),
        (
            "error",
            FromServer::Error {
                kind: ErrorKind::NotFound,
                message: "no job j1.1.1".into(),
            },
        ),
        (
            "error-invalid",
            FromServer::Error {
                kind: ErrorKind::Invalid,
                message: "the command is empty".into(),
            },
        ),
        (
            "error-forbidden",
            FromServer::Error {
                kind: ErrorKind::Forbidden,
                message: "reader may not submit".into(),
            },
        ),
        (
            "token",
            FromServer::Token {
                id: "0123456789abcdef".into(),
                token: SAMPLE_TOKEN.into(),
            },
        ),
        (
            "tokens",
            FromServer::Tokens(vec![TokenInfo {
                id: "0123456789abcdef".into(),
                role: "admin".into(),
                name: "root".into(),
                created_at_ms: 1_700_000_000_000,
                expires_at_ms: Some(1_800_000_000_000),
                uses_left: None,
                revoked: false,
            }]),
        ),
        (
            "secrets",
            FromServer::Secrets(vec![SecretInfo {
                name: "db_pass".into(),
                updated_at_ms: 1_700_000_000_000,
                updated_by: "root".into(),
            }]),
        ),
        (
            "audit-records",
            FromServer::AuditRecords(vec![
                "{\"chain\":0,\"seq\":0,\"action\":\"job.submit\"}".into(),
            ]),
        ),
        (
            "audit-verified",
            FromServer::AuditVerified {
                records: 12,
                chains: 2,
            },
        ),
        ("done", FromServer::Done),
        (
            "stats",
            FromServer::Stats(vec![hodei_core::wire::Figure {
                name: "heartbeat_p99_us".to_owned(),
                value: 104,
            }]),
        ),
    ]
}

/// Representative stored job records.
#[must_use]
pub fn job_record_samples() -> Vec<(&'static str, JobRecord)> {
    vec![
        ("final", job_record()),
        (
            "pending",
            JobRecord::new(JobId::new(0, 1, 1), JobSpec::exec("true", &[]), 1),
        ),
        (
            "script",
            JobRecord::new(JobId::new(5, 9, 3), script_spec(), 2),
        ),
    ]
}
