//! What a user submits: [`JobSpec`], and the checks every submission passes before it is
//! stored. The server validates again on receipt: a spec that arrives over the wire is
//! untrusted input.

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Command {
    /// A program and its arguments, executed directly (no shell).
    Exec {
        /// Program name or path, looked up in `PATH`.
        program: String,
        /// Arguments.
        args: Vec<String>,
    },
    /// A bash script: written to a file with a `set -euo pipefail` header and executed.
    Script {
        /// Script body.
        body: String,
    },
}

impl Command {
    /// A one-line rendering for listings.
    #[must_use]
    pub fn display(&self) -> String {
        match self {
            Self::Exec { program, args } => {
                let mut s = program.clone();
                for a in args {
                    s.push(' ');
                    if a.is_empty() || a.contains(char::is_whitespace) {
                        s.push('\'');
                        s.push_str(a);
                        s.push('\'');
                    } else {
                        s.push_str(a);
                    }
                }
                s
            }
            Self::Script { body } => {
                let first = body.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                format!("script: {}", first.trim())
            }
        }
    }
}

/// A job as submitted.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct JobSpec {
    /// Human name (may be empty).
    pub name: String,
    /// What to run.
    pub command: Command,
    /// Environment variables added to the agent's environment.
    pub env: Vec<(String, String)>,
    /// Working directory on the agent, created if missing; the agent's per-job dir if unset.
    pub workdir: Option<String>,
    /// Higher runs first.
    pub priority: i32,
    /// CPUs reserved on the agent (0 reserves none).
    pub cpus: u32,
    /// Memory reserved on the agent, in bytes (0 reserves none).
    pub memory: u64,
    /// Labels the agent must carry (`key=value`, all must match).
    pub labels: Vec<(String, String)>,
    /// Run-time limit in milliseconds; the whole process group is killed past it.
    pub timeout_ms: Option<u64>,
    /// Retries, queue deadline, idempotency and tracing.
    pub policy: Policy,
    /// Names of the secrets the job needs. Their values never enter the spec, the store or
    /// a log line: the server adds them to the agent's `Assign` only.
    pub secrets: Vec<String>,
    /// How the process receives its secrets.
    pub secret_delivery: SecretDelivery,
    /// Who submitted it (the token's name); set by the server, whatever the client sent.
    pub owner: String,
    /// Output bytes kept per attempt (1 to [`limits::MAX_OUTPUT`]); past it the agent drops
    /// the rest, and the output ends with a line saying how much was cut. `None`:
    /// [`DEFAULT_MAX_OUTPUT`] ([`JobSpec::output_limit`]).
    pub max_output: Option<u64>,
}

/// The output kept per attempt of a spec without `max_output`.
pub const DEFAULT_MAX_OUTPUT: u64 = 1 << 30;

/// How a job's process receives its secrets.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub enum SecretDelivery {
    /// Files named after each secret in a private directory (mode 0700, files 0600, on
    /// tmpfs where available, removed after the job), whose path is `HODEI_SECRETS_DIR`.
    #[default]
    Files,
    /// One JSON object `{"NAME": "value"}` on the process's stdin.
    Stdin,
}

/// Checks a secret name: 1 to 64 of `[A-Za-z0-9_.-]`, not starting with a dot (it names a
/// file in the job's secrets directory).
///
/// # Errors
/// [`SpecError::BadSecretName`].
pub fn check_secret_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(SpecError::BadSecretName(name.to_owned()))
    }
}

/// Which endings of an attempt are retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct RetryOn(pub u8);

impl RetryOn {
    /// A non-zero exit, a signal, or a failed start.
    pub const EXIT: Self = Self(1);
    /// The agent was lost (or drained) with the attempt on it.
    pub const LOST: Self = Self(2);
    /// The attempt hit its time limit.
    pub const TIMEOUT: Self = Self(4);

    /// True if every class in `other` is in `self`.
    #[must_use]
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    /// Parses `exit`, `lost`, `timeout`, comma-separated (`exit,lost`), or `none`.
    ///
    /// # Errors
    /// On an unknown class.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut v = 0;
        for part in s.split(',').map(str::trim) {
            v |= match part {
                "exit" => Self::EXIT.0,
                "lost" => Self::LOST.0,
                "timeout" => Self::TIMEOUT.0,
                "none" => 0,
                _ => {
                    return Err(format!(
                        "unknown retry class {part:?}: use exit, lost, timeout (comma-separated) or none"
                    ));
                }
            };
        }
        Ok(Self(v))
    }

    /// `exit,lost,...` as parsed.
    #[must_use]
    pub fn names(self) -> Vec<&'static str> {
        [
            (Self::EXIT, "exit"),
            (Self::LOST, "lost"),
            (Self::TIMEOUT, "timeout"),
        ]
        .into_iter()
        .filter(|(c, _)| self.contains(*c))
        .map(|(_, n)| n)
        .collect()
    }
}

