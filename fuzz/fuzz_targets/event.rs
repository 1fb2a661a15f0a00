//! Events (`hodei_core::event::Event`) as the server reads them back from its store (a block
//! of compact events, `hodei_core::log_block` and `hodei_core::event_codec`, as in
//! `server/src/store/logs.rs`; one compact event is an entry of a block) and as clients
//! receive them inside `FromServer::Events` (an rkyv archive, here as a frame of one). A compact
//! event must re-encode to bytes that decode to the same value, a block's entries must
//! rebuild the same block, and a cursor advanced by a decoded event must print and parse
//! back to itself.
#![no_main]

use hodei_core::event::{Cursor, Event};
use hodei_core::{event_codec, log_block};
use hodei_fuzz::decode_frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if log_block::is_block(data) {
        let Ok(entries) = log_block::entries(data) else {
            return;
        };
        let mut again = log_block::Builder::default();
        for e in &entries {
            again.push(|out| out.extend_from_slice(e));
            if let Ok(ev) = event_codec::decode(1, 7, e) {
                check(&ev);
            }
        }
        // LEB128 lengths may be padded (overlong but in range): compare what they hold.
        assert_eq!(log_block::entries(&again.take()), Ok(entries));
        return;
    }
    let ev = if event_codec::is_compact(data) {
        let Ok(ev) = event_codec::decode(1, 7, data) else {
            return;
        };
        let mut again = Vec::new();
        event_codec::encode(&ev, &mut again);
        assert_eq!(event_codec::decode(1, 7, &again).as_ref(), Ok(&ev));
        ev
    } else {
        let Some(ev) = decode_frame::<Event>(data) else {
            return;
        };
        ev
    };
    check(&ev);
});

fn check(ev: &Event) {
    let _ = format!("{ev:?}");
    let mut c = Cursor::default();
    c.advance(usize::from(ev.shard), ev.seq);
    assert_eq!(c.get(usize::from(ev.shard)), ev.seq);
    assert_eq!(Cursor::parse(&c.to_string()), Ok(c));
}
