//! One UDP flow's relay, written once for both endpoints (SPEC §11).
//!
//! A flow is one application source address on the client, one connected UDP socket on the
//! server, and one QUIC stream between them whose id tags the flow's DATAGRAM frames. Once the
//! handshake is done, [`relay`] moves datagrams both ways: toward the peer in DATAGRAM frames
//! when they fit, else as length records on the stream; from the peer out of both. The flow
//! ends when it has been idle (no datagram either way) for the idle time-out, or when the peer
//! finishes the stream; ending finishes our side, which ends it at the other end too.
//!
//! Everything a peer or an application can fill is bounded: [`MAX_FLOWS`] flows per
//! connection, and each flow's queue in datagrams and bytes ([`flow_queue`]); an overflow
//! drops and counts.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::{Connection, RecvStream, SendDatagramError, SendStream};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::flow_queue::{self, Budget};
use super::{Side, Tunnel, TunnelRegistry};
use crate::lock::lock;
use crate::wire::ErrorCode;
use crate::wire::handshake::HandshakeError;
use crate::wire::udp::{self, MAX_DATAGRAM};

/// Flows one QUIC connection (server) or one listener (client) carries at once.
pub const MAX_FLOWS: usize = 1024;

/// The flows of one QUIC connection, by stream id: where its DATAGRAM frames go.
#[derive(Debug, Default)]
pub struct FlowTable {
    flows: std::sync::Mutex<HashMap<u64, Entry>>,
    /// DATAGRAM frames for no known flow, or cut short.
    unknown: AtomicU64,
    /// What the flows' queues hold together.
    budget: Arc<Budget>,
}

#[derive(Debug)]
struct Entry {
    queue: flow_queue::Sender,
    tunnel: Arc<Tunnel>,
}

impl FlowTable {
    /// Adds flow `id`, its DATAGRAM frames to be read from the receiver returned; `None`
    /// when the connection has [`MAX_FLOWS`] flows already.
    pub fn insert(&self, id: u64, tunnel: Arc<Tunnel>) -> Option<flow_queue::Receiver> {
        let mut flows = lock(&self.flows);
        if flows.len() >= MAX_FLOWS {
            return None;
        }
        let (queue, receiver) = flow_queue::channel(self.budget.clone());
        flows.insert(id, Entry { queue, tunnel });
        Some(receiver)
    }

    /// Removes flow `id`; what its queue dropped since the last frame, or still held, is
    /// counted on the flow.
    pub fn remove(&self, id: u64) {
        let Some(entry) = lock(&self.flows).remove(&id) else {
            return;
        };
        let dropped = entry.queue.take_dropped();
        let counted = &entry.tunnel.counters.dropped_datagrams;
        counted.fetch_add(dropped, Ordering::Relaxed);
    }

