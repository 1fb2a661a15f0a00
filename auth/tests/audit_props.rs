//! Property tests of the audit chain: any single mutation of a random chain is found at the
//! mutated record, and decoding arbitrary bytes never panics.

use hodei_auth::audit::{self, AuditChain, AuditRecord, ChainBreak};
use proptest::prelude::*;

/// Where a chain's first record is read.
const FIRST: audit::Position = audit::Position {
    chain: 0,
    seq: 0,
    prev: [0; 32],
};

/// Where `r` sits, as a reader of the store knows it.
fn place(r: &AuditRecord) -> audit::Position {
    audit::Position {
        chain: r.chain,
        seq: r.seq,
        prev: r.prev,
    }
}

type Entry = (u64, String, String, String, String, String);

fn entries() -> impl Strategy<Value = Vec<Entry>> {
    let s = || "[a-z0-9ü .:{}\"-]{0,12}";
    prop::collection::vec((any::<u64>(), s(), s(), s(), s(), s()), 1..16)
}

fn build(chain: u16, es: &[Entry]) -> (Vec<AuditRecord>, (u64, [u8; 32])) {
    let mut c = AuditChain::new(chain);
    let recs = es
        .iter()
        .map(|e| c.append(e.0, &*e.1, &*e.2, &*e.3, &*e.4, &*e.5))
        .collect();
    (recs, c.head())
}

/// Changes field `which` of `r` so that it differs from before.
fn mutate(r: &mut AuditRecord, which: u8, salt: u8) {
    let bump = |s: &mut String| s.push(char::from(b'a' + salt % 26));
    match which % 10 {
        0 => r.chain ^= 1 + u16::from(salt),
        1 => r.seq ^= 1 + u64::from(salt),
        2 => r.at_ms ^= 1 + u64::from(salt),
        3 => bump(&mut r.actor),
        4 => bump(&mut r.action),
        5 => bump(&mut r.subject),
        6 => bump(&mut r.correlation_id),
        7 => bump(&mut r.detail),
        8 => r.prev[usize::from(salt) % 32] ^= 1,
        _ => r.hash[usize::from(salt) % 32] ^= 0x40,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn intact_chains_verify(chain in any::<u16>(), es in entries()) {
        let (recs, head) = build(chain, &es);
        prop_assert_eq!(audit::verify(chain, recs.clone(), Some(head)), Ok(es.len() as u64));
        for r in &recs {
            prop_assert_eq!(&audit::decode(&audit::encode(r), &place(r)).unwrap(), r);
        }
    }

    #[test]
    fn any_single_mutation_is_found_at_its_seq(
        chain in any::<u16>(),
        es in entries(),
        at in any::<prop::sample::Index>(),
        which in any::<u8>(),
        salt in any::<u8>(),
        with_head in any::<bool>(),
    ) {
        let (mut recs, head) = build(chain, &es);
        let i = at.index(recs.len());
        mutate(&mut recs[i], which, salt);
        let err = audit::verify(chain, recs, with_head.then_some(head)).unwrap_err();
        prop_assert_eq!(err.seq(), i as u64, "{}", err);
    }

    #[test]
    fn deletion_and_swap_are_found(
        es in entries(),
        at in any::<prop::sample::Index>(),
        other in any::<prop::sample::Index>(),
    ) {
        let (recs, head) = build(0, &es);
        let i = at.index(recs.len());
        let mut deleted = recs.clone();
        deleted.remove(i);
        let err = audit::verify(0, deleted, Some(head)).unwrap_err();
        prop_assert_eq!(err.seq(), i as u64);
        if i + 1 == recs.len() {
            prop_assert_eq!(err, ChainBreak::Truncated { seq: i as u64, head: head.0 });
        }
        let j = other.index(recs.len());
        if i != j {
            let mut swapped = recs.clone();
            swapped.swap(i, j);
            let err = audit::verify(0, swapped, None).unwrap_err();
            prop_assert_eq!(err.seq(), i.min(j) as u64);
        }
    }

    #[test]
    fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = audit::decode(&bytes, &FIRST);
    }

    #[test]
    fn decode_of_damaged_encodings_never_panics(
        es in entries(),
        pos in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let (recs, _) = build(1, &es);
        let intact = audit::encode(&recs[0]);
        // Every cut of an intact record is refused. (A damaged one may shrink a length so
        // that a cut of it reads as a shorter record: decoding must only not panic.)
        let c = cut.index(intact.len());
        prop_assert!(audit::decode(&intact[..c], &FIRST).is_err());
        let mut bytes = intact;
        let p = pos.index(bytes.len());
        bytes[p] = byte;
        let _ = audit::decode(&bytes, &FIRST);
        let _ = audit::decode(&bytes[..c], &FIRST);
    }
}
