//! Frame splitting (`hodei_core::frame::split_frame`) on arbitrary bytes, the way a stream
//! reader (`hodei_transport::framed::FrameReader`) and the store use it: frames are split off
//! the front of a buffer until it holds an incomplete frame or a bad header.
//!
//! Also checks that `split_frame` agrees with `decode_header`, never hands out more bytes than
//! the buffer holds, and that a frame fed one byte at a time splits the same way.
#![no_main]

use hodei_core::frame::{FrameError, HEADER_LEN, MAX_FRAME, decode_header, split_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    loop {
        match split_frame(rest) {
            Ok(Some((payload, used))) => {
                assert_eq!(used, HEADER_LEN + payload.len());
                assert!(used <= rest.len());
                assert!(payload.len() <= MAX_FRAME);
                assert_eq!(payload, &rest[HEADER_LEN..used]);
                rest = &rest[used..];
            }
            Ok(None) => {
                // Incomplete: either no full header, or a valid header whose payload is short.
                if let Some(h) = rest.first_chunk::<HEADER_LEN>() {
                    let len = decode_header(*h).expect("split_frame accepted this header");
                    assert!(rest.len() < HEADER_LEN + len);
                }
                break;
            }
            Err(e) => {
                let h = rest
                    .first_chunk::<HEADER_LEN>()
                    .expect("a header error needs a full header");
                assert!(matches!(
                    e,
                    FrameError::Version { .. } | FrameError::TooLarge { .. }
                ));
                assert_eq!(decode_header(*h), Err(e));
                break;
            }
        }
    }

    // Growing the buffer one byte at a time (a reader receiving tiny chunks) yields the first
    // frame exactly when it is complete, and the same frame as splitting the whole input.
    let whole = split_frame(data);
    for n in 0..=data.len().min(HEADER_LEN + 64) {
        match split_frame(&data[..n]) {
            Ok(Some((p, used))) => {
                assert_eq!(whole, Ok(Some((p, used))));
                break;
            }
            Ok(None) => {}
            Err(e) => {
                assert_eq!(whole, Err(e));
                break;
            }
        }
    }
});
