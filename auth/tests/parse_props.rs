//! Fuzz-style properties of the parsers that see untrusted input: token text and sealed
//! bytes. They must return errors, never panic, and accept only what they should.

use hodei_auth::{SealKey, token};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn token_parse_never_panics(text in any::<String>()) {
        let _ = token::parse(&text);
    }

    #[test]
    fn token_parse_of_near_tokens_never_panics(
        tail in "[0-9a-fA-F_\\-+/=é ]{0,70}",
        pos in any::<prop::sample::Index>(),
        ch in any::<char>(),
    ) {
        let mut text = format!("hodei_{tail}");
        let _ = token::parse(&text);
        let at = pos.index(text.len() + 1);
        if text.is_char_boundary(at) {
            text.insert(at, ch);
            let _ = token::parse(&text);
        }
    }

    #[test]
    fn mutated_tokens_are_refused_or_differ(pos in any::<prop::sample::Index>(), ch in any::<char>()) {
        let (text, id, hash) = token::generate().unwrap();
        let mut chars: Vec<char> = text.chars().collect();
        let i = pos.index(chars.len());
        prop_assume!(chars[i] != ch);
        chars[i] = ch;
        let mutated: String = chars.into_iter().collect();
        if let Ok(p) = token::parse(&mutated) {
            // Whatever still parses names another token or another secret.
            prop_assert!(p.id != id || p.hash() != hash);
        }
    }

    #[test]
    fn open_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..100), name in ".{0,8}") {
        let key = SealKey::from_bytes([9; 32]);
        prop_assert!(key.open(&name, &bytes).is_err());
    }
}
