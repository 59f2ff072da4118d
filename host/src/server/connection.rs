//! One client connection on the server: its handshake, within the admission budgets, then its
//! streams, each served by a task of its own (SPEC §6, §7).
//!
//! Two bounds keep a connection's cost to what it uses:
//! - quinn keeps a little state for every stream a peer may open, and each stream accepted
//!   costs a task, so a connection starts with [`FIRST_STREAM_LIMIT`] streams and the limit
//!   doubles, up to `--max-streams-per-connection`, when the client has most of them open,
//!   but not while [`TOKEN_READERS`] of them still wait for their token: streams that never
//!   send one do not make the limit grow;
//! - at most [`TOKEN_READERS`] streams of a connection are read for their token at once;
//!   further streams wait unread until one is done (they are never refused). Every stream is
//!   accepted at once, and a stream takes its place only once its token's header is in: a
//!   stream QUIC opened implicitly, whose token is still on its way, never holds one (its
//!   token may be waiting for flow-control credit that only reading other streams frees).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use quinn::{Connection, Incoming, VarInt};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};
use tracing::{Instrument, info, info_span, warn};

use super::ServerCore;
use super::admission::HandshakeSlot;
use super::stream::serve_stream;
use crate::tunnel::udp::{FlowTable, read_datagrams};
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
    let mut quic = core.quic.clone();
    quic.transport_config(core.transports.towards(incoming.remote_address()));
    let connecting = async move { incoming.accept_with(Arc::new(quic))?.await };
    let connection = match registry.handshake(connecting, limit).await {
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
    let bounds = Arc::new(StreamBounds::new(core.max_streams, &connection));
    info!(
        receive_window = windows.connection,
        "connection established"
    );
    let flows = Arc::new(FlowTable::default());
    let reading = read_datagrams(connection.clone(), flows.clone(), core.registry.clone());
    tokio::spawn(reading.in_current_span());
    serve_streams(connection, core, bounds, flows).await;
}

/// Accepts the connection's streams until it closes.
async fn serve_streams(
    connection: Connection,
    core: Arc<ServerCore>,
    bounds: Arc<StreamBounds>,
    flows: Arc<FlowTable>,
) {
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
        let open = bounds.accepted(&connection);
        let span = info_span!("tunnel", stream_id = %send.id(), server_app = tracing::field::Empty);
        let streams = (send, recv);
        let stream = serve_stream(
            streams,
            connection.clone(),
            core.clone(),
            open,
            flows.clone(),
        );
        // In the connection's span too, for a filter that turns the tunnel's off.
        tokio::spawn(stream.instrument(span).in_current_span());
    }
}

/// What one connection's streams share: places to read a token, and the stream limit.
pub(super) struct StreamBounds {
    /// Places to read a token, [`TOKEN_READERS`] of them.
    readers: Arc<Semaphore>,
    /// Streams accepted and not yet done.
    open: AtomicU32,
    /// Of those, streams whose token is not read yet.
    waiting: AtomicU32,
    /// The stream limit the client was given.
    granted: AtomicU32,
    max: u32,
}

impl StreamBounds {
    /// Grants an established connection its first [`FIRST_STREAM_LIMIT`] streams.
    fn new(max: u32, connection: &Connection) -> StreamBounds {
        let first = FIRST_STREAM_LIMIT.min(max);
        connection.set_max_concurrent_bi_streams(VarInt::from_u32(first));
        StreamBounds {
            readers: Arc::new(Semaphore::new(TOKEN_READERS)),
            open: AtomicU32::new(0),
            waiting: AtomicU32::new(0),
            granted: AtomicU32::new(first),
            max,
        }
    }

    /// Counts a newly accepted stream until the guard is dropped.
    fn accepted(self: &Arc<Self>, connection: &Connection) -> OpenStream {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.waiting.fetch_add(1, Ordering::Relaxed);
        self.grow(connection);
        OpenStream {
            bounds: self.clone(),
            waiting: true,
        }
    }

    /// Doubles the limit once three quarters of it are open, unless as many streams as there
    /// are token readers are still to send their token: a client that opens streams and sends
    /// no token gets no more of them. Asked when a stream is accepted and when a token is in.
    fn grow(&self, connection: &Connection) {
        let open = self.open.load(Ordering::Relaxed);
        let waiting = self.waiting.load(Ordering::Relaxed) as usize;
        let granted = self.granted.load(Ordering::Relaxed);
        if granted >= self.max
            || u64::from(open) * 4 < u64::from(granted) * 3
            || waiting >= TOKEN_READERS
        {
            return;
        }
        let more = granted.saturating_mul(2).min(self.max);
        // Streams' tasks ask too: one of them raises the limit.
        if self
            .granted
            .compare_exchange(granted, more, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            connection.set_max_concurrent_bi_streams(VarInt::from_u32(more));
        }
    }
}

/// One accepted stream, counted until dropped.
pub(super) struct OpenStream {
    bounds: Arc<StreamBounds>,
    /// Whether its token is still to be read.
    waiting: bool,
}

impl OpenStream {
    /// A place to read the token: see [`TOKEN_READERS`].
    pub(super) async fn reader(&self) -> Result<OwnedSemaphorePermit, AcquireError> {
        self.bounds.readers.clone().acquire_owned().await
    }

    /// The token has been read (or has failed): the stream no longer counts as waiting, which
    /// may let the limit grow.
    pub(super) fn token_read(&mut self, connection: &Connection) {
        self.stop_waiting();
        self.bounds.grow(connection);
    }

    fn stop_waiting(&mut self) {
        if std::mem::take(&mut self.waiting) {
            self.bounds.waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.stop_waiting();
        self.bounds.open.fetch_sub(1, Ordering::Relaxed);
    }
}