    /// Hands a DATAGRAM frame to its flow; drops and counts it when its queue is full (on
    /// the flow) or when the flow is unknown (here, and `false` is returned).
    pub fn deliver(&self, frame: Bytes) -> bool {
        let Some((id, payload)) = udp::decode_datagram(frame) else {
            self.unknown.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        // A copy of its own: the frame may share a larger receive buffer, which the flow's
        // byte bound would not see.
        let payload = Bytes::copy_from_slice(&payload);
        let flows = lock(&self.flows);
        // Unknown, or ending.
        let Some(Ok(entry)) = flows.get(&id).map(|e| e.queue.push(payload).map(|()| e)) else {
            self.unknown.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        let dropped = entry.queue.take_dropped();
        if dropped > 0 {
            let counted = &entry.tunnel.counters.dropped_datagrams;
            counted.fetch_add(dropped, Ordering::Relaxed);
        }
        true
    }

    /// DATAGRAM frames dropped for naming no known flow.
    pub fn unknown(&self) -> u64 {
        self.unknown.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        lock(&self.flows).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads `connection`'s DATAGRAM frames into its flows until it closes; those for no known
/// flow count in the registry's dropped datagrams.
pub async fn read_datagrams(
    connection: Connection,
    table: Arc<FlowTable>,
    registry: Arc<TunnelRegistry>,
) {
    while let Ok(frame) = connection.read_datagram().await {
        if !table.deliver(frame) {
            registry.count_dropped_datagrams(None, 1);
        }
    }
}

/// The application's end of a flow.
#[derive(Debug)]
pub enum FlowApp {
    /// The client's: datagrams from one source address of the shared listener socket, queued
    /// by the listener (which counts what it drops there); replies go back to that address.
    Listener {
        socket: Arc<UdpSocket>,
        source: SocketAddr,
        queue: flow_queue::Receiver,
    },
    /// The server's: a socket of the flow's own, connected to the target.
    Connected(UdpSocket),
}

impl FlowApp {
    /// The next datagram from the application; `None` when the listener is gone.
    async fn recv(&mut self) -> Option<io::Result<Bytes>> {
        match self {
            FlowApp::Listener { queue, .. } => queue.recv().await.map(Ok),
            FlowApp::Connected(socket) => Some(recv_sized(socket).await),
        }
    }

    async fn send(&self, datagram: &[u8]) -> io::Result<()> {
        match self {
            FlowApp::Listener { socket, source, .. } => socket.send_to(datagram, source).await,
            FlowApp::Connected(socket) => socket.send(datagram).await,
        }
        .map(drop)
    }

    /// Drops the listener counted since the last call.
    fn take_dropped(&self) -> u64 {
        match self {
            FlowApp::Listener { queue, .. } => queue.take_dropped(),
            FlowApp::Connected(_) => 0,
        }
    }
}

thread_local! {
    /// What a flow's socket is read into before the datagram is copied out at its own size:
    /// one per thread, so a flow holds no 64 KiB buffer of its own.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_DATAGRAM + 1]);
}

/// Receives one datagram, in a buffer of its size. Cancel-safe.
async fn recv_sized(socket: &UdpSocket) -> io::Result<Bytes> {
    loop {
        socket.readable().await?;
        let received = SCRATCH.with_borrow_mut(|buf| {
            socket
                .try_recv(buf)
                .map(|len| Bytes::copy_from_slice(&buf[..len]))
        });
        match received {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            received => return received,
        }
    }
}

/// Sends the application's datagrams on the stream as records while `answer` is awaited: a
/// flow's first datagrams need no round trip (SPEC §11).
pub async fn before_answer<F: Future>(
    app: &mut FlowApp,
    send: &mut SendStream,
    tunnel: &Tunnel,
    answer: F,
) -> Result<F::Output, quinn::WriteError> {
    tokio::pin!(answer);
    loop {
        tokio::select! {
            answer = &mut answer => return Ok(answer),
            datagram = app.recv() => match datagram {
                Some(Ok(datagram)) => {
                    count_from_app(tunnel, Side::Client, &datagram);
                    match write_record(send, &datagram, tunnel).await {
                        Ok(()) => {}
                        // The server stops reading with "done" only when it refuses the
                        // flow: its answer says why.
                        Err(quinn::WriteError::Stopped(code)) if code == ErrorCode::Done.varint() => {
                            return Ok(answer.await);
                        }
                        Err(error) => return Err(error),
                    }
                }
                Some(Err(_)) => {}
                // The listener is gone: only the answer is left to wait for.
                None => return Ok(answer.await),
            },
        }
    }
}

/// A flow once the handshake is done.
pub struct Flow {
    pub app: FlowApp,
    pub send: SendStream,
    pub recv: RecvStream,
    /// Its DATAGRAM frames, from the connection's [`FlowTable`].
    pub datagrams: flow_queue::Receiver,
    pub connection: Connection,
    pub side: Side,
    pub idle_timeout: Duration,
}

/// How a flow ended.
#[derive(Debug)]
pub enum FlowEnd {
    Idle(Duration),
    PeerFinished,
    ClosedByOperator,
    Failed(String),
}

impl std::fmt::Display for FlowEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlowEnd::Idle(limit) => write!(f, "idle for {limit:?}"),
            FlowEnd::PeerFinished => f.write_str("peer ended the flow"),
            FlowEnd::ClosedByOperator => f.write_str("closed by the operator"),
            FlowEnd::Failed(reason) => f.write_str(reason),
        }
    }
}

/// Relays the flow until it ends, then ends its stream: finished on an idle time-out or the
/// peer's end, reset otherwise.
pub async fn relay(mut flow: Flow, tunnel: &Tunnel) -> FlowEnd {
    let end = relay_until_end(&mut flow, tunnel).await;
    count_dropped(&flow, tunnel);
    match end {
        FlowEnd::Idle(_) | FlowEnd::PeerFinished => {
            let _ = flow.send.finish();
            let _ = flow.recv.stop(ErrorCode::Done.varint());
        }
        FlowEnd::ClosedByOperator => {
            let _ = flow.send.reset(ErrorCode::ClosedByOperator.varint());
            let _ = flow.recv.stop(ErrorCode::ClosedByOperator.varint());
        }
        FlowEnd::Failed(_) => {
            let _ = flow.send.reset(ErrorCode::AppReset.varint());
            let _ = flow.recv.stop(ErrorCode::AppReset.varint());
        }
    }
    end
}

async fn relay_until_end(flow: &mut Flow, tunnel: &Tunnel) -> FlowEnd {
    let id = u64::from(flow.send.id());
    let mut records = RecordReader::default();
    let idle = tokio::time::sleep(flow.idle_timeout);
    tokio::pin!(idle);
    loop {
        let event = tokio::select! {
            datagram = flow.app.recv() => Event::App(datagram),
            record = records.next(&mut flow.recv) => Event::Record(record),
            Some(datagram) = flow.datagrams.recv() => Event::Frame(datagram),
            () = &mut idle => return FlowEnd::Idle(flow.idle_timeout),
            () = tunnel.closed() => return FlowEnd::ClosedByOperator,
        };
        count_dropped(flow, tunnel);
        match event {
            Event::App(None) => return FlowEnd::Failed("the listener closed".into()),
            // ICMP port unreachable from the target surfaces here: not an end.
            Event::App(Some(Err(error))) if error.kind() == io::ErrorKind::ConnectionRefused => {}
            Event::App(Some(Err(error))) => {
                return FlowEnd::Failed(format!("application socket: {error}"));
            }
            Event::App(Some(Ok(datagram))) => {
                count_from_app(tunnel, flow.side, &datagram);
                if let Err(error) = to_peer(flow, id, datagram, tunnel).await {
                    return FlowEnd::Failed(format!("cannot send to the peer: {error}"));
                }
            }
            Event::Record(Ok(Some(datagram))) | Event::Frame(datagram) => {
                to_app(flow, &datagram, tunnel).await;
            }
            Event::Record(Ok(None)) => return FlowEnd::PeerFinished,
            Event::Record(Err(error)) => return FlowEnd::Failed(format!("flow stream: {error}")),
        }
        idle.as_mut().reset(Instant::now() + flow.idle_timeout);
    }
}

/// Moves what the listener dropped for the flow into the tunnel's count.
fn count_dropped(flow: &Flow, tunnel: &Tunnel) {
    let dropped = flow.app.take_dropped();
    if dropped > 0 {
        let counted = &tunnel.counters.dropped_datagrams;
        counted.fetch_add(dropped, Ordering::Relaxed);
    }
}

/// What woke a flow up.
enum Event {
    App(Option<io::Result<Bytes>>),
    Record(Result<Option<Bytes>, HandshakeError>),
    Frame(Bytes),
}

fn count_from_app(tunnel: &Tunnel, side: Side, datagram: &[u8]) {
    let counters = &tunnel.counters;
    let (datagrams, bytes) = match side {
        Side::Client => (&counters.client_datagrams, &counters.client_to_server),
        Side::Server => (&counters.server_datagrams, &counters.server_to_client),
    };
    datagrams.fetch_add(1, Ordering::Relaxed);
    bytes.fetch_add(datagram.len() as u64, Ordering::Relaxed);
}

/// Sends a datagram toward the peer: a DATAGRAM frame when it fits, a record otherwise.
async fn to_peer(
    flow: &mut Flow,
    id: u64,
    datagram: Bytes,
    tunnel: &Tunnel,
) -> Result<(), quinn::WriteError> {
    let fits = flow
        .connection
        .max_datagram_size()
        .is_some_and(|max| udp::varint_len(id) + datagram.len() <= max);
    if fits {
        match flow
            .connection
            .send_datagram(udp::encode_datagram(id, &datagram))
        {
            Ok(()) => return Ok(()),
            // The path's limit shrank meanwhile: the stream takes it.
            Err(SendDatagramError::TooLarge) => {}
            Err(_) => {
                tunnel
                    .counters
                    .dropped_datagrams
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
    }
    write_record(&mut flow.send, &datagram, tunnel).await
}

async fn write_record(
    send: &mut SendStream,
    datagram: &[u8],
    tunnel: &Tunnel,
) -> Result<(), quinn::WriteError> {
    let mut record = BytesMut::new();
    if udp::encode_record(datagram, &mut record).is_none() {
        // Longer than any UDP payload: cannot come from a socket, never sent.
        tunnel
            .counters
            .dropped_datagrams
            .fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    send.write_all(&record).await
}

/// Writes a datagram from the peer to the application; a failed send drops and counts it.
async fn to_app(flow: &Flow, datagram: &[u8], tunnel: &Tunnel) {
    let counters = &tunnel.counters;
    if flow.app.send(datagram).await.is_err() {
        counters.dropped_datagrams.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let (datagrams, bytes) = match flow.side {
        Side::Client => (&counters.server_datagrams, &counters.server_to_client),
        Side::Server => (&counters.client_datagrams, &counters.client_to_server),
    };
    datagrams.fetch_add(1, Ordering::Relaxed);
    bytes.fetch_add(datagram.len() as u64, Ordering::Relaxed);
}

/// Reads records off a stream, cancel-safe: what was read stays in the buffer, which never
/// holds more than one record (at most 2 + 65,535 bytes).
#[derive(Default)]
struct RecordReader {
    buf: BytesMut,
}

impl RecordReader {
    /// The next record; `None` when the stream finished between records.
    async fn next(&mut self, recv: &mut RecvStream) -> Result<Option<Bytes>, HandshakeError> {
        loop {
            if let Some(record) = udp::decode_record(&mut self.buf) {
                return Ok(Some(record));
            }
            let missing = udp::record_missing(&self.buf);
            match recv.read_chunk(missing, true).await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk.bytes),
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(HandshakeError::FinishedEarly),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::TunnelSpec;
    use crate::tunnel::flow_queue::FLOW_DATAGRAMS;

    fn tunnel() -> Arc<Tunnel> {
        Arc::new(Tunnel::new(TunnelSpec {
            stream_id: 4,
            side: Side::Server,
            client_app: None,
            server_app: None,
            remote_endpoint: "127.0.0.1:1".parse().unwrap(),
            connection: 0,
            service: None,
            transport: crate::tunnel::Transport::Udp,
        }))
    }

    #[test]
    fn frames_reach_their_flow_and_strangers_are_dropped_and_counted() {
        let table = FlowTable::default();
        let flow = tunnel();
        let mut queue = table.insert(4, flow.clone()).unwrap();
        table.deliver(udp::encode_datagram(4, b"mine"));
        table.deliver(udp::encode_datagram(8, b"nobody's"));
        table.deliver(Bytes::from_static(&[0x40]));
        assert_eq!(queue.try_recv().unwrap(), Bytes::from_static(b"mine"));
        assert!(queue.try_recv().is_none());
        assert_eq!(table.unknown(), 2);
        table.remove(4);
        table.deliver(udp::encode_datagram(4, b"late"));
        assert_eq!(table.unknown(), 3);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_growing() {
        let table = FlowTable::default();
        let flow = tunnel();
        let mut queue = table.insert(4, flow.clone()).unwrap();
        for _ in 0..FLOW_DATAGRAMS + 10 {
            table.deliver(udp::encode_datagram(4, b"x"));
        }
        assert_eq!(flow.counters.dropped_datagrams.load(Ordering::Relaxed), 10);
        let mut queued = 0;
        while queue.try_recv().is_some() {
            queued += 1;
        }
        assert_eq!(queued, FLOW_DATAGRAMS);
    }

    #[test]
    fn flows_per_connection_are_bounded() {
        let table = FlowTable::default();
        let receivers: Vec<_> = (0..MAX_FLOWS as u64)
            .map(|id| table.insert(id * 4, tunnel()).unwrap())
            .collect();
        assert!(table.insert(u64::MAX >> 2, tunnel()).is_none());
        assert_eq!(receivers.len(), table.len());
    }
}