/// How a job is retried, how long it may queue, how it is deduplicated and traced.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Policy {
    /// Attempts after the first one.
    pub retries: u32,
    /// Which endings are retried.
    pub retry_on: RetryOn,
    /// First retry delay; doubles per attempt (with jitter) up to `backoff_max_ms`.
    pub backoff_min_ms: u64,
    /// Cap of the retry delay.
    pub backoff_max_ms: u64,
    /// A job that has not started this long after submission ends timed out.
    pub queue_timeout_ms: Option<u64>,
    /// A second submit with the same key returns the first job.
    pub idempotency_key: Option<String>,
    /// Carried in every log line and event about the job (generated if empty).
    pub correlation_id: String,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            retries: 3,
            retry_on: RetryOn::LOST,
            backoff_min_ms: 1_000,
            backoff_max_ms: 60_000,
            queue_timeout_ms: None,
            idempotency_key: None,
            correlation_id: String::new(),
        }
    }
}

impl Policy {
    /// Delay before attempt `next` (2, 3, ...): exponential from the minimum, capped, with
    /// ±25 % jitter derived from `seed` so that the shard stays deterministic.
    #[must_use]
    pub fn backoff_ms(&self, next: u32, seed: u64) -> u64 {
        let exp = next.saturating_sub(2).min(32);
        let base = self
            .backoff_min_ms
            .saturating_mul(1u64 << exp)
            .min(self.backoff_max_ms);
        // splitmix64 of the seed: cheap, well spread.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let quarter = base / 4;
        if quarter == 0 {
            return base;
        }
        // Saturating: found by fuzzing (spec_backoff), a base near u64::MAX overflowed.
        (base - quarter)
            .saturating_add(z % (2 * quarter + 1))
            .min(self.backoff_max_ms.max(self.backoff_min_ms))
    }
}

impl JobSpec {
    /// A spec running `program args...` with every other field at its default.
    #[must_use]
    pub fn exec(program: &str, args: &[&str]) -> Self {
        Self {
            name: String::new(),
            command: Command::Exec {
                program: program.to_owned(),
                args: args.iter().map(|a| (*a).to_owned()).collect(),
            },
            env: Vec::new(),
            workdir: None,
            priority: 0,
            cpus: 0,
            memory: 0,
            labels: Vec::new(),
            timeout_ms: None,
            policy: Policy::default(),
            secrets: Vec::new(),
            secret_delivery: SecretDelivery::Files,
            owner: String::new(),
            max_output: None,
        }
    }

    /// Output bytes kept per attempt: `max_output`, or [`DEFAULT_MAX_OUTPUT`].
    #[must_use]
    pub fn output_limit(&self) -> u64 {
        self.max_output.unwrap_or(DEFAULT_MAX_OUTPUT)
    }

