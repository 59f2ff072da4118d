//! The bytes on the wire (SPEC §3, §6): [`addr`] for the addresses tokens and flags name,
//! this module for the per-stream handshakes of both protocols as pure encode/decode over
//! bytes, and [`handshake`] for reading and writing them on QUIC streams. Each frame starts
//! with a fixed-size header that says how long the rest is, so a reader takes the header
//! first and knows exactly what to wait for; a bad length is an error before anything else is
//! read.
//!
//! ALPN picks the protocol for the whole QUIC connection:
//!
//! - [`ALPN_V2`] (`quic-tun/2`, ours): the client sends a length-prefixed token and then,
//!   without waiting, the application's bytes; the server answers a status with a reason.
//! - [`ALPN_LEGACY`] (`quic-tun`, the original Go implementation): a 512-byte NUL-padded token
//!   and a one-byte answer.

use quinn::VarInt;

pub mod addr;
pub mod handshake;
pub mod udp;

/// ALPN of our protocol.
pub const ALPN_V2: &[u8] = b"quic-tun/2";
/// ALPN of the original implementation's protocol.
pub const ALPN_LEGACY: &[u8] = b"quic-tun";

/// Longest token in `quic-tun/2`.
pub const MAX_TOKEN_LEN: usize = 4096;
/// Longest reason in a `quic-tun/2` answer.
pub const MAX_REASON_LEN: usize = 1024;
/// Size of the token block in `quic-tun`.
pub const LEGACY_TOKEN_LEN: usize = 512;

/// The server's answer to a stream's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Ok = 1,
    BadToken = 2,
    Unreachable = 3,
    NotAllowed = 4,
    PluginError = 5,
}

impl Status {
    pub fn from_byte(byte: u8) -> Option<Status> {
        Some(match byte {
            1 => Status::Ok,
            2 => Status::BadToken,
            3 => Status::Unreachable,
            4 => Status::NotAllowed,
            5 => Status::PluginError,
            _ => return None,
        })
    }

    pub fn describe(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::BadToken => "bad token",
            Status::Unreachable => "cannot reach target",
            Status::NotAllowed => "target not allowed",
            Status::PluginError => "plugin error",
        }
    }

    /// The status as a metric label names it.
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::BadToken => "bad_token",
            Status::Unreachable => "unreachable",
            Status::NotAllowed => "not_allowed",
            Status::PluginError => "plugin_error",
        }
    }

    /// The one-byte answer of the legacy protocol, which knows only 1, 2 and 3.
    pub fn legacy_byte(self) -> u8 {
        match self {
            Status::Ok => 0x01,
            Status::BadToken | Status::PluginError => 0x02,
            Status::Unreachable | Status::NotAllowed => 0x03,
        }
    }

    /// Reads a legacy answer byte. 0x00 and anything above 0x03 are not answers.
    pub fn from_legacy_byte(byte: u8) -> Option<Status> {
        match byte {
            0x01..=0x03 => Status::from_byte(byte),
            _ => None,
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", *self as u8, self.describe())
    }
}

/// QUIC application error codes, used in RESET_STREAM, STOP_SENDING and CONNECTION_CLOSE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ErrorCode {
    /// Normal end.
    Done = 0,
    /// The application connection was reset, or the relay failed: the data is cut off.
    AppReset = 1,
    /// The peer broke the protocol (a bad frame).
    ProtocolViolation = 2,
    /// The endpoint is shutting down.
    Shutdown = 3,
    /// An operator closed the tunnel.
    ClosedByOperator = 4,
}

impl ErrorCode {
    pub fn varint(self) -> VarInt {
        VarInt::from_u32(self as u32)
    }

    pub fn from_varint(code: VarInt) -> Option<ErrorCode> {
        Some(match code.into_inner() {
            0 => ErrorCode::Done,
            1 => ErrorCode::AppReset,
            2 => ErrorCode::ProtocolViolation,
            3 => ErrorCode::Shutdown,
            4 => ErrorCode::ClosedByOperator,
            _ => return None,
        })
    }

