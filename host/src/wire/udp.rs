//! The bytes of a UDP flow (SPEC §11), as pure functions over buffers.
//!
//! A flow is one bidirectional stream, opened with a token as for TCP; its stream id names
//! it. Datagrams travel two ways:
//!
//! - in a QUIC DATAGRAM frame (RFC 9221), tagged with the flow:
//!
//!   | bytes  | field                                   |
//!   |--------|-----------------------------------------|
//!   | 1..=8  | the flow's stream id, a QUIC varint      |
//!   | rest   | the datagram, possibly empty            |
//!
//! - on the flow's stream, as a record (the client's first datagrams, sent before the
//!   answer, and any datagram too large for a DATAGRAM frame):
//!
//!   | bytes  | field                                   |
//!   |--------|-----------------------------------------|
//!   | 2      | length, u16 big-endian (0..=65,535)     |
//!   | length | the datagram                            |

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Largest UDP payload a socket can receive (over IPv6; over IPv4 it is 65,507): every
/// datagram fits a record, so none is cut or dropped for its size.
pub const MAX_DATAGRAM: usize = 65_527;
/// Size of a record's header.
pub const RECORD_HEADER_LEN: usize = 2;

/// Appends `payload` as a stream record. `None` when it is longer than a record can say.
pub fn encode_record(payload: &[u8], out: &mut BytesMut) -> Option<()> {
    let len = u16::try_from(payload.len()).ok()?;
    out.reserve(RECORD_HEADER_LEN + payload.len());
    out.put_u16(len);
    out.put_slice(payload);
    Some(())
}

/// Takes one complete record off the front of `buf`; `None` means "need more".
pub fn decode_record(buf: &mut BytesMut) -> Option<Bytes> {
    let header: [u8; RECORD_HEADER_LEN] = buf.get(..RECORD_HEADER_LEN)?.try_into().ok()?;
    let len = usize::from(u16::from_be_bytes(header));
    if buf.len() < RECORD_HEADER_LEN + len {
        return None;
    }
    buf.advance(RECORD_HEADER_LEN);
    Some(buf.split_to(len).freeze())
}

/// Bytes still missing before the record at the front of `buf` is complete (at least 1).
pub fn record_missing(buf: &[u8]) -> usize {
    match buf.get(..RECORD_HEADER_LEN) {
        None => RECORD_HEADER_LEN - buf.len(),
        Some(header) => {
            let len = usize::from(u16::from_be_bytes([header[0], header[1]]));
            (RECORD_HEADER_LEN + len).saturating_sub(buf.len()).max(1)
        }
    }
}

/// A DATAGRAM frame's payload: the flow id as a varint, then the datagram.
pub fn encode_datagram(flow: u64, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(varint_len(flow) + payload.len());
    put_varint(flow, &mut out);
    out.put_slice(payload);
    out.freeze()
}

/// Splits a DATAGRAM frame's payload into flow id and datagram; `None` when the varint is cut.
pub fn decode_datagram(mut frame: Bytes) -> Option<(u64, Bytes)> {
    let first = *frame.first()?;
    let len = 1usize << (first >> 6);
    if frame.len() < len {
        return None;
    }
    let mut id = u64::from(first & 0x3f);
    for &byte in &frame[1..len] {
        id = (id << 8) | u64::from(byte);
    }
    frame.advance(len);
    Some((id, frame))
}

/// How many bytes a varint of `value` takes (RFC 9000 §16). Stream ids are below 2^62.
pub fn varint_len(value: u64) -> usize {
    match value {
        0..=0x3f => 1,
        0x40..=0x3fff => 2,
        0x4000..=0x3fff_ffff => 4,
        _ => 8,
    }
}

fn put_varint(value: u64, out: &mut BytesMut) {
    match varint_len(value) {
        1 => out.put_u8(value as u8),
        2 => out.put_u16(0x4000 | value as u16),
        4 => out.put_u32(0x8000_0000 | value as u32),
        _ => out.put_u64(0xc000_0000_0000_0000 | (value & 0x3fff_ffff_ffff_ffff)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_wait_for_more() {
        let mut buf = BytesMut::new();
        encode_record(b"", &mut buf).unwrap();
        encode_record(&[7u8; MAX_DATAGRAM], &mut buf).unwrap();
        assert!(encode_record(&vec![0u8; 65_536], &mut buf).is_none());
        assert_eq!(&buf[..2], [0, 0]);
        let mut partial = BytesMut::from(&buf[..10]);
        assert_eq!(decode_record(&mut partial).unwrap().len(), 0);
        assert_eq!(decode_record(&mut partial), None);
        assert_eq!(record_missing(&partial), 2 + MAX_DATAGRAM - 8);
        assert_eq!(record_missing(&[0xff]), 1);
        assert_eq!(record_missing(&[]), 2);
        assert_eq!(decode_record(&mut buf).unwrap().len(), 0);
        assert_eq!(decode_record(&mut buf).unwrap(), vec![7u8; MAX_DATAGRAM]);
        assert!(buf.is_empty());
    }

    #[test]
    fn datagram_frames_round_trip_for_every_varint_size() {
        for id in [
            0,
            4,
            63,
            64,
            16_383,
            16_384,
            (1 << 30) - 1,
            1 << 30,
            (1 << 62) - 1,
        ] {
            let frame = encode_datagram(id, b"abc");
            assert_eq!(frame.len(), varint_len(id) + 3);
            assert_eq!(
                decode_datagram(frame),
                Some((id, Bytes::from_static(b"abc")))
            );
        }
        assert_eq!(&encode_datagram(4, b"")[..], [4]);
        assert_eq!(&encode_datagram(0x25, b"x")[..], [0x25, b'x']);
        assert_eq!(
            &encode_datagram(494_878_333, b"")[..],
            [0x9d, 0x7f, 0x3e, 0x7d]
        );
    }

    #[test]
    fn hostile_frames_are_refused_not_panicked_on() {
        assert_eq!(decode_datagram(Bytes::new()), None);
        assert_eq!(decode_datagram(Bytes::from_static(&[0x40])), None);
        assert_eq!(decode_datagram(Bytes::from_static(&[0xc0, 0, 0])), None);
        let mut huge = BytesMut::from(&[0xff, 0xff][..]);
        assert_eq!(decode_record(&mut huge), None);
    }
}
