//! Unit tests of the audit chain: every kind of tampering is reported at the right seq.

use super::*;

fn chain_of(n: u64) -> (Vec<AuditRecord>, (u64, [u8; 32])) {
    let mut c = AuditChain::new(3);
    let recs = (0..n)
        .map(|i| {
            c.append(
                1_000 + i,
                format!("user{i}"),
                "job.submit",
                format!("job-{i}"),
                "corr",
                "{}",
            )
        })
        .collect();
    (recs, c.head())
}

/// A named way of editing one field of a record.
type Edit = (&'static str, fn(&mut AuditRecord));

/// Each way of editing one field of a record.
fn edits() -> Vec<Edit> {
    vec![
        ("chain", |r| r.chain ^= 1),
        ("seq+", |r| r.seq += 1),
        ("seq-", |r| r.seq = r.seq.wrapping_sub(1)),
        ("at_ms", |r| r.at_ms += 1),
        ("actor", |r| r.actor.push('x')),
        ("action", |r| r.action = "token.revoke".into()),
        ("subject", |r| r.subject.clear()),
        ("correlation_id", |r| r.correlation_id.push('!')),
        ("detail", |r| r.detail = "{\"forged\":1}".into()),
        ("prev", |r| r.prev[31] ^= 1),
        ("hash", |r| r.hash[0] ^= 0x80),
    ]
}

#[test]
fn appended_chain_verifies() {
    let (recs, head) = chain_of(10);
    assert_eq!(head.0, 10);
    assert_eq!(recs[0].prev, [0; 32]);
    for w in recs.windows(2) {
        assert_eq!(w[1].prev, w[0].hash);
        assert_eq!(w[1].seq, w[0].seq + 1);
    }
    assert_eq!(head.1, recs[9].hash);
    assert_eq!(verify(3, recs.clone(), None), Ok(10));
    assert_eq!(verify(3, recs, Some(head)), Ok(10));
    assert_eq!(
        verify(3, Vec::new(), Some(AuditChain::new(3).head())),
        Ok(0)
    );
}

#[test]
fn resume_continues_the_same_chain() {
    let (mut recs, head) = chain_of(4);
    let mut c = AuditChain::resume(3, head.0, head.1);
    recs.push(c.append(9, "a", "b", "c", "d", "e"));
    assert_eq!(verify(3, recs, Some(c.head())), Ok(5));
}

#[test]
fn every_edit_of_every_record_is_detected_at_its_seq() {
    let (recs, head) = chain_of(6);
    for i in 0..recs.len() {
        for (name, edit) in edits() {
            let mut bad = recs.clone();
            edit(&mut bad[i]);
            for h in [None, Some(head)] {
                let err = verify(3, bad.clone(), h).unwrap_err();
                assert_eq!(err.seq(), i as u64, "edit {name} of record {i}: {err}");
            }
        }
    }
}

#[test]
fn edit_is_reported_as_hash_mismatch() {
    let (mut recs, _) = chain_of(20);
    recs[17].detail.push('!');
    assert_eq!(
        verify(3, recs, None).unwrap_err().to_string(),
        "record 17: hash mismatch (it, or its link to the record before it, was edited)"
    );
}

#[test]
fn deleted_middle_record() {
    let (mut recs, head) = chain_of(6);
    recs.remove(2);
    assert_eq!(
        verify(3, recs, Some(head)),
        Err(ChainBreak::Missing { seq: 2, found: 3 })
    );
}

#[test]
fn deleted_first_record() {
    let (mut recs, _) = chain_of(3);
    recs.remove(0);
    assert_eq!(
        verify(3, recs, None),
        Err(ChainBreak::Missing { seq: 0, found: 1 })
    );
}

#[test]
fn deleted_tail_needs_the_head() {
    let (mut recs, head) = chain_of(6);
    recs.truncate(4);
    // Without a head, a shorter chain is still a valid chain.
    assert_eq!(verify(3, recs.clone(), None), Ok(4));
    assert_eq!(
        verify(3, recs, Some(head)),
        Err(ChainBreak::Truncated { seq: 4, head: 6 })
    );
    let err = verify(3, Vec::new(), Some(head)).unwrap_err();
    assert_eq!(err, ChainBreak::Truncated { seq: 0, head: 6 });
}

#[test]
fn swapped_records() {
    let (mut recs, head) = chain_of(6);
    recs.swap(1, 4);
    assert_eq!(
        verify(3, recs, Some(head)),
        Err(ChainBreak::Missing { seq: 1, found: 4 })
    );
    let (mut recs, _) = chain_of(6);
    recs.swap(2, 3);
    assert_eq!(verify(3, recs, None).unwrap_err().seq(), 2);
}

#[test]
fn duplicated_record() {
    let (mut recs, _) = chain_of(4);
    recs.insert(2, recs[1].clone());
    assert_eq!(
        verify(3, recs, None),
        Err(ChainBreak::OutOfOrder { seq: 2, found: 1 })
    );
}

#[test]
fn record_of_another_chain() {
    let (mut recs, _) = chain_of(4);
    let mut other = AuditChain::new(4);
    recs[2] = other.append(0, "a", "b", "c", "d", "e");
    assert_eq!(
        verify(3, recs, None),
        Err(ChainBreak::OtherChain {
            seq: 2,
            expected: 3,
            found: 4
        })
    );
}

#[test]
fn rewritten_tail_is_caught_by_the_head() {
    let (recs, head) = chain_of(6);
    // Re-append records 3.. with a forged actor: a self-consistent chain.
    let mut forged = recs[..3].to_vec();
    let mut c = AuditChain::resume(3, 3, recs[2].hash);
    for i in 3..6 {
        forged.push(c.append(
            1_000 + i,
            "nobody",
            "job.submit",
            format!("job-{i}"),
            "corr",
            "{}",
        ));
    }
    assert_eq!(verify(3, forged.clone(), None), Ok(6));
    assert_eq!(
        verify(3, forged, Some(head)),
        Err(ChainBreak::HeadMismatch { seq: 5 })
    );
}

#[test]
fn records_past_the_head_are_accepted() {
    let (recs, head) = chain_of(6);
    let old_head = (3, recs[2].hash);
    assert_eq!(verify(3, recs.clone(), Some(old_head)), Ok(6));
    assert_eq!(verify(3, recs.clone(), Some(head)), Ok(6));
    // ...but the record at the old head must still be the one it named.
    let mut edited_then_rehashed = recs[..2].to_vec();
    let mut c = AuditChain::resume(3, 2, recs[1].hash);
    edited_then_rehashed.push(c.append(0, "x", "y", "z", "w", "v"));
    assert_eq!(
        verify(3, edited_then_rehashed, Some(old_head)),
        Err(ChainBreak::HeadMismatch { seq: 2 })
    );
}

#[test]
fn verify_from_a_pruned_start() {
    let (recs, head) = chain_of(6);
    let start = (2, recs[1].hash);
    assert_eq!(verify_from(3, start, recs[2..].to_vec(), Some(head)), Ok(4));
    // Without the right start, pruning looks like deletion.
    assert_eq!(verify(3, recs[2..].to_vec(), None).unwrap_err().seq(), 0);
    assert_eq!(
        verify_from(3, start, recs[2..].to_vec(), Some((1, recs[0].hash))),
        Err(ChainBreak::HeadBeforeStart { seq: 2, head: 1 })
    );
}

#[test]
fn hash_matches_the_documented_encoding() {
    let mut c = AuditChain::new(0x0102);
    let r = c.append(7, "ab", "", "c", "corr", "d");
    let mut bytes = b"hodei-audit/v1\0\0".to_vec();
    bytes.extend([0u8; 32]);
    bytes.extend([0x02, 0x01]);
    bytes.extend(0u64.to_le_bytes());
    bytes.extend(7u64.to_le_bytes());
    for s in ["ab", "", "c", "corr", "d"] {
        bytes.extend((s.len() as u64).to_le_bytes());
        bytes.extend(s.as_bytes());
    }
    let expected = ring::digest::digest(&ring::digest::SHA256, &bytes);
    assert_eq!(&r.hash[..], expected.as_ref());
}

#[test]
fn moving_bytes_between_fields_changes_the_hash() {
    let mut a = AuditChain::new(0);
    let mut b = AuditChain::new(0);
    let ra = a.append(0, "ab", "c", "", "", "");
    let rb = b.append(0, "a", "bc", "", "", "");
    assert_ne!(ra.hash, rb.hash);
}

/// Where `r` sits in its chain, as a reader of the store knows it.
fn at(r: &AuditRecord) -> Position {
    Position {
        chain: r.chain,
        seq: r.seq,
        prev: r.prev,
    }
}

/// A record in the layout of encoding version 1 (every field stored, each string with a u64
/// length, then the hash), which [`decode`] does not accept.
fn encode_v1(r: &AuditRecord) -> Vec<u8> {
    let mut v = vec![1];
    super::codec::put_fields(r, &mut v);
    v.extend(r.hash);
    v
}

#[test]
fn encode_decode_roundtrip() {
    let (recs, _) = chain_of(3);
    for r in &recs {
        assert_eq!(decode(&encode(r), &at(r)).as_ref(), Ok(r));
    }
    let mut c = AuditChain::new(u16::MAX);
    let r = c.append(u64::MAX, "ünïcødé", "", "a\0b", "x".repeat(1000), "\n");
    assert_eq!(decode(&encode(&r), &at(&r)), Ok(r));
}

/// A stored record leaves out its place, and is read back with the place it is found at:
/// a record moved to another seq or chain, or read after another predecessor, no longer
/// matches its hash.
#[test]
fn stored_records_take_their_place_from_the_reader() {
    let (recs, _) = chain_of(3);
    let r = &recs[1];
    let stored = encode(r);
    // Version, at_ms, each (short) string with a one-byte length, hash: no chain, seq or prev.
    let strings: usize = r.strings().iter().map(|s| 1 + s.len()).sum();
    assert_eq!(stored.len(), 1 + 8 + strings + 32);
    for moved in [
        Position { seq: 2, ..at(r) },
        Position { chain: 1, ..at(r) },
        Position {
            prev: recs[1].hash,
            ..at(r)
        },
    ] {
        let back = decode(&stored, &moved).unwrap();
        assert_ne!(back.compute_hash(), back.hash, "{moved:?}");
    }
    assert_eq!(decode(&stored, &at(r)).unwrap().compute_hash(), r.hash);
}

/// A version 1 record is refused, wherever it is read and however much of it there is, with
/// an error that names its version.
#[test]
fn version_1_records_are_refused() {
    let (recs, _) = chain_of(2);
    for r in &recs {
        let v1 = encode_v1(r);
        for place in [
            at(r),
            Position { seq: 9, ..at(r) },
            Position { chain: 9, ..at(r) },
            Position {
                prev: [9; 32],
                ..at(r)
            },
        ] {
            assert_eq!(decode(&v1, &place), Err(AuditError::UnknownVersion(1)));
            for n in 1..v1.len() {
                assert_eq!(
                    decode(&v1[..n], &place),
                    Err(AuditError::UnknownVersion(1)),
                    "prefix of {n} bytes"
                );
            }
        }
        assert_eq!(
            decode(&v1, &at(r)).unwrap_err().to_string(),
            "audit record has unknown encoding version 1"
        );
    }
}

#[test]
fn decode_refuses_damage() {
    let (recs, _) = chain_of(1);
    let place = at(&recs[0]);
    let v2 = encode(&recs[0]);
    for n in 0..v2.len() {
        assert!(decode(&v2[..n], &place).is_err(), "prefix of {n} bytes");
    }
    let mut longer = v2.clone();
    longer.push(0);
    assert_eq!(decode(&longer, &place), Err(AuditError::TrailingBytes(1)));
    for version in [0, 1, 3, 0xff] {
        let mut other = v2.clone();
        other[0] = version;
        assert_eq!(
            decode(&other, &place),
            Err(AuditError::UnknownVersion(version))
        );
    }
    // A huge length prefix must be refused, not allocated.
    let mut huge = v2[..9].to_vec();
    huge.extend([0xff; 9]);
    huge.push(0x01);
    assert!(matches!(
        decode(&huge, &place),
        Err(AuditError::Truncated { field: "actor", .. })
    ));
    // A length running past 64 bits.
    let mut long = v2[..9].to_vec();
    long.extend([0xff; 9]);
    long.push(0x02);
    assert_eq!(decode(&long, &place), Err(AuditError::BadLength("actor")));
    let mut long = v2[..9].to_vec();
    long.extend([0x80; 11]);
    assert_eq!(decode(&long, &place), Err(AuditError::BadLength("actor")));
    // A length not in its shortest form.
    let mut padded = v2[..9].to_vec();
    padded.extend([0x80, 0x00]);
    assert_eq!(decode(&padded, &place), Err(AuditError::BadLength("actor")));
    // Invalid UTF-8 in a string field.
    let mut bad = v2[..9].to_vec();
    bad.extend([1, 0xff]);
    assert_eq!(decode(&bad, &place), Err(AuditError::NotUtf8("actor")));
}

#[test]
fn json_writes_hashes_as_hex() {
    let (recs, _) = chain_of(2);
    let json = serde_json::to_string(&recs[1]).unwrap();
    assert!(json.contains(&format!(
        "\"prev\":\"{}\"",
        crate::hex::encode(&recs[0].hash)
    )));
    let back: AuditRecord = serde_json::from_str(&json).unwrap();
    assert_eq!(back, recs[1]);
}

/// A keyed chain verifies only with its key, and an editor without the key cannot cover an
/// edit by recomputing every following hash (here with plain SHA-256 or another key).
#[test]
fn keyed_chain_resists_recomputation_without_the_key() {
    let key = AuditKey::from_bytes(&[7; 32]);
    let mut c = AuditChain::new(3).keyed(key.clone());
    let recs: Vec<AuditRecord> = (0..5)
        .map(|i| c.append(i, "alice", "job.pending", format!("j0.1.{i}"), "", ""))
        .collect();
    assert_eq!(super::verify_keyed(3, recs.clone(), None, &key), Ok(5));
    assert!(
        super::verify(3, recs.clone(), None).is_err(),
        "verifies without the key"
    );

    // The forger edits record 2 and rebuilds the chain from there without the key.
    for forge_key in [None, Some(AuditKey::from_bytes(&[8; 32]))] {
        let mut forged = recs.clone();
        forged[2].actor = "mallory".to_owned();
        for i in 2..forged.len() {
            if i > 0 {
                forged[i].prev = forged[i - 1].hash;
            }
            forged[i].hash = forged[i].compute_hash_with(forge_key.as_ref());
        }
        let err = super::verify_keyed(3, forged, None, &key).unwrap_err();
        assert_eq!(err.seq(), 2, "{err}");
    }
}
