//! Id newtypes. Job and worker ids are minted by the shard that owns them and carry that
//! shard in their top bits, so routing a message is reading its id.
//!
//! Layout of the `u64`: `shard:8 | epoch:20 | seq:36`. The epoch is the server start count
//! (persisted), so ids minted after a restart never collide with earlier ones without the
//! shard having to persist a counter per mint.

use std::fmt;
use std::str::FromStr;

/// Index of a shard (one pinned thread of the server).
pub type ShardIndex = u8;

const SHARD_SHIFT: u32 = 56;
const EPOCH_SHIFT: u32 = 36;
const EPOCH_MASK: u64 = (1 << 20) - 1;
const SEQ_MASK: u64 = (1 << 36) - 1;

/// An id string did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {kind} id {text:?}: expected {prefix}<shard>.<epoch>.<seq>, e.g. {prefix}0.1.42")]
pub struct ParseIdError {
    /// Which kind of id was expected.
    pub kind: &'static str,
    /// Its prefix letter.
    pub prefix: &'static str,
    /// The text that failed.
    pub text: String,
}

macro_rules! shard_id {
    ($(#[$doc:meta])* $name:ident, $archived:ident, $kind:literal, $prefix:literal) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
        )]
        #[rkyv(derive(Debug, PartialEq, Eq, Hash))]
        pub struct $name(pub u64);

        impl $name {
            /// Builds an id from its parts; `epoch` and `seq` are truncated to their widths.
            #[must_use]
            pub const fn new(shard: ShardIndex, epoch: u32, seq: u64) -> Self {
                Self(((shard as u64) << SHARD_SHIFT)
                    | (((epoch as u64) & EPOCH_MASK) << EPOCH_SHIFT)
                    | (seq & SEQ_MASK))
            }
            /// The shard that minted (and owns) this id.
            #[must_use]
            pub const fn shard(self) -> ShardIndex {
                (self.0 >> SHARD_SHIFT) as ShardIndex
            }
            /// The server start that minted it.
            #[must_use]
            pub const fn epoch(self) -> u32 {
                ((self.0 >> EPOCH_SHIFT) & EPOCH_MASK) as u32
            }
            /// Sequence number within shard and epoch.
            #[must_use]
            pub const fn seq(self) -> u64 {
                self.0 & SEQ_MASK
            }
            /// Shard that owns this id in a server running `shards` shards (ids minted under
            /// a larger shard count fold onto the current ones).
            #[must_use]
            pub fn owner(self, shards: usize) -> usize {
                usize::from(self.shard()) % shards.max(1)
            }
            /// Big-endian bytes: store keys sort by shard, epoch, seq.
            #[must_use]
            pub const fn to_be_bytes(self) -> [u8; 8] {
                self.0.to_be_bytes()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // pad() so that table columns ({:<12}) line up.
                f.pad(&format!(concat!($prefix, "{}.{}.{}"), self.shard(), self.epoch(), self.seq()))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl fmt::Display for $archived {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&$name(self.0.to_native()), f)
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let err = || ParseIdError { kind: $kind, prefix: $prefix, text: s.to_owned() };
                let rest = s.strip_prefix($prefix).ok_or_else(err)?;
                let mut parts = rest.split('.');
                let (Some(a), Some(b), Some(c), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return Err(err());
                };
                let shard: ShardIndex = a.parse().map_err(|_| err())?;
                let epoch: u32 = b.parse().map_err(|_| err())?;
                let seq: u64 = c.parse().map_err(|_| err())?;
                if u64::from(epoch) > EPOCH_MASK || seq > SEQ_MASK {
                    return Err(err());
                }
                Ok(Self::new(shard, epoch, seq))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

shard_id!(
    /// A job, owned by the shard that accepted its submission.
    JobId, ArchivedJobId, "job", "j"
);
shard_id!(
    /// A worker (a connected agent), owned by the shard it registered with.
    WorkerId, ArchivedWorkerId, "worker", "w"
);

/// The attempt number of a job: incremented on every assignment. A report carrying an older
/// attempt than the job's current one is stale and is never applied (fencing).
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Debug,
    Default,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq))]
pub struct Attempt(pub u32);

impl Attempt {
    /// The attempt after this one.
    #[must_use]
    pub const fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn job_id_round_trips(shard: u8, epoch in 0u32..(1 << 20), seq in 0u64..(1 << 36)) {
            let id = JobId::new(shard, epoch, seq);
            prop_assert_eq!(id.shard(), shard);
            prop_assert_eq!(id.epoch(), epoch);
            prop_assert_eq!(id.seq(), seq);
            prop_assert_eq!(id.to_string().parse::<JobId>(), Ok(id));
        }

        #[test]
        fn parsing_garbage_never_panics(s in ".*") {
            let _ = s.parse::<JobId>();
            let _ = s.parse::<WorkerId>();
        }
    }

    #[test]
    fn rejects_wrong_prefix_and_overflow() {
        assert!("w0.1.2".parse::<JobId>().is_err());
        assert!("j0.1".parse::<JobId>().is_err());
        assert!("j0.1.2.3".parse::<JobId>().is_err());
        assert!("j0.1048576.2".parse::<JobId>().is_err());
        assert!("j256.1.2".parse::<JobId>().is_err());
        assert_eq!(WorkerId::new(3, 2, 1).to_string(), "w3.2.1");
    }
}
