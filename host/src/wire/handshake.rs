//! The per-stream handshake on a live QUIC stream, for both protocols and both endpoints
//! (SPEC §6): which protocol a connection speaks, the client's token, the server's answer.
//!
//! The byte formats are pure functions in [`crate::wire`]; this module reads and writes them
//! on quinn streams. The protocol is chosen here once per connection, from ALPN, and every
//! token and answer of either endpoint (and of `--check`) goes through the functions below.

use std::time::Duration;

use quinn::{Connection, ConnectionError, ReadError, ReadExactError, RecvStream, SendStream};
use quinn::{VarInt, WriteError};

use crate::wire::{self, Answer, ErrorCode, Status, WireError};

/// The wire protocol of a connection, agreed by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `quic-tun/2`: a length-prefixed token; the answer is a status and a reason.
    V2,
    /// `quic-tun`, the original's: a 512-byte NUL-padded token; the answer is one byte.
    Legacy,
}

impl Protocol {
    /// The protocol `connection` agreed on. A connection without ALPN speaks ours.
    pub fn of(connection: &Connection) -> Protocol {
        match negotiated_alpn(connection).as_deref() {
            Some(wire::ALPN_LEGACY) => Protocol::Legacy,
            _ => Protocol::V2,
        }
    }

    /// How a report names the protocol.
    pub fn describe(self) -> &'static str {
        match self {
            Protocol::V2 => "quic-tun/2",
            Protocol::Legacy => "quic-tun (the original protocol)",
        }
    }

    /// The token as this protocol frames it. The original's block is written in one piece
    /// (its server keeps only the last chunk it reads); a token too long for its 512 bytes is
    /// refused here rather than cut, as the original did.
    pub fn token_frame(self, token: &[u8]) -> Result<Vec<u8>, WireError> {
        match self {
            Protocol::Legacy => Ok(wire::encode_legacy_token(token)?.to_vec()),
            Protocol::V2 => {
                let mut frame = Vec::with_capacity(wire::TOKEN_HEADER_LEN + token.len());
                wire::encode_token(token, &mut frame)?;
                Ok(frame)
            }
        }
    }

    /// The answer's bytes in this protocol.
    pub fn answer_frame(self, answer: &Answer) -> Vec<u8> {
        match self {
            // Never 0x00: the original's client crashes on it.
            Protocol::Legacy => vec![answer.status.legacy_byte()],
            Protocol::V2 => {
                let mut bytes = Vec::with_capacity(wire::ANSWER_HEADER_LEN + answer.reason.len());
                answer
                    .encode(&mut bytes)
                    .expect("reasons are cut to the limit");
                bytes
            }
        }
    }
}

/// The ALPN protocol a connection agreed on, if any.
pub fn negotiated_alpn(connection: &Connection) -> Option<Vec<u8>> {
    connection
        .handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// Why a token or an answer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer sent a frame that breaks the protocol.
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("stream ended inside a frame")]
    FinishedEarly,
    #[error("peer reset the stream ({})", ErrorCode::describe(*.0))]
    Reset(VarInt),
    #[error("connection lost: {0}")]
    Connection(ConnectionError),
    #[error("{0}")]
    Stream(ReadError),
}

impl From<ReadError> for HandshakeError {
    fn from(error: ReadError) -> Self {
        match error {
            ReadError::Reset(code) => HandshakeError::Reset(code),
            ReadError::ConnectionLost(error) => HandshakeError::Connection(error),
            other => HandshakeError::Stream(other),
        }
    }
}

// ---- the server's side: read the token, write the answer ----

/// How many handshake time-outs a token may wait while its connection is busy.
const MAX_TOKEN_WAITS: u32 = 6;

/// Reads the token in two steps, each within `limit`: its first bytes (the `quic-tun/2`
/// header, the legacy block's first byte), read into fixed-size buffers, then the rest. In
/// between `admission` is awaited, untimed, and what it yields is held until the token is in:
/// a server bounds with it how many tokens are read into growing buffers at once, without
/// letting streams that exist but have sent nothing yet (QUIC opens every lower-numbered
/// stream implicitly) hold the places, since their tokens may be waiting for flow-control
/// credit that only reading the streams queued behind them would free. `None` when time ran
/// out.
pub async fn read_token<A: Future>(
    recv: &mut RecvStream,
    connection: &Connection,
    protocol: Protocol,
    limit: Duration,
    admission: A,
) -> Option<Result<Vec<u8>, HandshakeError>> {
    let start = match within_limit(connection, limit, read_start(recv, protocol)).await? {
        Ok(start) => start,
        Err(error) => return Some(Err(error)),
    };
    let _admitted = admission.await;
    within_limit(connection, limit, read_rest(recv, start)).await
}

/// Runs `read` within `limit`. On a connection busy with other tunnels a token can queue
/// behind their data (send buffers, flow control), so a time-out during which other stream
/// data arrived extends the wait, up to [`MAX_TOKEN_WAITS`] time-outs; a silent stream on an
/// otherwise quiet connection is closed at the first. `None` when time ran out.
async fn within_limit<T>(
    connection: &Connection,
    limit: Duration,
    read: impl Future<Output = T>,
) -> Option<T> {
    tokio::pin!(read);
    let mut seen = connection.stats().frame_rx.stream;
    for _ in 0..MAX_TOKEN_WAITS {
        if let Ok(result) = tokio::time::timeout(limit, &mut read).await {
            return Some(result);
        }
        let now = connection.stats().frame_rx.stream;
        if now == seen {
            return None;
        }
        seen = now;
    }
    None
}