    /// How logs name a code that came from the peer.
    pub fn describe(code: VarInt) -> String {
        match ErrorCode::from_varint(code) {
            Some(ErrorCode::Done) => "done".into(),
            Some(ErrorCode::AppReset) => "application connection reset".into(),
            Some(ErrorCode::ProtocolViolation) => "protocol violation".into(),
            Some(ErrorCode::Shutdown) => "endpoint shutting down".into(),
            Some(ErrorCode::ClosedByOperator) => "closed by the operator".into(),
            None => format!("code {code}"),
        }
    }
}

/// A frame that breaks the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("token length {0} is outside 1..={MAX_TOKEN_LEN}")]
    TokenLength(usize),
    #[error("token of {0} bytes does not fit the {LEGACY_TOKEN_LEN}-byte legacy block")]
    LegacyTokenTooLong(usize),
    #[error("unknown status byte {0:#04x}")]
    UnknownStatus(u8),
    #[error("reason length {0} is over {MAX_REASON_LEN}")]
    ReasonLength(usize),
    #[error("reason is not UTF-8")]
    ReasonNotUtf8,
    #[error("an ok answer must carry no reason")]
    ReasonOnOk,
}

// ---- quic-tun/2 ----

/// Size of the token header: the token's length.
pub const TOKEN_HEADER_LEN: usize = 2;

/// Encodes a token frame:
///
/// | bytes | field                        |
/// |-------|------------------------------|
/// | 2     | token length N, big-endian, 1..=4096 |
/// | N     | token                        |
pub fn encode_token(token: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
    check_token_len(token.len())?;
    out.extend_from_slice(&(token.len() as u16).to_be_bytes());
    out.extend_from_slice(token);
    Ok(())
}

/// Reads a token header: the length of the token that follows.
pub fn decode_token_header(header: [u8; TOKEN_HEADER_LEN]) -> Result<usize, WireError> {
    let len = u16::from_be_bytes(header) as usize;
    check_token_len(len)?;
    Ok(len)
}

fn check_token_len(len: usize) -> Result<(), WireError> {
    if (1..=MAX_TOKEN_LEN).contains(&len) {
        Ok(())
    } else {
        Err(WireError::TokenLength(len))
    }
}

/// The server's answer in `quic-tun/2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: Status,
    /// Why the tunnel was refused; empty when it was accepted.
    pub reason: String,
}

/// Size of the answer header: status and reason length.
pub const ANSWER_HEADER_LEN: usize = 3;

impl Answer {
    pub fn ok() -> Self {
        Answer {
            status: Status::Ok,
            reason: String::new(),
        }
    }

    /// A refusal. A reason over 1024 bytes is cut at a character boundary.
    pub fn refuse(status: Status, reason: &str) -> Self {
        let mut end = reason.len().min(MAX_REASON_LEN);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        Answer {
            status,
            reason: reason[..end].to_owned(),
        }
    }

    /// Encodes the answer:
    ///
    /// | bytes | field                                          |
    /// |-------|------------------------------------------------|
    /// | 1     | status (1 ok, 2 bad token, 3 cannot reach target, 4 not allowed, 5 plugin error) |
    /// | 2     | reason length N, big-endian, 0..=1024 (0 for ok) |
    /// | N     | reason, UTF-8                                  |
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        check_reason(self.status, self.reason.len())?;
        out.push(self.status as u8);
        out.extend_from_slice(&(self.reason.len() as u16).to_be_bytes());
        out.extend_from_slice(self.reason.as_bytes());
        Ok(())
    }

    /// Reads an answer header: the status and the length of the reason that follows.
    pub fn decode_header(header: [u8; ANSWER_HEADER_LEN]) -> Result<(Status, usize), WireError> {
        let status = Status::from_byte(header[0]).ok_or(WireError::UnknownStatus(header[0]))?;
        let len = u16::from_be_bytes([header[1], header[2]]) as usize;
        check_reason(status, len)?;
        Ok((status, len))
    }

    /// Builds the answer from its header fields and the reason bytes.
    pub fn from_parts(status: Status, reason: &[u8]) -> Result<Answer, WireError> {
        let reason = std::str::from_utf8(reason).map_err(|_| WireError::ReasonNotUtf8)?;
        Ok(Answer {
            status,
            reason: reason.to_owned(),
        })
    }
}

