//! Who is calling, once their token checked out, and the check of what they may do (what
//! each request needs is stated with the request, `hodei_core::request`).

use hodei_auth::role::{Permission, Role};
use hodei_core::wire::{ErrorKind, FromServer};

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
                p.name()
            ),
        })
    }
}