/// What the first bytes of a token said.
enum Start {
    /// A `quic-tun/2` token of this many bytes; a bad length is refused before any token
    /// byte is read.
    V2(usize),
    /// The first byte of a legacy token block.
    Legacy(u8),
}

async fn read_start(recv: &mut RecvStream, protocol: Protocol) -> Result<Start, HandshakeError> {
    match protocol {
        Protocol::V2 => {
            let mut header = [0u8; wire::TOKEN_HEADER_LEN];
            read_exact(recv, &mut header).await?;
            Ok(Start::V2(wire::decode_token_header(header)?))
        }
        Protocol::Legacy => {
            let mut first = [0u8; 1];
            read_exact(recv, &mut first).await?;
            Ok(Start::Legacy(first[0]))
        }
    }
}

/// Reads the rest of the token. A `quic-tun/2` token's buffer grows with what has arrived, not
/// with the length the header claims: a peer that announces 4 KiB and sends nothing more costs
/// no 4 KiB. A legacy block (it may arrive in several pieces) has its padding stripped.
async fn read_rest(recv: &mut RecvStream, start: Start) -> Result<Vec<u8>, HandshakeError> {
    match start {
        Start::V2(len) => {
            let mut token = Vec::new();
            while token.len() < len {
                match recv.read_chunk(len - token.len(), true).await? {
                    Some(chunk) => token.extend_from_slice(&chunk.bytes),
                    None => return Err(HandshakeError::FinishedEarly),
                }
            }
            Ok(token)
        }
        Start::Legacy(first) => {
            let mut block = [0u8; wire::LEGACY_TOKEN_LEN];
            block[0] = first;
            read_exact(recv, &mut block[1..]).await?;
            Ok(wire::decode_legacy_token(&block).to_vec())
        }
    }
}

/// Writes the answer that opens the tunnel.
pub async fn accept(send: &mut SendStream, protocol: Protocol) -> Result<(), WriteError> {
    send.write_all(&protocol.answer_frame(&Answer::ok())).await
}

/// Sends a refusal, finishes our side and stops reading theirs.
pub async fn refuse(
    mut send: SendStream,
    mut recv: RecvStream,
    protocol: Protocol,
    answer: Answer,
) {
    let _ = recv.stop(ErrorCode::Done.varint());
    if send
        .write_all(&protocol.answer_frame(&answer))
        .await
        .is_ok()
    {
        let _ = send.finish();
        // Keep the stream until the peer has the answer.
        let _ = send.stopped().await;
    }
}

// ---- the client's side: read the answer ----

/// Reads the server's answer in `protocol`.
pub async fn read_answer(
    recv: &mut RecvStream,
    protocol: Protocol,
) -> Result<Answer, HandshakeError> {
    match protocol {
        Protocol::V2 => read_v2_answer(recv).await,
        Protocol::Legacy => read_legacy_answer(recv).await,
    }
}

async fn read_v2_answer(recv: &mut RecvStream) -> Result<Answer, HandshakeError> {
    let mut header = [0u8; wire::ANSWER_HEADER_LEN];
    read_exact(recv, &mut header).await?;
    let (status, len) = Answer::decode_header(header)?;
    let mut reason = vec![0u8; len];
    read_exact(recv, &mut reason).await?;
    Ok(Answer::from_parts(status, &reason)?)
}

/// Reads the original protocol's one-byte answer.
async fn read_legacy_answer(recv: &mut RecvStream) -> Result<Answer, HandshakeError> {
    let mut byte = [0u8; 1];
    read_exact(recv, &mut byte).await?;
    match Status::from_legacy_byte(byte[0]) {
        Some(Status::Ok) => Ok(Answer::ok()),
        Some(status) => Ok(Answer::refuse(
            status,
            "refused by a server of the original protocol",
        )),
        None => Err(WireError::UnknownStatus(byte[0]).into()),
    }
}

/// Fills `buf` from the stream; a stream that ends first breaks the protocol.
async fn read_exact(recv: &mut RecvStream, buf: &mut [u8]) -> Result<(), HandshakeError> {
    recv.read_exact(buf).await.map_err(|error| match error {
        ReadExactError::FinishedEarly(_) => HandshakeError::FinishedEarly,
        ReadExactError::ReadError(error) => error.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_framed_as_each_protocol_says() {
        assert_eq!(
            Protocol::V2.token_frame(b"tcp:a:1").unwrap(),
            b"\x00\x07tcp:a:1"
        );
        let block = Protocol::Legacy.token_frame(b"tcp:a:1").unwrap();
        assert_eq!(block.len(), wire::LEGACY_TOKEN_LEN);
        assert_eq!(
            wire::decode_legacy_token(block[..].try_into().unwrap()),
            b"tcp:a:1"
        );
        let long = vec![b'x'; wire::LEGACY_TOKEN_LEN + 1];
        assert!(Protocol::Legacy.token_frame(&long).is_err());
        assert!(Protocol::V2.token_frame(b"").is_err());
    }

    #[test]
    fn answers_are_framed_as_each_protocol_says() {
        let refusal = Answer::refuse(Status::NotAllowed, "no");
        assert_eq!(Protocol::V2.answer_frame(&Answer::ok()), [1, 0, 0]);
        assert_eq!(Protocol::V2.answer_frame(&refusal), b"\x04\x00\x02no");
        assert_eq!(Protocol::Legacy.answer_frame(&Answer::ok()), [0x01]);
        // The original knows no "not allowed": it hears "cannot reach the target".
        assert_eq!(Protocol::Legacy.answer_frame(&refusal), [0x03]);
    }
}
