//! Stored events (`hodei_core::event::Event`) as the server reads them back from its store
//! (`split_frame` then `Event::decode`, as in `src/server/store.rs`) and as clients receive
//! them inside `FromServer::Events`. A decoded event must re-encode to a frame that decodes to
//! the same value, and a cursor advanced by it must print and parse back to itself.
#![no_main]

use hodei_core::event::{Cursor, Event};
use hodei_fuzz::decode_frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(ev) = decode_frame::<Event>(data) {
        let _ = format!("{ev:?}");
        let mut c = Cursor::default();
        c.advance(usize::from(ev.shard), ev.seq);
        assert_eq!(c.get(usize::from(ev.shard)), ev.seq);
        assert_eq!(Cursor::parse(&c.to_string()), Ok(c));
    }
});
