//! One application connection ⇄ one QUIC stream, for both endpoints.
//!
//! Each direction is copied on its own, and half-close is kept: EOF from the application
//! finishes the QUIC send side only, and a finished QUIC stream shuts down only the
//! application's write side. An abort is never turned into a clean EOF: an application reset
//! or a relay error resets the QUIC stream (RESET_STREAM and STOP_SENDING with
//! [`ErrorCode::AppReset`]), and a reset from the peer resets the application connection.
//!
//! Copy buffers are taken only when the application socket is readable and released after the
//! chunk is handed to QUIC, so an idle tunnel holds none. The other way, quinn's received
//! chunks (about a packet each) are written to the application a batch at a time with one
//! vectored write, without a copy. Bytes are counted with one atomic add per chunk or batch.
//!
//! Tunnels of one connection share it. quinn sends the streams of one priority in turn, and a
//! stream of higher priority before any of lower, so a tunnel that has sent much lately (a
//! file copy) steps down to [`BULK_PRIORITY`] and one that sends little (a shell, a desktop's
//! input) stays above it: its next bytes leave in the next packet, not after the bulk
//! tunnels' queued data (SPEC §10). A bulk tunnel that quiets down steps back up. No tunnel
//! starves: the higher level holds only tunnels that send little.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn::{ConnectionError, ReadError, RecvStream, SendStream, VarInt, WriteError};
use tracing::{debug, warn};

use quictun_plugin_api::Direction;

use crate::tunnel::app::{AppStream, WRITE_BATCH};
use crate::tunnel::sniff::Sniffer;
use crate::tunnel::{Side, Tunnel};
use crate::wire::handshake::{self, HandshakeError, Protocol};
use crate::wire::{Answer, ErrorCode, Status};

/// Largest chunk read from an application socket at once.
const CHUNK: usize = 64 * 1024;
/// Chunks at least this big are handed to QUIC without a copy; smaller ones are copied so
/// the 64 KiB buffer is not kept alive for a few bytes.
const ZERO_COPY_MIN: usize = 16 * 1024;

/// The priority of a tunnel that sent more than [`BULK_BYTES`] in one [`BULK_PERIOD`]; the
/// others keep quinn's default, 0.
const BULK_PRIORITY: i32 = -1;
/// Bytes within one period from which a tunnel counts as bulk: 8 Mbit/s.
const BULK_BYTES: u64 = 1024 * 1024;
/// The period over which a tunnel's sending is judged.
const BULK_PERIOD: Duration = Duration::from_secs(1);

/// Steps a stream down to [`BULK_PRIORITY`] as soon as it has sent [`BULK_BYTES`] in the
/// current period, and back up at the end of a period in which it sent less.
struct Priority {
    period_start: Instant,
    sent: u64,
    bulk: bool,
}

impl Priority {
    fn new(now: Instant) -> Priority {
        Priority {
            period_start: now,
            sent: 0,
            bulk: false,
        }
    }

    /// Accounts for `len` bytes about to be written to `send` at `now`.
    fn sending(&mut self, send: &SendStream, len: usize, now: Instant) {
        if now.duration_since(self.period_start) >= BULK_PERIOD {
            // A period with little sent (or several periods without a write) ends the bulk.
            let quiet =
                self.sent < BULK_BYTES || now.duration_since(self.period_start) >= 2 * BULK_PERIOD;
            if self.bulk && quiet {
                self.set(send, false);
            }
            self.period_start = now;
            self.sent = 0;
        }
        self.sent += len as u64;
        if !self.bulk && self.sent >= BULK_BYTES {
            self.set(send, true);
        }
    }

    fn set(&mut self, send: &SendStream, bulk: bool) {
        self.bulk = bulk;
        // A stream already closed needs no priority; the write that follows reports it.
        let _ = send.set_priority(if bulk { BULK_PRIORITY } else { 0 });
    }
}

/// What the server's answer waits for: the target's first bytes, to leave in one packet with
/// them, but not longer than this. The client reads the answer before any reply, so holding it
/// delays nothing the application sees; sent apart, it costs the client a wake-up of its own
/// while the target is answering (on loopback, where that wake-up competes with the target for
/// the CPU, a measurable part of the time to first byte).
const ANSWER_HOLD: Duration = Duration::from_millis(1);

