//! Client → server requests. A [`ToServer`] is either a [`JobRequest`], answered by the shards
//! (jobs, workers, events), or a [`ControlRequest`], answered by the server's control plane
//! (tokens, secrets, certificates, the audit log, the server's figures). The split is in the
//! type: a shard is never handed a control request.
//!
//! Each request type says, next to its fields, what it needs: the [`Permission`] its caller's
//! role must grant ([`ToServer::permission`]), and for a job request where it is answered
//! ([`JobRequest::route`]) and the audit record of the call ([`JobRequest::audit`]). Adding a
//! request means adding its variant and those answers in its file, and its handler.

mod control;
mod job;

pub use control::ControlRequest;
pub use job::{AuditCall, JobRequest, Route};

/// Client → server. One request per stream.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum ToServer {
    /// Jobs, workers and events: answered by the shards.
    Job(JobRequest),
    /// Tokens, secrets, certificates, audit, figures: answered by the control plane.
    Control(ControlRequest),
}

impl ToServer {
    /// The permission the caller's role must grant.
    #[must_use]
    pub const fn permission(&self) -> Permission {
        match self {
            Self::Job(r) => r.permission(),
            Self::Control(r) => r.permission(),
        }
    }
}

impl From<JobRequest> for ToServer {
    fn from(r: JobRequest) -> Self {
        Self::Job(r)
    }
}

impl From<ControlRequest> for ToServer {
    fn from(r: ControlRequest) -> Self {
        Self::Control(r)
    }
}

/// One thing a request may need to be allowed to do. Roles grant permissions
/// (`hodei_auth::role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Get, list, wait for and read the logs of jobs.
    Read,
    /// Submit jobs.
    Submit,
    /// Cancel jobs.
    Cancel,
    /// Drain, disable or remove workers; reset the server's own figures (`hodei stats`).
    ManageWorkers,
    /// Create, replace and delete secrets.
    ManageSecrets,
    /// Create, list and revoke API tokens.
    ManageTokens,
    /// Read and verify the audit log.
    ReadAudit,
    /// Register as an agent and receive jobs.
    Join,
}

impl Permission {
    /// Every permission.
    pub const ALL: [Permission; 8] = [
        Permission::Read,
        Permission::Submit,
        Permission::Cancel,
        Permission::ManageWorkers,
        Permission::ManageSecrets,
        Permission::ManageTokens,
        Permission::ReadAudit,
        Permission::Join,
    ];

    /// Its name in messages (`manage-workers`).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Submit => "submit",
            Permission::Cancel => "cancel",
            Permission::ManageWorkers => "manage-workers",
            Permission::ManageSecrets => "manage-secrets",
            Permission::ManageTokens => "manage-tokens",
            Permission::ReadAudit => "read-audit",
            Permission::Join => "join",
        }
    }
}
