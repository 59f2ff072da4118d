//! One client connection on the server: its handshake, within the admission budgets, then its
//! streams, each served by a task of its own (SPEC §6, §7).
//!
//! Two bounds keep a connection's cost to what it uses:
//! - quinn keeps a little state for every stream a peer may open, so a connection starts
//!   with [`FIRST_STREAM_LIMIT`] streams and the limit doubles, up to
//!   `--max-streams-per-connection`, when the client has most of them open;
//! - at most [`TOKEN_READERS`] streams of a connection are read for their token at once;
//!   further streams wait unread until one is done (they are never refused). Every stream is
//!   accepted at once, and a stream takes its place only once its token's header is in: a
//!   stream QUIC opened implicitly, whose token is still on its way, never holds one (its
//!   token may be waiting for flow-control credit that only reading other streams frees).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use quinn::{Connection, Incoming, VarInt};
use tokio::sync::Semaphore;
use tracing::{Instrument, info, info_span, warn};

use super::ServerCore;
use super::admission::HandshakeSlot;
use super::stream::serve_stream;
use crate::wire::ErrorCode;

/// Streams a client may open while its handshake is in progress (the transport parameter);
/// quinn keeps a map entry for each from the first packet on, so a half-open handshake costs
/// less with few.
pub const HANDSHAKE_STREAM_LIMIT: u32 = 8;
/// Streams a new connection may open once established, before it has shown it needs more.
pub const FIRST_STREAM_LIMIT: u32 = 64;
/// Streams of one connection read for their token at once.
pub const TOKEN_READERS: usize = 64;

/// Completes the handshake and serves the connection until it closes.
pub(super) async fn serve_connection(
    incoming: Incoming,
    slot: HandshakeSlot,
    core: Arc<ServerCore>,
) {
    let registry = &core.connections_registry;
    let limit = core.admission.handshake_timeout(core.handshake_timeout);
    let connection = match registry.handshake(incoming, limit).await {
        Ok(connection) => connection,
        Err(failure) => return warn!("handshake failed: {failure}"),
    };
    drop(slot);
    let Some(_established) = core.admission.try_establish() else {
        registry.handshake_failed("too_many_connections");
        connection.close(ErrorCode::Shutdown.varint(), b"too many connections");
        return warn!("connection refused: too many connections");
    };
    let (windows, _reservation) = core.budget.reserve();
    connection.set_receive_window(VarInt::from_u64(windows.connection).unwrap_or(VarInt::MAX));
    connection.set_send_window(windows.send);
    let _listed = registry.register(&connection, Some(windows.connection));
    let streams = StreamLimit::new(core.max_streams, &connection);
    info!(
        receive_window = windows.connection,
        "connection established"
    );
    serve_streams(connection, core, streams).await;
}

/// Accepts the connection's streams until it closes.
async fn serve_streams(connection: Connection, core: Arc<ServerCore>, streams: StreamLimit) {
    let readers = Arc::new(Semaphore::new(TOKEN_READERS));
    loop {
        let (mut send, mut recv) = match connection.accept_bi().await {
            Ok(pair) => pair,
            Err(error) => return info!("connection closed: {error}"),
        };
        if core.draining.load(Ordering::Relaxed) {
            // Shutting down: open tunnels may finish, new ones are turned away.
            let _ = recv.stop(ErrorCode::Shutdown.varint());
            let _ = send.reset(ErrorCode::Shutdown.varint());
            continue;
        }
        let open = streams.opened(&connection);
        let span = info_span!("tunnel", stream_id = %send.id(), server_app = tracing::field::Empty);
        let stream = serve_stream(
            (send, recv),
            connection.clone(),
            core.clone(),
            readers.clone(),
        );
        tokio::spawn(
            async move {
                stream.await;
                drop(open);
            }
            .instrument(span),
        );
    }
}

/// The number of streams a connection may have open, grown as it uses them.
struct StreamLimit {
    open: Arc<AtomicU32>,
    granted: AtomicU32,
    max: u32,
}

impl StreamLimit {
    /// Grants an established connection its first [`FIRST_STREAM_LIMIT`] streams.
    fn new(max: u32, connection: &Connection) -> StreamLimit {
        let first = FIRST_STREAM_LIMIT.min(max);
        connection.set_max_concurrent_bi_streams(VarInt::from_u32(first));
        StreamLimit {
            open: Arc::default(),
            granted: AtomicU32::new(first),
            max,
        }
    }

    /// Counts a newly accepted stream until the guard is dropped, and doubles the limit once
    /// three quarters of it are open.
    fn opened(&self, connection: &Connection) -> OpenStream {
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        let granted = self.granted.load(Ordering::Relaxed);
        if granted < self.max && u64::from(open) * 4 >= u64::from(granted) * 3 {
            let more = granted.saturating_mul(2).min(self.max);
            self.granted.store(more, Ordering::Relaxed);
            connection.set_max_concurrent_bi_streams(VarInt::from_u32(more));
        }
        OpenStream(self.open.clone())
    }
}

/// One open stream, counted until dropped.
struct OpenStream(Arc<AtomicU32>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
