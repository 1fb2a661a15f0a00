//! Control requests: answered by the server's control plane, never by a shard. Each one's
//! permission is stated here; the control plane writes the audit record of each that
//! changes something together with the change, since only the outcome names it (a new
//! token's id, a revoked identity).

use super::Permission;
use crate::ids::{JobId, WorkerId};
use crate::wire::SecretBytes;

/// A request about tokens, secrets, certificates, the audit log or the server's figures.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum ControlRequest {
    /// Create an API or join token (admin).
    CreateToken {
        /// Role name.
        role: String,
        /// Who it is for.
        name: String,
        /// Lifetime.
        ttl_ms: Option<u64>,
        /// How many times it may be used (join tokens).
        uses: Option<u32>,
    },
    /// List tokens (admin).
    ListTokens,
    /// Revoke a token by id (admin).
    RevokeToken {
        /// Its id (16 hex digits).
        id: String,
    },
    /// Set a secret (admin).
    SetSecret {
        /// Its name.
        name: String,
        /// Its value.
        value: SecretBytes,
    },
    /// List secrets, names only (admin).
    ListSecrets,
    /// Remove a secret (admin).
    RemoveSecret {
        /// Its name.
        name: String,
    },
    /// Audit records, filtered (admin).
    Audit {
        /// Only records about this job.
        job: Option<JobId>,
        /// Only records of this actor.
        actor: Option<String>,
        /// Only records at or after this time (ms since the epoch).
        since_ms: Option<u64>,
    },
    /// Check every audit chain (admin).
    AuditVerify,
    /// Join as an agent (with a join token): the server signs a client certificate for this
    /// raw P-256 public key (65 bytes, uncompressed).
    Join {
        /// The agent's public key.
        public_key: Vec<u8>,
    },
    /// Cut a worker's agent off at once: its certificates are revoked and its connections
    /// closed (admin).
    RevokeWorker {
        /// Worker.
        worker: WorkerId,
    },
    /// Issue the server a new certificate and present it from now on (admin).
    RotateServerCert,
    /// The server's own figures since the last reset (heartbeat handling time, store
    /// commit time); with `reset`, they start afresh after this answer.
    Stats {
        /// Start the figures afresh.
        reset: bool,
    },
}

impl ControlRequest {
    /// The permission the caller's role must grant.
    #[must_use]
    pub const fn permission(&self) -> Permission {
        match self {
            Self::Stats { reset: false } => Permission::Read,
            // Restarting the figures spoils them for everyone else who reads them (a load test
            // resets at its steady phase): the fleet operator's call, not any reader's.
            Self::Stats { reset: true } | Self::RevokeWorker { .. } => Permission::ManageWorkers,
            Self::Join { .. } => Permission::Join,
            Self::CreateToken { .. }
            | Self::ListTokens
            | Self::RevokeToken { .. }
            | Self::RotateServerCert => Permission::ManageTokens,
            Self::SetSecret { .. } | Self::ListSecrets | Self::RemoveSecret { .. } => {
                Permission::ManageSecrets
            }
            Self::Audit { .. } | Self::AuditVerify => Permission::ReadAudit,
        }
    }
}
