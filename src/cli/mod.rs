//! The CLI: `hodei job ...` and `hodei worker ...` here, the admin commands in [`admin`],
//! `hodei events` in [`events`]; each a client of the server ([`client`]), printing what it
//! answers ([`view`]).

pub mod admin;
pub mod client;
pub mod events;
pub mod view;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use hodei_core::ids::{JobId, WorkerId};
use hodei_core::job::JobRecord;
use hodei_core::spec::{
    Command, JobSpec, Policy, RetryOn, SecretDelivery, parse_key_value, parse_size,
};
use hodei_core::state::JobState;
use hodei_core::wire::{ControlRequest, FromServer, JobRequest, Stream};

use client::Client;

/// Where the server is.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// Server address (host:port).
    #[arg(
        long,
        global = true,
        env = "HODEI_SERVER",
        default_value = "127.0.0.1:7700"
    )]
    pub server: String,
    /// CA certificate of the server (its data dir's ca.pem).
    #[arg(long, global = true, env = "HODEI_CA", default_value = ".hodei/ca.pem")]
    pub ca: PathBuf,
    /// API token (default: the `admin.token` beside the CA file, which a local server
    /// writes on its first start).
    #[arg(long, global = true, env = "HODEI_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl Target {
    /// The token to send: `--token`/`HODEI_TOKEN`, else the local server's admin token.
    pub fn token(&self) -> Result<String> {
        if let Some(t) = &self.token {
            return Ok(t.trim().to_owned());
        }
        let path = self
            .ca
            .parent()
            .map_or_else(|| PathBuf::from("admin.token"), |d| d.join("admin.token"));
        match std::fs::read_to_string(&path) {
            Ok(t) => Ok(t.trim().to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "no API token: pass --token or set HODEI_TOKEN (a local server keeps its admin token in {})",
                path.display()
            ),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Connects with the token. A missing CA or an unreachable server is reported before a
    /// missing token: it is the more basic problem.
    pub async fn connect(&self) -> Result<Client> {
        let token = self.token();
        let client = Client::connect(
            &self.server,
            &self.ca,
            token.as_ref().map(Clone::clone).unwrap_or_default(),
        )
        .await?;
        token?;
        Ok(client)
    }
}

#[derive(Subcommand, Debug)]
pub enum JobCmd {
    /// Submit a job; prints its id once it is durable.
    Submit(Box<SubmitArgs>),
    /// Show one job.
    Get {
        id: JobId,
        #[arg(long)]
        json: bool,
    },
    /// List jobs.
    List {
        /// Only jobs in this state (pending, assigned, running, succeeded, failed, cancelled, timed_out).
        #[arg(long)]
        state: Option<JobState>,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job (in any state; idempotent).
    Cancel { id: JobId },
    /// Print a job's output (stdout to stdout, stderr to stderr).
    Logs {
        id: JobId,
        /// Keep printing until the job ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Submit a finished job again, as a new job (prints its id).
    Retry { id: JobId },
    /// Wait until jobs end; exits 0 if all succeeded, 1 if any did not, 2 on --timeout.
    Wait {
        #[arg(required = true)]
        ids: Vec<JobId>,
        /// Give up after this long (e.g. 30s, 5m).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// Job name.
    #[arg(long, default_value = "")]
    name: String,
    /// Higher runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// CPUs to reserve.
    #[arg(long, default_value_t = 0)]
    cpus: u32,
    /// Memory to reserve (e.g. 512M, 2G).
    #[arg(long, value_parser = parse_size)]
    mem: Option<u64>,
    /// Required agent label `key=value` (repeatable).
    #[arg(long = "label", value_parser = parse_key_value)]
    labels: Vec<(String, String)>,
    /// Kill the job's process group after this long (e.g. 30s, 5m).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Environment variable `K=V` (repeatable).
    #[arg(long = "env", value_parser = parse_key_value)]
    env: Vec<(String, String)>,
    /// Working directory on the agent (created if missing).
    #[arg(long)]
    workdir: Option<String>,
    /// Attempts after the first one.
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// Which endings are retried: exit, lost, timeout (comma-separated), or none.
    #[arg(long, default_value = "lost", value_parser = RetryOn::parse)]
    retry_on: RetryOn,
    /// Retry delay range MIN..MAX: exponential from MIN with jitter, capped at MAX.
    #[arg(long, default_value = "1s..60s", value_parser = parse_backoff)]
    backoff: (u64, u64),
    /// End the job timed out if it has not started this long after submission.
    #[arg(long, value_parser = humantime::parse_duration)]
    queue_timeout: Option<Duration>,
    /// Submitting again with the same key returns the existing job (across restarts).
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Correlation id carried in every log line and event about the job (generated if unset).
    #[arg(long, default_value = "")]
    correlation_id: String,
    /// Run this bash script (written to a file with `set -euo pipefail` and executed).
    #[arg(long, conflicts_with = "command")]
    script: Option<PathBuf>,
    /// A secret the job needs (repeatable; set it first with `hodei secret set NAME`).
    #[arg(long = "secret")]
    secrets: Vec<String>,
    /// How the process gets its secrets: `files` (a private dir in HODEI_SECRETS_DIR) or
    /// `stdin` (one JSON object).
    #[arg(long, default_value = "files", value_parser = parse_delivery)]
    secret_delivery: SecretDelivery,
    /// Output kept per attempt (e.g. 10M, 2G; default 1G): past it the rest is dropped, the
    /// job runs on to its own exit, and its log ends with a line saying how much was cut.
    #[arg(long, value_parser = hodei_core::spec::parse_size)]
    max_output: Option<u64>,
    /// Print the job as JSON.
    #[arg(long)]
    json: bool,
    /// Wait until the job is final, in the same request; exit 0 if it succeeded, 1 if not
    /// (as `hodei job wait`).
    #[arg(long)]
    wait: bool,
    /// The command and its arguments (after `--`).
    #[arg(last = true)]
    command: Vec<String>,
}

impl SubmitArgs {
    fn spec(self) -> Result<JobSpec> {
        let command = match (self.script, self.command.split_first()) {
            (Some(path), _) => {
                let body = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read script {}", path.display()))?;
                Command::Script { body }
            }
            (None, Some((program, args))) => Command::Exec {
                program: program.clone(),
                args: args.to_vec(),
            },
            (None, None) => {
                bail!("no command given: use `hodei job submit -- CMD [ARGS...]` or --script FILE")
            }
        };
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let timeout_ms = self.timeout.map(ms);
        let policy = Policy {
            retries: self.retries,
            retry_on: self.retry_on,
            backoff_min_ms: self.backoff.0,
            backoff_max_ms: self.backoff.1,
            queue_timeout_ms: self.queue_timeout.map(ms),
            idempotency_key: self.idempotency_key,
            correlation_id: self.correlation_id,
        };
        let spec = JobSpec {
            name: self.name,
            command,
            env: self.env,
            workdir: self.workdir,
            priority: self.priority,
            cpus: self.cpus,
            memory: self.mem.unwrap_or(0),
            labels: self.labels,
            timeout_ms,
            policy,
            secrets: self.secrets,
            secret_delivery: self.secret_delivery,
            owner: String::new(),
            max_output: self.max_output,
        };
        spec.validate()?;
        Ok(spec)
    }
}

fn parse_delivery(s: &str) -> Result<SecretDelivery, String> {
    match s {
        "files" => Ok(SecretDelivery::Files),
        "stdin" => Ok(SecretDelivery::Stdin),
        _ => Err(format!("unknown secret delivery {s:?}: use files or stdin")),
    }
}

/// Parses `1s..60s`.
fn parse_backoff(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("invalid backoff {s:?}: expected MIN..MAX, e.g. 1s..60s"))?;
    let d = |x: &str| {
        humantime::parse_duration(x.trim())
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .map_err(|e| format!("invalid backoff {s:?}: {e}"))
    };
    let (min, max) = (d(a)?, d(b)?);
    if min > max {
        return Err(format!("invalid backoff {s:?}: MIN is larger than MAX"));
    }
    Ok((min, max))
}

#[derive(Subcommand, Debug)]
pub enum WorkerCmd {
    /// List workers.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Drain a worker: no new jobs; running ones get --timeout to finish, then the agent
    /// kills them (they are retried elsewhere), reports and leaves.
    Drain {
        id: WorkerId,
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Cut a worker's agent off at once: revoke its certificates and close its connections
    /// (its jobs are retried elsewhere once it is lost).
    Revoke { id: WorkerId },
}

fn print_json(v: &serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// The first id of a `Submitted` answer.
fn first_submitted(replies: Vec<FromServer>) -> Option<JobId> {
    replies.into_iter().find_map(|m| {
        if let FromServer::Submitted { ids } = m {
            ids.first().copied()
        } else {
            None
        }
    })
}

fn one_job(replies: Vec<FromServer>) -> Result<JobRecord> {
    replies
        .into_iter()
        .find_map(|m| {
            if let FromServer::Job(j) = m {
                Some(*j)
            } else {
                None
            }
        })
        .context("the server sent no job")
}

/// Runs a `hodei job` command; returns the process exit code.
pub async fn job(cmd: JobCmd, target: &Target) -> Result<u8> {
    let client = target.connect().await?;
    match cmd {
        JobCmd::Submit(args) => {
            let (json, wait) = (args.json, args.wait);
            let spec = (*args).spec()?;
            if wait {
                let replies = client
                    .request(JobRequest::SubmitWait { specs: vec![spec] })
                    .await?;
                let job = one_job(replies)?;
                if json {
                    print_json(&view::job_json(&job))?;
                } else {
                    println!("{}", job.id);
                }
                return Ok(final_code(&job));
            }
            let replies = client
                .request(JobRequest::Submit { specs: vec![spec] })
                .await?;
            let id = first_submitted(replies).context("the server did not acknowledge the job")?;
            if json {
                let job = one_job(client.request(JobRequest::GetJob { job: id }).await?)?;
                print_json(&view::job_json(&job))?;
            } else {
                println!("{id}");
            }
        }
        JobCmd::Get { id, json } => {
            let job = one_job(client.request(JobRequest::GetJob { job: id }).await?)?;
            if json {
                print_json(&view::job_json(&job))?;
            } else {
                println!("{}\n{}", view::JOB_HEADER, view::job_row(&job));
                if let Some(e) = &job.error {
                    println!("error: {e}");
                }
            }
        }
        JobCmd::List { state, json } => {
            let mut jobs = Vec::new();
            for m in client.request(JobRequest::ListJobs { state }).await? {
                if let FromServer::Jobs(js) = m {
                    jobs.extend(js);
                }
            }
            if json {
                print_json(&serde_json::Value::Array(
                    jobs.iter().map(view::job_json).collect(),
                ))?;
            } else {
                println!("{}", view::JOB_HEADER);
                for j in &jobs {
                    println!("{}", view::job_row(j));
                }
            }
        }
        JobCmd::Cancel { id } => {
            let job = one_job(client.request(JobRequest::Cancel { job: id }).await?)?;
            println!("{} {}", job.id, job.state);
        }
        JobCmd::Logs { id, follow } => {
            let mut out = std::io::stdout().lock();
            let mut err = std::io::stderr().lock();
            client
                .stream(JobRequest::Logs { job: id, follow }, |m| {
                    match m {
                        FromServer::Log(chunks) => {
                            for c in chunks {
                                match c.stream {
                                    Stream::Stdout => out.write_all(&c.data)?,
                                    Stream::Stderr => err.write_all(&c.data)?,
                                }
                            }
                            out.flush()?;
                        }
                        FromServer::LogEnd => return Ok(false),
                        _ => {}
                    }
                    Ok(true)
                })
                .await?;
        }
        JobCmd::Retry { id } => {
            let replies = client.request(JobRequest::Retry { job: id }).await?;
            let new =
                first_submitted(replies).context("the server did not acknowledge the retry")?;
            println!("{new}");
        }
        JobCmd::Wait { ids, timeout } => return wait(&client, ids, timeout).await,
    }
    Ok(0)
}

async fn wait(client: &Client, ids: Vec<JobId>, timeout: Option<Duration>) -> Result<u8> {
    let waits = ids
        .iter()
        .map(|id| async move { one_job(client.request(JobRequest::Wait { job: *id }).await?) });
    let all = futures_join_all(waits);
    let results = match timeout {
        Some(t) => match tokio::time::timeout(t, all).await {
            Ok(r) => r,
            Err(_) => {
                eprintln!(
                    "hodei: timed out after {} waiting for {} job(s)",
                    humantime::format_duration(t),
                    ids.len()
                );
                return Ok(2);
            }
        },
        None => all.await,
    };
    let mut code = 0;
    for r in results {
        code = code.max(final_code(&r?));
    }
    Ok(code)
}

/// 0 for a job that succeeded; otherwise 1, saying how it ended on stderr.
fn final_code(job: &JobRecord) -> u8 {
    if job.state == JobState::Succeeded {
        return 0;
    }
    eprintln!(
        "{} {}{}",
        job.id,
        job.state,
        job.error
            .as_ref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    );
    1
}

/// Awaits every future concurrently (on the current task), in order.
async fn futures_join_all<F: std::future::Future>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let set: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut outs: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    let mut pending: Vec<(usize, std::pin::Pin<Box<F>>)> = set.into_iter().enumerate().collect();
    std::future::poll_fn(|cx| {
        pending.retain_mut(|(i, f)| match f.as_mut().poll(cx) {
            std::task::Poll::Ready(v) => {
                outs[*i] = Some(v);
                false
            }
            std::task::Poll::Pending => true,
        });
        if pending.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outs.into_iter().flatten().collect()
}

/// Runs a `hodei worker` command.
pub async fn worker(cmd: WorkerCmd, target: &Target) -> Result<u8> {
    let client = target.connect().await?;
    let json = match cmd {
        WorkerCmd::List { json } => json,
        WorkerCmd::Drain { id, timeout } => {
            let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            for m in client
                .request(JobRequest::DrainWorker {
                    worker: id,
                    timeout_ms,
                })
                .await?
            {
                if let FromServer::Workers(ws) = m {
                    for w in ws {
                        println!("{} {}", w.id, w.state);
                    }
                }
            }
            return Ok(0);
        }
        WorkerCmd::Revoke { id } => {
            client
                .request(ControlRequest::RevokeWorker { worker: id })
                .await?;
            eprintln!(
                "worker {id} revoked: its agent's certificates no longer work and its connections are closed"
            );
            return Ok(0);
        }
    };
    let mut workers = Vec::new();
    for m in client.request(JobRequest::ListWorkers).await? {
        if let FromServer::Workers(ws) = m {
            workers.extend(ws);
        }
    }
    if json {
        print_json(&serde_json::Value::Array(
            workers.iter().map(view::worker_json).collect(),
        ))?;
    } else {
        println!(
            "{:<12} {:<12} {:>5} {:>7} {:>4} HOST",
            "ID", "STATE", "SLOTS", "RUNNING", "CPUS"
        );
        for w in &workers {
            println!(
                "{:<12} {:<12} {:>5} {:>7} {:>4} {}",
                w.id, w.state, w.slots, w.running, w.cpus, w.hostname
            );
        }
    }
    Ok(0)
}

/// Runs `hodei stats`: the server's own figures, one per line (or one JSON object): timings
/// since the last reset, then what the shards hold now (jobs, workers, timers, and what
/// waiting or following clients registered).
pub async fn stats(reset: bool, json: bool, target: &Target) -> Result<u8> {
    let client = target.connect().await?;
    let mut figures = Vec::new();
    for m in client.request(ControlRequest::Stats { reset }).await? {
        if let FromServer::Stats(f) = m {
            figures.extend(f);
        }
    }
    if figures.is_empty() {
        anyhow::bail!("the server sent no figures");
    }
    if json {
        let obj: serde_json::Map<String, serde_json::Value> = figures
            .into_iter()
            .map(|f| (f.name, serde_json::Value::from(f.value)))
            .collect();
        print_json(&serde_json::Value::Object(obj))?;
    } else {
        for f in figures {
            // What the shards hold now follows the figures since the last reset.
            if f.name == "footprint_shards" {
                println!("\nheld now, summed over {} shards:", f.value);
                continue;
            }
            println!("{:<24} {}", f.name, f.value);
        }
    }
    Ok(0)
}