    /// Checks a spec; the server refuses any spec that fails.
    ///
    /// # Errors
    /// The first problem found.
    pub fn validate(&self) -> Result<(), SpecError> {
        self.check_sizes()?;
        match &self.command {
            Command::Exec { program, args } => {
                if program.trim().is_empty() {
                    return Err(SpecError::EmptyCommand);
                }
                if program.contains('\0') || args.iter().any(|a| a.contains('\0')) {
                    return Err(SpecError::NulByte("command"));
                }
            }
            Command::Script { body } => {
                if body.trim().is_empty() {
                    return Err(SpecError::EmptyScript);
                }
                if body.contains('\0') {
                    return Err(SpecError::NulByte("script"));
                }
            }
        }
        for (k, v) in &self.env {
            let valid = !k.is_empty()
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(SpecError::BadEnvName(k.clone()));
            }
            if v.contains('\0') {
                return Err(SpecError::NulByte("environment value"));
            }
        }
        for (k, _) in &self.labels {
            if k.is_empty() {
                return Err(SpecError::BadLabel);
            }
        }
        if let Some(dir) = &self.workdir
            && (dir.is_empty() || dir.contains('\0'))
        {
            return Err(SpecError::BadWorkdir);
        }
        for name in &self.secrets {
            check_secret_name(name)?;
        }
        if self.secrets.len() > MAX_SECRETS {
            return Err(SpecError::TooManySecrets(MAX_SECRETS));
        }
        if self.owner.len() > MAX_NAME {
            return Err(SpecError::TooLong("owner", MAX_NAME));
        }
        if self
            .max_output
            .is_some_and(|m| m == 0 || m > limits::MAX_OUTPUT)
        {
            return Err(SpecError::BadMaxOutput(limits::MAX_OUTPUT));
        }
        if self.timeout_ms == Some(0) || self.policy.queue_timeout_ms == Some(0) {
            return Err(SpecError::ZeroTimeout);
        }
        if self.policy.backoff_min_ms > self.policy.backoff_max_ms
            || self.policy.backoff_max_ms > MAX_DURATION_MS
        {
            return Err(SpecError::BadBackoff);
        }
        if [self.timeout_ms, self.policy.queue_timeout_ms]
            .iter()
            .flatten()
            .any(|t| *t > MAX_DURATION_MS)
        {
            return Err(SpecError::TooLongDuration);
        }
        if self
            .policy
            .idempotency_key
            .as_ref()
            .is_some_and(|k| k.is_empty() || k.len() > MAX_NAME)
            || self.policy.correlation_id.len() > MAX_NAME
        {
            return Err(SpecError::TooLong(
                "idempotency key or correlation id (or it is empty)",
                MAX_NAME,
            ));
        }
        Ok(())
    }
}

/// The size limits of a spec, field by field. Together they keep a job's stored record (its
/// spec, plus at most [`crate::job::MAX_ERROR`] of error text and fixed-size fields) far below
/// the frame limit ([`crate::frame::MAX_FRAME`], which the store's records share), so a spec
/// accepted at submit can always be stored, assigned and read back. The command line and
/// environment together also stay below Linux's `ARG_MAX` (2 MiB).
pub mod limits {
    /// The program, the working directory, and each label key and value.
    pub const MAX_PATH: usize = 4096;
    /// Arguments of a command.
    pub const MAX_ARGS: usize = 4096;
    /// Program and arguments together, in bytes.
    pub const MAX_COMMAND_BYTES: usize = 1 << 20;
    /// A script's body.
    pub const MAX_SCRIPT_BYTES: usize = 1 << 20;
    /// Environment variables.
    pub const MAX_ENV: usize = 4096;
    /// Environment names and values together, in bytes.
    pub const MAX_ENV_BYTES: usize = 512 << 10;
    /// Labels a job asks for.
    pub const MAX_LABELS: usize = 64;
    /// Secrets a job uses.
    pub const MAX_SECRETS: usize = 64;
    /// A secret's value. With [`MAX_SECRETS`] of them, an assignment (the spec plus its
    /// secrets' values, joined as it leaves for its agent) still fits in a frame.
    pub const MAX_SECRET_BYTES: usize = 64 << 10;
    /// The largest `max_output`: output kept per attempt.
    pub const MAX_OUTPUT: u64 = 1 << 40;
}

use limits::{
    MAX_ARGS, MAX_COMMAND_BYTES, MAX_ENV, MAX_ENV_BYTES, MAX_LABELS, MAX_PATH, MAX_SCRIPT_BYTES,
    MAX_SECRETS,
};

impl JobSpec {
    /// Refuses a spec with a field over its limit ([`limits`]), naming the field.
    fn check_sizes(&self) -> Result<(), SpecError> {
        let too_long = |field, max, len: usize| {
            if len > max {
                Err(SpecError::TooLong(field, max))
            } else {
                Ok(())
            }
        };
        let too_many = |field, max, n: usize| {
            if n > max {
                Err(SpecError::TooMany(field, max))
            } else {
                Ok(())
            }
        };
        match &self.command {
            Command::Exec { program, args } => {
                too_long("program", MAX_PATH, program.len())?;
                too_many("arguments", MAX_ARGS, args.len())?;
                let bytes = args
                    .iter()
                    .fold(program.len(), |n, a| n.saturating_add(a.len()));
                too_long("command line", MAX_COMMAND_BYTES, bytes)?;
            }
            Command::Script { body } => too_long("script", MAX_SCRIPT_BYTES, body.len())?,
        }
        too_long("name", MAX_NAME, self.name.len())?;
        too_many("environment variables", MAX_ENV, self.env.len())?;
        let env = self.env.iter().fold(0usize, |n, (k, v)| {
            n.saturating_add(k.len()).saturating_add(v.len())
        });
        too_long("environment", MAX_ENV_BYTES, env)?;
        too_many("labels", MAX_LABELS, self.labels.len())?;
        for (k, v) in &self.labels {
            too_long("label", MAX_PATH, k.len().max(v.len()))?;
        }
        too_long(
            "working directory",
            MAX_PATH,
            self.workdir.as_ref().map_or(0, String::len),
        )
    }
}