/// How the tunnel's stream begins, besides the application's bytes.
#[derive(Debug)]
pub enum Opening {
    /// The client: the server's answer, in this protocol, comes first.
    ReadAnswer(Protocol),
    /// The server: this answer goes first, with the target's first bytes when they come
    /// within [`ANSWER_HOLD`].
    SendAnswer(Vec<u8>),
}

/// How a tunnel ended.
#[derive(Debug)]
pub enum End {
    /// Both directions finished cleanly.
    Done,
    /// The server refused the tunnel.
    Refused(Answer),
    /// The tunnel was cut off; both sides were reset.
    Aborted(Abort),
}

/// Why a tunnel was cut off.
#[derive(Debug, thiserror::Error)]
pub enum Abort {
    #[error("application connection failed: {0}")]
    App(io::Error),
    #[error("peer reset the stream ({})", ErrorCode::describe(*.0))]
    PeerReset(VarInt),
    #[error("peer stopped reading ({})", ErrorCode::describe(*.0))]
    PeerStopped(VarInt),
    #[error("connection lost: {0}")]
    Connection(ConnectionError),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("closed by the operator")]
    Operator,
}

impl Abort {
    /// Expected ends (the application or the peer went away) are logged at debug.
    pub fn is_trivial(&self) -> bool {
        match self {
            Abort::App(_) | Abort::PeerReset(_) | Abort::PeerStopped(_) => true,
            Abort::Connection(error) => matches!(
                error,
                ConnectionError::ApplicationClosed(_) | ConnectionError::LocallyClosed
            ),
            Abort::Protocol(_) => false,
            Abort::Operator => false,
        }
    }

    fn code(&self) -> ErrorCode {
        match self {
            Abort::Protocol(_) => ErrorCode::ProtocolViolation,
            Abort::Operator => ErrorCode::ClosedByOperator,
            _ => ErrorCode::AppReset,
        }
    }
}

impl From<HandshakeError> for Abort {
    fn from(error: HandshakeError) -> Self {
        match error {
            HandshakeError::Reset(code) => Abort::PeerReset(code),
            HandshakeError::Connection(error) => Abort::Connection(error),
            other => Abort::Protocol(other.to_string()),
        }
    }
}

/// Logs how a tunnel ended, once.
pub fn log_end(end: End, tunnel: &Tunnel) {
    let (up, down) = (tunnel.client_to_server(), tunnel.server_to_client());
    match end {
        End::Done => debug!(client_bytes = up, server_bytes = down, "tunnel closed"),
        End::Refused(answer) => {
            warn!(status = %answer.status, "tunnel refused by the server: {}", answer.reason)
        }
        End::Aborted(abort) if abort.is_trivial() => {
            debug!(
                client_bytes = up,
                server_bytes = down,
                "tunnel reset: {abort}"
            )
        }
        End::Aborted(abort) => {
            warn!(
                client_bytes = up,
                server_bytes = down,
                "tunnel reset: {abort}"
            )
        }
    }
}

/// Why one direction stopped early.
enum Stop {
    Refused(Answer),
    Abort(Abort),
}

impl From<Abort> for Stop {
    fn from(abort: Abort) -> Self {
        Stop::Abort(abort)
    }
}

/// Relays until both directions are done, one of them fails, or the operator closes the
/// tunnel. The client reads the server's answer first ([`Opening::ReadAnswer`]), and a
/// refusal ends the tunnel before any byte reaches the application; the server sends it.
pub async fn relay(
    app: AppStream,
    mut send: SendStream,
    mut recv: RecvStream,
    tunnel: &Tunnel,
    opening: Option<Opening>,
    sniffer: Option<&Sniffer>,
) -> End {
    let (answer_to_read, answer_to_send) = match opening {
        Some(Opening::ReadAnswer(protocol)) => (Some(protocol), None),
        Some(Opening::SendAnswer(frame)) => (None, Some(frame)),
        None => (None, None),
    };
    let counters = &tunnel.counters;
    let (up, down) = match tunnel.side {
        Side::Client => (
            Way {
                count: &counters.client_to_server,
                direction: Direction::ClientToServer,
                sniffer,
            },
            Way {
                count: &counters.server_to_client,
                direction: Direction::ServerToClient,
                sniffer,
            },
        ),
        Side::Server => (
            Way {
                count: &counters.server_to_client,
                direction: Direction::ServerToClient,
                sniffer,
            },
            Way {
                count: &counters.client_to_server,
                direction: Direction::ClientToServer,
                sniffer,
            },
        ),
    };
    let peer_stopped = peer_stopped(send.stopped());
    let outcome = tokio::select! {
        outcome = async {
            tokio::try_join!(
                upstream(&app, &mut send, up, answer_to_send),
                downstream(&app, &mut recv, down, answer_to_read)
            )
        } => outcome,
        () = tunnel.closed() => Err(Stop::Abort(Abort::Operator)),
        abort = peer_stopped => Err(Stop::Abort(abort)),
    };
    match outcome {
        Ok(_) => End::Done,
        Err(Stop::Refused(answer)) => {
            // Read nothing more (the original's server repeats its refusal byte until told
            // to stop) and end our side.
            let _ = recv.stop(ErrorCode::Done.varint());
            let _ = send.finish();
            app.reset();
            End::Refused(answer)
        }
        Err(Stop::Abort(abort)) => {
            let code = abort.code().varint();
            let _ = send.reset(code);
            let _ = recv.stop(code);
            app.reset();
            End::Aborted(abort)
        }
    }
}

