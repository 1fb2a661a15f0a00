//! Roles and what each may do.
//!
//! Every API token carries exactly one role. The server asks [`Role::allows`] before acting on
//! a request and [`Role::sees_all_jobs`] before listing or touching another user's job; the
//! ownership check itself is the server's, since only it knows who submitted a job.

use std::fmt;
use std::str::FromStr;

/// The role a token grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Operates the platform: every permission, every job.
    Admin,
    /// Submits jobs and reads or cancels its own.
    Submitter,
    /// Read-only view of every job, for dashboards and on-call.
    Reader,
    /// A worker host: may only join the fleet.
    Agent,
}

pub use hodei_core::request::Permission;

impl Role {
    /// Every role, in the order of their documentation.
    pub const ALL: [Role; 4] = [Role::Admin, Role::Submitter, Role::Reader, Role::Agent];

    /// Whether this role may do `p` at all (for a job, subject to [`Role::sees_all_jobs`]).
    pub fn allows(self, p: Permission) -> bool {
        use Permission as P;
        match self {
            Role::Admin => true,
            Role::Submitter => matches!(p, P::Read | P::Submit | P::Cancel),
            Role::Reader => matches!(p, P::Read),
            Role::Agent => matches!(p, P::Join),
        }
    }

    /// Whether this role acts on every job, or only on the jobs its own token submitted.
    pub fn sees_all_jobs(self) -> bool {
        matches!(self, Role::Admin | Role::Reader)
    }

    /// The lowercase name used on the command line, in files and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Submitter => "submitter",
            Role::Reader => "reader",
            Role::Agent => "agent",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of the four.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected one of admin, submitter, reader, agent")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    /// Parses a lowercase role name. Surrounding whitespace and letter case are forgiven, since
    /// names come from flags and files typed by people.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim();
        Role::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(name))
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Permission as P;

    /// The whole policy as one table: a change to it must change this test.
    #[test]
    fn permission_table() {
        let table: [(Role, &[Permission], bool); 4] = [
            (Role::Admin, &P::ALL, true),
            (Role::Submitter, &[P::Read, P::Submit, P::Cancel], false),
            (Role::Reader, &[P::Read], true),
            (Role::Agent, &[P::Join], false),
        ];
        for (role, allowed, all_jobs) in table {
            for p in P::ALL {
                assert_eq!(role.allows(p), allowed.contains(&p), "{role} {p:?}");
            }
            assert_eq!(role.sees_all_jobs(), all_jobs, "{role}");
        }
    }

    #[test]
    fn names_roundtrip() {
        for r in Role::ALL {
            assert_eq!(r.to_string().parse::<Role>(), Ok(r));
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{r}\""));
            assert_eq!(serde_json::from_str::<Role>(&json).unwrap(), r);
        }
        assert_eq!(" Admin\n".parse::<Role>(), Ok(Role::Admin));
    }

    #[test]
    fn unknown_role_lists_valid_names() {
        let err = "root".parse::<Role>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown role \"root\": expected one of admin, submitter, reader, agent"
        );
        assert!("".parse::<Role>().is_err());
    }
}
