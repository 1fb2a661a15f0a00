//! Who is calling, once their token checked out, and what each request needs them to be
//! allowed to do.

use hodei_auth::role::{Permission, Role};
use hodei_core::wire::{ErrorKind, FromServer, ToServer};

/// Who is calling, once their token checked out.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The token's name: the actor in the audit log and the owner of submitted jobs.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The token's id (0 for the server itself).
    pub token: u64,
}

impl Caller {
    /// The server itself (timers, restarts).
    #[must_use]
    pub fn server() -> Self {
        Self {
            name: "server".to_owned(),
            role: Role::Admin,
            token: 0,
        }
    }

    /// Refuses with the missing permission named.
    pub fn require(&self, p: Permission) -> Result<(), FromServer> {
        if self.role.allows(p) {
            return Ok(());
        }
        Err(FromServer::Error {
            kind: ErrorKind::Forbidden,
            message: format!(
                "permission denied: role {} lacks the {} permission",
                self.role,
                permission_name(p)
            ),
        })
    }
}

/// The permission a request needs.
#[must_use]
pub const fn permission_for(body: &ToServer) -> Permission {
    match body {
        ToServer::Submit { .. } | ToServer::SubmitWait { .. } => Permission::Submit,
        ToServer::GetJob { .. }
        | ToServer::ListJobs { .. }
        | ToServer::Logs { .. }
        | ToServer::Wait { .. }
        | ToServer::ListWorkers
        | ToServer::Events { .. }
        | ToServer::Stats { reset: false } => Permission::Read,
        // Restarting the figures spoils them for everyone else who reads them (a load test
        // resets at its steady phase): the fleet operator's call, not any reader's.
        ToServer::Stats { reset: true } => Permission::ManageWorkers,
        ToServer::Cancel { .. } | ToServer::Retry { .. } => Permission::Cancel,
        ToServer::DrainWorker { .. } | ToServer::RevokeWorker { .. } => Permission::ManageWorkers,
        ToServer::Join { .. } => Permission::Join,
        ToServer::RotateServerCert => Permission::ManageTokens,
        ToServer::CreateToken { .. } | ToServer::ListTokens | ToServer::RevokeToken { .. } => {
            Permission::ManageTokens
        }
        ToServer::SetSecret { .. } | ToServer::ListSecrets | ToServer::RemoveSecret { .. } => {
            Permission::ManageSecrets
        }
        ToServer::Audit { .. } | ToServer::AuditVerify => Permission::ReadAudit,
    }
}

const fn permission_name(p: Permission) -> &'static str {
    match p {
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
