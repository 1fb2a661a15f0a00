//! Single messages in QUIC datagrams, for what may be lost and must not wait behind a stream:
//! an agent's heartbeats.
//!
//! A datagram holds exactly one frame, the same `version | len | payload` as on a stream
//! ([`hodei_core::frame`]). Datagrams are neither retransmitted nor ordered with the stream.
//! For a heartbeat that is what it should be: a lost one is superseded by the next, where a
//! stream would resend it a probe timeout later and hold every message behind it until then.
//! A datagram costs the receiver much less than stream data (no reassembly, no flow-control
//! credit), which matters at 100,000 heartbeats a second.

use bytes::Bytes;
use hodei_core::frame::{FrameError, Wire, split_frame};

use crate::error::TransportError;

/// Bytes of received datagrams a connection may hold unread; beyond it quinn drops the
/// oldest. The server reads them at once, so this only matters while its task is behind (a
/// heartbeat frame is a few dozen bytes).
pub const DATAGRAM_RECEIVE_BUFFER: usize = 64 * 1024;

/// Sends `msg` as one datagram. `Ok(false)`: the peer takes no datagrams or the frame does
/// not fit in one, and nothing was sent (send it on the stream instead).
///
/// # Errors
/// If the message cannot be encoded or the connection is lost.
pub fn send_datagram<T: Wire>(conn: &quinn::Connection, msg: &T) -> Result<bool, TransportError> {
    let mut frame = Vec::new();
    msg.encode_into(&mut frame)?;
    match conn.send_datagram(Bytes::from(frame)) {
        Ok(()) => Ok(true),
        Err(
            quinn::SendDatagramError::UnsupportedByPeer
            | quinn::SendDatagramError::Disabled
            | quinn::SendDatagramError::TooLarge,
        ) => Ok(false),
        Err(quinn::SendDatagramError::ConnectionLost(e)) => Err(TransportError::Lost(e)),
    }
}

/// Decodes a received datagram: exactly one whole frame, nothing before or after it.
///
/// # Errors
/// On a bad header, a payload that is not a valid `T`, or bytes beyond the one frame.
pub fn decode_datagram<T: Wire>(datagram: &[u8]) -> Result<T, FrameError> {
    match split_frame(datagram)? {
        Some((payload, used)) if used == datagram.len() => T::decode(payload),
        Some((_, used)) => Err(FrameError::Malformed(format!(
            "a datagram holds one frame, but {} bytes follow it",
            datagram.len() - used
        ))),
        None => Err(FrameError::Malformed(format!(
            "a datagram of {} bytes holds no whole frame",
            datagram.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use hodei_core::wire::FromAgent;

    use super::*;

    #[test]
    fn one_frame_round_trips() {
        let hb = FromAgent::Heartbeat {
            running: 3,
            load: 7,
        };
        let frame = hb.to_frame().unwrap();
        let back: FromAgent = decode_datagram(&frame).unwrap();
        assert!(matches!(
            back,
            FromAgent::Heartbeat {
                running: 3,
                load: 7
            }
        ));
    }

    #[test]
    fn anything_but_one_whole_frame_is_refused() {
        let frame = FromAgent::Goodbye.to_frame().unwrap();
        let mut two = frame.clone();
        two.extend_from_slice(&frame);
        let refused = |d: &[u8]| decode_datagram::<FromAgent>(d).is_err();
        assert!(refused(&two), "two frames");
        assert!(refused(&frame[..frame.len() - 1]), "a cut frame");
        assert!(refused(&frame[..3]), "a cut header");
        assert!(refused(&[]), "nothing");
        assert!(refused(b"\x01\x00\x04\x00\x00\x00abcd"), "a bad payload");
        assert!(refused(b"\x09\x00\x00\x00\x00\x00"), "another version");
    }
}