/// Resolves when the peer aborted the tunnel (it stops our stream with another code than
/// "done", and resets its own): at once, even while the other direction waits on a slow
/// application with data in hand, which would otherwise hold the tunnel open, and listed,
/// until the application had read it all. "Done" (a refusal, read from the answer) and a
/// completed stream leave the directions to end on their own.
async fn peer_stopped(
    stopped: impl Future<Output = Result<Option<VarInt>, quinn::StoppedError>>,
) -> Abort {
    match stopped.await {
        Ok(Some(code)) if code != ErrorCode::Done.varint() => Abort::PeerStopped(code),
        _ => std::future::pending().await,
    }
}

/// One direction's accounting.
#[derive(Clone, Copy)]
struct Way<'a> {
    count: &'a AtomicU64,
    direction: Direction,
    sniffer: Option<&'a Sniffer>,
}

impl Way<'_> {
    /// Accounts for chunks read from the application: one atomic add, and the discriminators
    /// while they listen.
    fn saw<T: AsRef<[u8]>>(&self, chunks: &[T]) {
        let len = self.sniff(chunks);
        self.counted(len);
    }

    /// Shows chunks to the discriminators while they listen; their length.
    fn sniff<T: AsRef<[u8]>>(&self, chunks: &[T]) -> u64 {
        if let Some(sniffer) = self.sniffer {
            for chunk in chunks {
                sniffer.feed(self.direction, chunk.as_ref());
            }
        }
        chunks.iter().map(|c| c.as_ref().len() as u64).sum()
    }

    /// Counts bytes that reached or left the application (SPEC §8: each endpoint counts
    /// where it reads from, or writes to, its own application).
    fn counted(&self, len: u64) {
        self.count.fetch_add(len, Ordering::Relaxed);
    }
}

/// Application → QUIC.
async fn upstream(
    app: &AppStream,
    send: &mut SendStream,
    way: Way<'_>,
    mut answer: Option<Vec<u8>>,
) -> Result<(), Stop> {
    let mut priority = Priority::new(Instant::now());
    loop {
        let mut prefix = None;
        if let Some(frame) = answer.take() {
            if tokio::time::timeout(ANSWER_HOLD, app.readable())
                .await
                .is_err()
            {
                // Nothing from the target yet: the answer goes alone.
                write_all_or_stop(send, &frame).await?;
                continue;
            }
            prefix = Some(frame);
        }
        app.readable().await.map_err(Abort::App)?;
        // Taken only now: an idle tunnel holds no copy buffer.
        let mut buf = BytesMut::with_capacity(CHUNK);
        buf.extend_from_slice(prefix.as_deref().unwrap_or_default());
        let prefix = buf.len();
        let eof = fill(app, &mut buf).map_err(Abort::App)?;
        if !buf.is_empty() {
            way.saw(&[&buf[prefix..]]);
            priority.sending(send, buf.len(), Instant::now());
            let written = if buf.len() >= ZERO_COPY_MIN {
                send.write_chunk(buf.freeze()).await
            } else {
                send.write_all(&buf).await
            };
            match written {
                Ok(()) => {}
                // The server stops reading with "done" only when it refused the tunnel: the
                // answer, read by the other direction, says why.
                Err(WriteError::Stopped(code)) if code == ErrorCode::Done.varint() => return Ok(()),
                Err(error) => return Err(write_abort(error).into()),
            }
        }
        if eof {
            let _ = send.finish();
            return Ok(());
        }
    }
}