const MAX_NAME: usize = 256;
/// Timeouts and backoffs are bounded (a year), so deadlines never overflow a clock.
const MAX_DURATION_MS: u64 = 365 * 24 * 3600 * 1000;

/// Why a spec was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// A secret name that cannot name a file.
    #[error("bad secret name {0:?}: use 1 to 64 of A-Z a-z 0-9 _ - . (not starting with a dot)")]
    BadSecretName(String),
    /// A timeout beyond a year.
    #[error("timeouts are limited to 365 days")]
    TooLongDuration,
    /// Too many secrets.
    #[error("a job can use at most {0} secrets")]
    TooManySecrets(usize),
    /// The program name is empty.
    #[error("the command is empty")]
    EmptyCommand,
    /// The script body is empty.
    #[error("the script is empty")]
    EmptyScript,
    /// A field contains a NUL byte, which no process can receive.
    #[error("the {0} contains a NUL byte")]
    NulByte(&'static str),
    /// A field is longer than allowed.
    #[error("the {0} is longer than {1} bytes")]
    TooLong(&'static str, usize),
    /// A list has more entries than allowed.
    #[error("a job can have at most {1} {0}")]
    TooMany(&'static str, usize),
    /// An environment variable name is not `[A-Za-z_][A-Za-z0-9_]*`.
    #[error("invalid environment variable name {0:?}")]
    BadEnvName(String),
    /// A label has an empty key.
    #[error("a label has an empty key")]
    BadLabel,
    /// The working directory is empty or contains NUL.
    #[error("invalid working directory")]
    BadWorkdir,
    /// A timeout of zero would kill the job before it starts.
    #[error("the timeout must be greater than zero")]
    ZeroTimeout,
    /// The backoff range is inverted.
    #[error("the backoff minimum is larger than its maximum, or the maximum is over 365 days")]
    BadBackoff,
    /// `max_output` is 0 or above [`limits::MAX_OUTPUT`].
    #[error("the output limit must be between 1 byte and {0} bytes")]
    BadMaxOutput(u64),
}

/// Parses `key=value`.
///
/// # Errors
/// When there is no `=` or the key is empty.
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Parses a memory size: `512`, `64K`, `512M`, `2G`, `1T` (binary units, optional `i`/`B`).
///
/// # Errors
/// When the number or unit is not recognised, or the value overflows.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. 512M or 2G"))?;
    let mult: u64 = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches('B')
        .trim_end_matches('I')
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {unit:?} (use K, M, G or T)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spec with every field at its limit.
    fn largest() -> JobSpec {
        let arg = "a".repeat(MAX_COMMAND_BYTES / MAX_ARGS - 1);
        let args: Vec<&str> = vec![arg.as_str(); MAX_ARGS];
        let mut s = JobSpec::exec("p", &args);
        let value = "v".repeat(MAX_ENV_BYTES / MAX_ENV - 8);
        s.env = (0..MAX_ENV)
            .map(|i| (format!("V{i:06}"), value.clone()))
            .collect();
        s.labels = (0..MAX_LABELS)
            .map(|i| (format!("{i:0>4096}"), "x".repeat(MAX_PATH)))
            .collect();
        s.workdir = Some("w".repeat(MAX_PATH));
        s.name = "n".repeat(MAX_NAME);
        s.secrets = (0..MAX_SECRETS).map(|i| format!("S{i:063}")).collect();
        s
    }

    /// Every limit holds at its value and refuses one more, naming the field; a spec at
    /// every limit, stored with the longest error, still fits in a frame.
    #[test]
    fn every_field_has_a_limit_and_the_largest_spec_is_storable() {
        use crate::frame::{MAX_FRAME, Wire};
        let big = largest();
        assert_eq!(big.validate(), Ok(()));
        let refused = |f: &dyn Fn(&mut JobSpec)| {
            let mut s = big.clone();
            f(&mut s);
            s.validate().err().map(|e| e.to_string())
        };
        type Change<'a> = &'a dyn Fn(&mut JobSpec);
        let cases: [(Change, &str); 9] = [
            (
                &|s| {
                    s.command = Command::Exec {
                        program: "p".repeat(MAX_PATH + 1),
                        args: vec![],
                    }
                },
                "program",
            ),
            (
                &|s| {
                    if let Command::Exec { args, .. } = &mut s.command {
                        args.push(String::new())
                    }
                },
                "arguments",
            ),
            (
                &|s| {
                    if let Command::Exec { args, .. } = &mut s.command {
                        args[0].push_str(&"a".repeat(MAX_ARGS))
                    }
                },
                "command line",
            ),
            (
                &|s| {
                    s.command = Command::Script {
                        body: "x".repeat(MAX_SCRIPT_BYTES + 1),
                    }
                },
                "script",
            ),
            (
                &|s| s.env.push(("X".into(), String::new())),
                "environment variables",
            ),
            (
                &|s| s.env[0].1.push_str(&"v".repeat(MAX_ENV * 8)),
                "environment",
            ),
            (&|s| s.labels.push(("k".into(), "v".into())), "labels"),
            (&|s| s.labels[0].1.push('x'), "label"),
            (
                &|s| s.workdir = Some("w".repeat(MAX_PATH + 1)),
                "working directory",
            ),
        ];
        for (change, field) in cases {
            let err = refused(change);
            assert!(
                err.as_deref().is_some_and(|e| e.contains(field)),
                "{field}: {err:?}"
            );
        }
        let mut rec = crate::job::JobRecord::new(crate::ids::JobId::new(0, 1, 1), big, 0);
        rec.error = crate::job::Outcome::SpawnFailed("e".repeat(10 << 20)).error();
        assert!(
            rec.error
                .as_ref()
                .is_some_and(|e| e.len() <= crate::job::MAX_ERROR)
        );
        let mut frame = Vec::new();
        rec.encode_into(&mut frame)
            .map_err(|e| e.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(frame.len() < MAX_FRAME / 2, "{} bytes", frame.len());
        // Its assignment, with every secret at its largest value, fits in a frame too.
        let assign = crate::wire::ToAgent::Assign {
            job: rec.id,
            attempt: crate::ids::Attempt(1),
            secrets: rec
                .spec
                .secrets
                .iter()
                .map(|name| crate::wire::SecretValue {
                    name: name.clone(),
                    value: vec![0xff; limits::MAX_SECRET_BYTES],
                })
                .collect(),
            spec: rec.spec,
        };
        frame.clear();
        assign
            .encode_into(&mut frame)
            .map_err(|e| e.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(frame.len() < MAX_FRAME, "{} bytes", frame.len());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999999999T").is_err());
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let p = Policy::default();
        let d2 = p.backoff_ms(2, 7);
        assert!((750..=1_250).contains(&d2), "{d2}");
        let d3 = p.backoff_ms(3, 7);
        assert!((1_500..=2_500).contains(&d3), "{d3}");
        assert!(p.backoff_ms(40, 7) <= 60_000);
        assert!(p.backoff_ms(40, 7) >= 45_000);
        assert_eq!(RetryOn::parse("exit,lost"), Ok(RetryOn(3)));
        assert!(RetryOn::parse("sometimes").is_err());
        assert!(RetryOn::LOST.contains(RetryOn::LOST) && !RetryOn::LOST.contains(RetryOn::EXIT));
    }

    #[test]
    fn validation() {
        assert_eq!(
            JobSpec::exec(" ", &[]).validate(),
            Err(SpecError::EmptyCommand)
        );
        let mut s = JobSpec::exec("true", &[]);
        assert_eq!(s.validate(), Ok(()));
        s.env.push(("1X".into(), "v".into()));
        assert!(matches!(s.validate(), Err(SpecError::BadEnvName(_))));
        assert_eq!(parse_key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_key_value("=x").is_err());
        let mut s = JobSpec::exec("true", &[]);
        assert_eq!(s.output_limit(), DEFAULT_MAX_OUTPUT);
        s.max_output = Some(limits::MAX_OUTPUT);
        assert_eq!(s.validate(), Ok(()));
        for bad in [0, limits::MAX_OUTPUT + 1] {
            s.max_output = Some(bad);
            assert_eq!(
                s.validate(),
                Err(SpecError::BadMaxOutput(limits::MAX_OUTPUT))
            );
        }
    }
}
