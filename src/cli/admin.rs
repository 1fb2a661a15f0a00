//! The `hodei token ...`, `hodei secret ...` and `hodei audit ...` commands: the server's
//! control plane, for admins.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use hodei_core::ids::JobId;
use hodei_core::wire::{ControlRequest, FromServer, SecretBytes};

use super::Target;

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create a token; prints it once (it is stored hashed).
    Create {
        /// admin, submitter, reader or agent.
        #[arg(long)]
        role: String,
        /// Who it is for: the actor in the audit log and the owner of the jobs it submits.
        #[arg(long)]
        name: Option<String>,
        /// Lifetime (e.g. 1h, 30d); default: no expiry.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// How many times it may be used (join tokens).
        #[arg(long)]
        uses: Option<u32>,
    },
    /// List tokens (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token at once.
    Revoke { id: String },
    /// Issue the server a new certificate and present it from now on, without a restart.
    RotateServerCert,
}

#[derive(Subcommand, Debug)]
pub enum SecretCmd {
    /// Set a secret; the value comes from stdin or --file, never from a flag.
    Set {
        name: String,
        /// Read the value from this file instead of stdin.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// List secret names.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a secret.
    Rm { name: String },
}

#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub cmd: Option<AuditCmd>,
    /// Only records about this job.
    #[arg(long)]
    pub job: Option<JobId>,
    /// Only records of this actor (a token's name, `agent@ADDR` or `server`).
    #[arg(long)]
    pub actor: Option<String>,
    /// Only records from this long ago (e.g. 1h) or later.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Check every audit chain; exits non-zero naming the first bad record.
    Verify,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub async fn token(cmd: TokenCmd, target: &Target) -> Result<u8> {
    let client = target.connect().await?;
    match cmd {
        TokenCmd::Create {
            role,
            name,
            ttl,
            uses,
        } => {
            let name = name.unwrap_or_else(|| role.clone());
            let body = ControlRequest::CreateToken {
                role,
                name,
                ttl_ms: ttl.map(ms),
                uses,
            };
            for m in client.request(body).await? {
                if let FromServer::Token { id, token } = m {
                    eprintln!("token {id} created; it is shown only now:");
                    println!("{token}");
                }
            }
        }
        TokenCmd::List { json } => {
            for m in client.request(ControlRequest::ListTokens).await? {
                let FromServer::Tokens(tokens) = m else {
                    continue;
                };
                if json {
                    for t in tokens {
                        println!(
                            "{}",
                            serde_json::json!({"id": t.id, "role": t.role, "name": t.name,
                                "created_at_ms": t.created_at_ms, "expires_at_ms": t.expires_at_ms,
                                "uses_left": t.uses_left, "revoked": t.revoked})
                        );
                    }
                    continue;
                }
                println!(
                    "{:<16}  {:<9}  {:<20}  {:<8}  {:<10}",
                    "ID", "ROLE", "NAME", "USES", "STATE"
                );
                let now = hodei_core::time::wall_now() / 1000;
                for t in tokens {
                    let state = if t.revoked {
                        "revoked"
                    } else if t.expires_at_ms.is_some_and(|e| e <= now) {
                        "expired"
                    } else {
                        "active"
                    };
                    let uses = t
                        .uses_left
                        .map_or_else(|| "-".to_owned(), |u| u.to_string());
                    println!(
                        "{:<16}  {:<9}  {:<20}  {:<8}  {:<10}",
                        t.id, t.role, t.name, uses, state
                    );
                }
            }
        }
        TokenCmd::RotateServerCert => {
            client.request(ControlRequest::RotateServerCert).await?;
            eprintln!("server certificate rotated; new connections see the new one");
        }
        TokenCmd::Revoke { id } => {
            client
                .request(ControlRequest::RevokeToken { id: id.clone() })
                .await?;
            eprintln!("token {id} revoked");
        }
    }
    Ok(0)
}

pub async fn secret(cmd: SecretCmd, target: &Target) -> Result<u8> {
    match cmd {
        SecretCmd::Set { name, file } => {
            let mut value = Vec::new();
            match &file {
                Some(p) => {
                    value =
                        std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
                }
                None => {
                    std::io::stdin()
                        .read_to_end(&mut value)
                        .context("cannot read the secret from stdin")?;
                    // `echo value | hodei secret set X` should not store the newline.
                    if value.ends_with(b"\n") {
                        value.pop();
                        if value.ends_with(b"\r") {
                            value.pop();
                        }
                    }
                }
            }
            if value.is_empty() {
                bail!("empty secret value: pipe it on stdin or pass --file");
            }
            let client = target.connect().await?;
            let body = ControlRequest::SetSecret {
                name: name.clone(),
                value: SecretBytes(value),
            };
            client.request(body).await?;
            eprintln!("secret {name} set");
        }
        SecretCmd::List { json } => {
            let client = target.connect().await?;
            for m in client.request(ControlRequest::ListSecrets).await? {
                let FromServer::Secrets(list) = m else {
                    continue;
                };
                for s in list {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"name": s.name, "updated_at_ms": s.updated_at_ms,
                                "updated_by": s.updated_by})
                        );
                    } else {
                        println!("{:<32}  by {}", s.name, s.updated_by);
                    }
                }
            }
        }
        SecretCmd::Rm { name } => {
            let client = target.connect().await?;
            client
                .request(ControlRequest::RemoveSecret { name: name.clone() })
                .await?;
            eprintln!("secret {name} removed");
        }
    }
    Ok(0)
}

pub async fn audit(args: AuditArgs, target: &Target) -> Result<u8> {
    let client = target.connect().await?;
    if let Some(AuditCmd::Verify) = args.cmd {
        for m in client.request(ControlRequest::AuditVerify).await? {
            if let FromServer::AuditVerified { records, chains } = m {
                println!("audit log intact: {records} records in {chains} chains");
            }
        }
        return Ok(0);
    }
    let since_ms = args
        .since
        .map(|d| (hodei_core::time::wall_now() / 1000).saturating_sub(ms(d)));
    let body = ControlRequest::Audit {
        job: args.job,
        actor: args.actor,
        since_ms,
    };
    client
        .stream(body, |m| {
            if let FromServer::AuditRecords(lines) = m {
                for l in lines {
                    if args.json {
                        println!("{l}");
                    } else {
                        print_record(&l)?;
                    }
                }
            }
            Ok(true)
        })
        .await?;
    Ok(0)
}

fn print_record(line: &str) -> Result<()> {
    let r: hodei_auth::audit::AuditRecord =
        serde_json::from_str(line).context("the server sent a malformed audit record")?;
    let at = super::view::time_text(r.at_ms.saturating_mul(1000));
    println!(
        "{at}  {:>6}:{:<6}  {:<18}  {:<20}  {:<16}  {}",
        if r.chain == u16::MAX {
            "ctl".to_owned()
        } else {
            format!("s{}", r.chain)
        },
        r.seq,
        r.actor,
        r.action,
        r.subject,
        r.detail
    );
    Ok(())
}