/// Writes `bytes` whole (an answer).
async fn write_all_or_stop(send: &mut SendStream, bytes: &[u8]) -> Result<(), Stop> {
    send.write_all(bytes)
        .await
        .map_err(|error| write_abort(error).into())
}

/// Reads what the socket has, up to [`CHUNK`] bytes, without waiting. Returns whether the
/// application closed its side.
fn fill(app: &AppStream, buf: &mut BytesMut) -> io::Result<bool> {
    while buf.len() < CHUNK {
        match app.try_read_buf(buf) {
            Ok(0) => return Ok(true),
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(false)
}

/// QUIC → application.
async fn downstream(
    app: &AppStream,
    recv: &mut RecvStream,
    way: Way<'_>,
    answer: Option<Protocol>,
) -> Result<(), Stop> {
    if let Some(protocol) = answer {
        let answer = handshake::read_answer(recv, protocol)
            .await
            .map_err(Abort::from)?;
        if answer.status != Status::Ok {
            return Err(Stop::Refused(answer));
        }
    }
    // quinn hands out received data a packet's worth (~1.2 KiB) at a time: take what has
    // arrived, up to a batch of them, in one call and write them with one vectored write.
    let mut chunks: [Bytes; WRITE_BATCH] = std::array::from_fn(|_| Bytes::new());
    loop {
        match recv.read_chunks(&mut chunks).await {
            Ok(Some(n)) => {
                let len = way.sniff(&chunks[..n]);
                app.write_all_chunks(&mut chunks[..n])
                    .await
                    .map_err(Abort::App)?;
                way.counted(len);
            }
            Ok(None) => {
                // The application may already have closed its socket: nothing is lost then.
                let _ = app.shutdown_write();
                return Ok(());
            }
            Err(error) => return Err(read_abort(error).into()),
        }
    }
}

fn read_abort(error: ReadError) -> Abort {
    match error {
        ReadError::Reset(code) => Abort::PeerReset(code),
        ReadError::ConnectionLost(error) => Abort::Connection(error),
        other => Abort::Protocol(other.to_string()),
    }
}

fn write_abort(error: WriteError) -> Abort {
    match error {
        WriteError::Stopped(code) => Abort::PeerStopped(code),
        WriteError::ConnectionLost(error) => Abort::Connection(error),
        other => Abort::Protocol(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use super::*;
    use crate::quic;
    use crate::tls::{self, Verification};

    /// A send stream of a real QUIC connection on loopback.
    async fn stream() -> (SendStream, quinn::Endpoint) {
        let server = quic::loopback_server();
        let addr = server.local_addr().unwrap();
        let client = quic::endpoint(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), None).unwrap();
        let config =
            quinn::ClientConfig::new(tls::client_crypto(&Verification::Insecure, None).unwrap());
        let connecting = client.connect_with(config, addr, "localhost").unwrap();
        let (connection, _) = tokio::join!(connecting, async {
            server.accept().await.unwrap().await.unwrap()
        });
        let (send, _recv) = connection.unwrap().open_bi().await.unwrap();
        (send, server)
    }

    #[tokio::test]
    async fn a_tunnel_steps_down_while_it_sends_much_and_back_up_once_quiet() {
        let (send, _server) = stream().await;
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut priority = Priority::new(start);
        let level = |send: &SendStream| send.priority().unwrap();

        priority.sending(&send, 512 * 1024, at(0));
        assert_eq!(level(&send), 0, "half the bulk bytes: still interactive");
        priority.sending(&send, 600 * 1024, at(500));
        assert_eq!(level(&send), BULK_PRIORITY, "over a MiB within a second");
        priority.sending(&send, 10, at(1_100));
        assert_eq!(level(&send), BULK_PRIORITY, "the period before was bulk");
        priority.sending(&send, 10, at(2_200));
        assert_eq!(level(&send), 0, "a quiet period ends the bulk");

        priority.sending(&send, 2 * 1024 * 1024, at(2_300));
        assert_eq!(level(&send), BULK_PRIORITY);
        priority.sending(&send, 10, at(9_000));
        assert_eq!(level(&send), 0, "seconds without a write end it too");
    }
}
