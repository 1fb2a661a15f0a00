//! Cutting output chunks: drop what the server already has.

use hodei_core::wire::Chunk;

/// Drops the bytes of `chunks` (starting at `offset`) that lie before `from`.
pub(super) fn trim(chunks: Vec<Chunk>, offset: u64, from: u64) -> Vec<Chunk> {
    let mut skip = from.saturating_sub(offset);
    let mut out = Vec::new();
    for mut c in chunks {
        let len = c.data.len() as u64;
        if skip >= len {
            skip -= len;
            continue;
        }
        if skip > 0 {
            #[allow(clippy::cast_possible_truncation)] // skip < len, a usize
            c.data.drain(..skip as usize);
            skip = 0;
        }
        out.push(c);
    }
    out
}

/// Total bytes of `chunks`.
pub(super) fn len(chunks: &[Chunk]) -> u64 {
    chunks.iter().map(|c| c.data.len() as u64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hodei_core::wire::Stream;

    fn c(s: &str) -> Chunk {
        Chunk {
            stream: Stream::Stdout,
            data: s.as_bytes().to_vec(),
        }
    }

    #[test]
    fn trim_drops_what_the_server_has() {
        let out = trim(vec![c("abc"), c("def")], 10, 14);
        assert_eq!(out, vec![c("ef")]);
        assert_eq!(trim(vec![c("abc")], 10, 10), vec![c("abc")]);
        assert!(trim(vec![c("abc")], 10, 20).is_empty());
    }

    #[test]
    fn len_counts_every_chunk() {
        assert_eq!(len(&[c("ab"), c("cde")]), 5);
    }
}
