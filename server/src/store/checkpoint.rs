//! Audit checkpoints: how a chain whose oldest records retention deleted still verifies,
//! and why nobody else can cut it so.
//!
//! Before deleting a chain's records below seq `n`, retention writes, in the same atomic
//! batch, a checkpoint: `n` (so `n` records went), the hash of record `n - 1` (what record
//! `n` chains to), and a seal. The seal is an audit record that is never part of the chain:
//! action `audit.checkpoint`, at position (chain, `n`, that hash), hashed with the chain's
//! key (HMAC under a key derived from `secrets.key`, outside the store). No chain record has
//! that action, so no stored record can stand in for a seal, and without the key nobody can
//! make one: whoever rewrites the store can delete records, but not write the checkpoint
//! that makes `hodei audit verify` accept their absence. A chain that lost records without
//! one still fails, at its first missing record.
//!
//! Stored in `meta` under `audit-checkpoint:` and the chain (2 bytes, big-endian):
//! `1 (version) | n (8, big-endian) | prev hash (32) | the seal in the audit encoding`.

use anyhow::{Context, Result, bail};
use hodei_auth::audit::{self, AuditKey, AuditRecord, Position};

use super::Store;

/// The action of a seal; no chain record has it.
const ACTION: &str = "audit.checkpoint";
/// The first byte of a stored checkpoint.
const VERSION: u8 = 1;
/// The prefix of the checkpoint keys in `meta`.
const PREFIX: &[u8] = b"audit-checkpoint:";

/// Where a chain starts after retention deleted its oldest records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The chain.
    pub chain: u16,
    /// Seq of the first record kept: this many records were deleted.
    pub seq: u64,
    /// Hash of the last record deleted (record `seq` chains to it).
    pub prev: [u8; 32],
    /// The seal (see the module docs).
    seal: AuditRecord,
}

impl Checkpoint {
    /// A sealed checkpoint of `chain` before `seq`, whose record `seq - 1` hashed to `prev`.
    #[must_use]
    pub fn seal(chain: u16, seq: u64, prev: [u8; 32], at_ms: u64, key: &AuditKey) -> Self {
        let mut seal = AuditRecord {
            chain,
            seq,
            at_ms,
            actor: "server".to_owned(),
            action: ACTION.to_owned(),
            subject: String::new(),
            correlation_id: String::new(),
            detail: format!(
                "records 0 to {} deleted by retention",
                seq.saturating_sub(1)
            ),
            prev,
            hash: [0; 32],
        };
        seal.hash = seal.compute_hash_with(Some(key));
        Self {
            chain,
            seq,
            prev,
            seal,
        }
    }

    /// Whether `key` sealed it: the seal sits where the checkpoint says and its hash is the
    /// keyed hash of its fields.
    pub fn check(&self, key: &AuditKey) -> Result<()> {
        let s = &self.seal;
        if s.action != ACTION || (s.chain, s.seq, s.prev) != (self.chain, self.seq, self.prev) {
            bail!("its seal is not a checkpoint's");
        }
        if s.compute_hash_with(Some(key)) != s.hash {
            bail!("its seal does not verify (forged or damaged)");
        }
        Ok(())
    }

    /// When it was taken (ms since the epoch).
    #[must_use]
    pub fn at_ms(&self) -> u64 {
        self.seal.at_ms
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(1 + 8 + 32 + 96);
        v.push(VERSION);
        v.extend_from_slice(&self.seq.to_be_bytes());
        v.extend_from_slice(&self.prev);
        audit::encode_into(&self.seal, &mut v);
        v
    }

    fn decode(chain: u16, b: &[u8]) -> Result<Self> {
        let (&version, rest) = b.split_first().context("empty")?;
        if version != VERSION {
            bail!("unknown version {version}");
        }
        let seq: [u8; 8] = rest
            .get(..8)
            .and_then(|s| s.try_into().ok())
            .context("short")?;
        let prev: [u8; 32] = rest
            .get(8..40)
            .and_then(|s| s.try_into().ok())
            .context("short")?;
        let seq = u64::from_be_bytes(seq);
        let at = Position { chain, seq, prev };
        let seal = audit::decode(rest.get(40..).unwrap_or_default(), &at)?;
        Ok(Self {
            chain,
            seq,
            prev,
            seal,
        })
    }
}

/// The key of a chain's checkpoint in `meta`.
pub(super) fn checkpoint_key(chain: u16) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    k.extend_from_slice(&chain.to_be_bytes());
    k
}