fn check_reason(status: Status, len: usize) -> Result<(), WireError> {
    if len > MAX_REASON_LEN {
        return Err(WireError::ReasonLength(len));
    }
    if status == Status::Ok && len != 0 {
        return Err(WireError::ReasonOnOk);
    }
    Ok(())
}

// ---- quic-tun (legacy) ----

/// Encodes a legacy token block:
///
/// | bytes | field                                   |
/// |-------|-----------------------------------------|
/// | 512   | token, padded with NUL bytes at the end |
pub fn encode_legacy_token(token: &[u8]) -> Result<[u8; LEGACY_TOKEN_LEN], WireError> {
    if token.len() > LEGACY_TOKEN_LEN {
        return Err(WireError::LegacyTokenTooLong(token.len()));
    }
    let mut block = [0u8; LEGACY_TOKEN_LEN];
    block[..token.len()].copy_from_slice(token);
    Ok(block)
}

/// Reads a legacy token block: the token without its trailing NUL padding.
pub fn decode_legacy_token(block: &[u8; LEGACY_TOKEN_LEN]) -> &[u8] {
    let end = block
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| last + 1);
    &block[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_frame(token: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_token(token, &mut out).unwrap();
        out
    }

    /// A token frame read from the front of `buf` as the server reads it, header first: the
    /// token and the bytes consumed, `None` when `buf` is too short.
    fn decode_token(buf: &[u8]) -> Result<Option<(&[u8], usize)>, WireError> {
        let Some(header) = buf.first_chunk::<TOKEN_HEADER_LEN>() else {
            return Ok(None);
        };
        let end = TOKEN_HEADER_LEN + decode_token_header(*header)?;
        Ok(buf.get(TOKEN_HEADER_LEN..end).map(|token| (token, end)))
    }

    /// An answer read from the front of `buf` as the client reads it.
    fn decode_answer(buf: &[u8]) -> Result<Option<(Answer, usize)>, WireError> {
        let Some(header) = buf.first_chunk::<ANSWER_HEADER_LEN>() else {
            return Ok(None);
        };
        let (status, len) = Answer::decode_header(*header)?;
        let end = ANSWER_HEADER_LEN + len;
        match buf.get(ANSWER_HEADER_LEN..end) {
            Some(reason) => Ok(Some((Answer::from_parts(status, reason)?, end))),
            None => Ok(None),
        }
    }

    #[test]
    fn token_round_trip_with_trailing_app_bytes() {
        let mut frame = token_frame(b"tcp:127.0.0.1:22");
        assert_eq!(&frame[..2], &[0, 16]);
        frame.extend_from_slice(b"SSH-2.0-client");
        let (token, used) = decode_token(&frame).unwrap().unwrap();
        assert_eq!(token, b"tcp:127.0.0.1:22");
        assert_eq!(&frame[used..], b"SSH-2.0-client");
    }

    #[test]
    fn every_truncation_of_a_token_frame_needs_more() {
        let frame = token_frame(b"unix:/run/app.sock");
        for len in 0..frame.len() {
            assert_eq!(decode_token(&frame[..len]), Ok(None), "length {len}");
        }
    }

    #[test]
    fn token_lengths_zero_and_over_the_limit_are_errors() {
        assert_eq!(decode_token(&[0, 0]), Err(WireError::TokenLength(0)));
        assert_eq!(
            decode_token(&[0x10, 0x01]),
            Err(WireError::TokenLength(4097))
        );
        assert_eq!(
            decode_token(&[0xff, 0xff, 1]),
            Err(WireError::TokenLength(65535))
        );
        assert!(encode_token(b"", &mut Vec::new()).is_err());
        assert!(encode_token(&[b'a'; 4097], &mut Vec::new()).is_err());
        let longest = token_frame(&[b'a'; 4096]);
        assert_eq!(decode_token(&longest).unwrap().unwrap().0.len(), 4096);
    }

    #[test]
    fn answer_round_trips() {
        for answer in [
            Answer::ok(),
            Answer::refuse(Status::BadToken, "token is not base64"),
            Answer::refuse(Status::Unreachable, "tcp:10.0.0.1:22: connection refused"),
            Answer::refuse(Status::NotAllowed, ""),
            Answer::refuse(Status::PluginError, "plugin panicked: boom"),
        ] {
            let mut out = Vec::new();
            answer.encode(&mut out).unwrap();
            out.extend_from_slice(b"app bytes");
            let (decoded, used) = decode_answer(&out).unwrap().unwrap();
            assert_eq!(decoded, answer);
            assert_eq!(&out[used..], b"app bytes");
            for len in 0..used {
                assert_eq!(decode_answer(&out[..len]), Ok(None));
            }
        }
    }

    #[test]
    fn bad_answers_are_errors() {
        assert_eq!(decode_answer(&[0, 0, 0]), Err(WireError::UnknownStatus(0)));
        assert_eq!(decode_answer(&[6, 0, 0]), Err(WireError::UnknownStatus(6)));
        assert_eq!(
            decode_answer(&[2, 0x04, 0x01]),
            Err(WireError::ReasonLength(1025))
        );
        assert_eq!(decode_answer(&[1, 0, 1, b'x']), Err(WireError::ReasonOnOk));
        assert_eq!(
            decode_answer(&[2, 0, 2, 0xff, 0xfe]),
            Err(WireError::ReasonNotUtf8)
        );
    }

    #[test]
    fn long_reasons_are_cut_at_a_character_boundary() {
        let answer = Answer::refuse(Status::BadToken, &"é".repeat(600));
        assert!(answer.reason.len() <= MAX_REASON_LEN);
        assert_eq!(answer.reason.len(), 1024);
        let mut out = Vec::new();
        answer.encode(&mut out).unwrap();
        assert_eq!(decode_answer(&out).unwrap().unwrap().0, answer);
    }

    #[test]
    fn legacy_token_block() {
        let block = encode_legacy_token(b"tcp:127.0.0.1:22").unwrap();
        assert_eq!(block.len(), 512);
        assert!(block[16..].iter().all(|&b| b == 0));
        assert_eq!(decode_legacy_token(&block), b"tcp:127.0.0.1:22");
        assert_eq!(decode_legacy_token(&[0; 512]), b"");
        assert_eq!(
            encode_legacy_token(&[1; 513]),
            Err(WireError::LegacyTokenTooLong(513))
        );
        let full = encode_legacy_token(&[b'x'; 512]).unwrap();
        assert_eq!(decode_legacy_token(&full).len(), 512);
    }

    #[test]
    fn legacy_status_bytes() {
        assert_eq!(Status::Ok.legacy_byte(), 1);
        assert_eq!(Status::BadToken.legacy_byte(), 2);
        assert_eq!(Status::PluginError.legacy_byte(), 2);
        assert_eq!(Status::Unreachable.legacy_byte(), 3);
        assert_eq!(Status::NotAllowed.legacy_byte(), 3);
        assert_eq!(Status::from_legacy_byte(0), None);
        assert_eq!(Status::from_legacy_byte(3), Some(Status::Unreachable));
        assert_eq!(Status::from_legacy_byte(4), None);
    }

    #[test]
    fn error_codes_round_trip() {
        for code in [
            ErrorCode::Done,
            ErrorCode::AppReset,
            ErrorCode::ProtocolViolation,
            ErrorCode::Shutdown,
            ErrorCode::ClosedByOperator,
        ] {
            assert_eq!(ErrorCode::from_varint(code.varint()), Some(code));
        }
        assert_eq!(ErrorCode::from_varint(VarInt::from_u32(9)), None);
    }
}