impl Store {
    /// A chain's checkpoint, if retention deleted records of it (not checked: see
    /// [`Checkpoint::check`]). A stored one that cannot be decoded is an error naming the
    /// chain.
    pub fn audit_checkpoint(&self, chain: u16) -> Result<Option<Checkpoint>> {
        let Some(v) = self
            .meta
            .get(checkpoint_key(chain))
            .context("cannot read the audit checkpoints")?
        else {
            return Ok(None);
        };
        Checkpoint::decode(chain, &v)
            .map(Some)
            .with_context(|| format!("the checkpoint of audit chain {chain} is damaged"))
    }

    /// The chains that have a checkpoint.
    pub fn checkpointed_chains(&self) -> Result<Vec<u16>> {
        let mut out = Vec::new();
        for kv in self.meta.prefix(PREFIX) {
            let (k, _) = kv
                .into_inner()
                .context("cannot read the audit checkpoints")?;
            let chain: [u8; 2] = k
                .get(PREFIX.len()..)
                .and_then(|s| s.try_into().ok())
                .context("corrupt audit checkpoint key")?;
            out.push(u16::from_be_bytes(chain));
        }
        Ok(out)
    }

    /// A chain's checkpoint and records read in one snapshot, so that a trim cannot fall
    /// between them (`hodei audit verify`): the records from the checkpoint on, each read
    /// with the hash it links to; the first that cannot be read or decoded ends them as an
    /// error.
    pub fn audit_view(&self, chain: u16) -> Result<(Option<Checkpoint>, Vec<Result<AuditRecord>>)> {
        use fjall::Readable;
        let (meta, audit) = (self.meta.index, self.audit.index);
        let view = self.shared.snapshot(|snap, ks| -> Result<_> {
            let (Some(meta), Some(audit)) = (ks.get(meta), ks.get(audit)) else {
                bail!("the store has no audit keyspaces");
            };
            let cp = snap
                .get(meta, checkpoint_key(chain))
                .context("cannot read the audit checkpoints")?
                .map(|v| Checkpoint::decode(chain, &v))
                .transpose()
                .with_context(|| format!("the checkpoint of audit chain {chain} is damaged"))?;
            let mut prev = cp.as_ref().map_or([0; 32], |c| c.prev);
            let mut records = Vec::new();
            for g in snap.prefix(audit, chain.to_be_bytes()) {
                match g.into_inner().context("cannot read the audit keyspace") {
                    Ok((k, v)) => {
                        records.extend(super::logs::decode_audit(chain, &k, &v, &mut prev));
                    }
                    Err(e) => records.push(Err(e)),
                }
                if records.last().is_some_and(Result::is_err) {
                    break;
                }
            }
            Ok((cp, records))
        });
        view.context("the store is being reopened")?
    }

    /// Adds the writing of `cp` to `batch` (with the deletion of the records it covers).
    pub(super) fn put_checkpoint(&self, batch: &mut super::WriteBatch, cp: &Checkpoint) {
        batch.insert(&self.meta, checkpoint_key(cp.chain), cp.encode());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> AuditKey {
        AuditKey::from_bytes(&[b; 32])
    }

    /// A checkpoint reads back as written and checks under its key only; any change to
    /// where it says the chain starts breaks its seal.
    #[test]
    fn a_checkpoint_is_sealed_by_its_key() -> Result<()> {
        let cp = Checkpoint::seal(3, 42, [7; 32], 1_000, &key(1));
        let back = Checkpoint::decode(3, &cp.encode())?;
        assert_eq!(back, cp);
        back.check(&key(1))?;
        assert!(back.check(&key(2)).is_err(), "another key checked it");
        let mut moved = cp.encode();
        moved[8] ^= 1; // the seq
        assert!(Checkpoint::decode(3, &moved)?.check(&key(1)).is_err());
        let mut relinked = cp.encode();
        relinked[20] ^= 1; // the prev hash
        assert!(Checkpoint::decode(3, &relinked)?.check(&key(1)).is_err());
        assert!(Checkpoint::decode(4, &cp.encode())?.check(&key(1)).is_err());
        assert!(Checkpoint::decode(3, &cp.encode()[..30]).is_err());
        assert!(Checkpoint::decode(3, &[9]).is_err());
        Ok(())
    }

    /// A chain record cannot stand in for a seal: it has another action.
    #[test]
    fn a_chain_record_is_not_a_seal() {
        let mut chain = audit::AuditChain::new(3).keyed(key(1));
        let _ = chain.append(1, "cli", "call.submit", "", "", "");
        let r = chain.append(2, "server", "job.succeeded", "j0.1.1", "", "");
        let fake = Checkpoint {
            chain: 3,
            seq: r.seq,
            prev: r.prev,
            seal: r,
        };
        assert!(fake.check(&key(1)).is_err());
    }
}
