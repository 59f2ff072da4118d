//! A flood of fresh QUIC Initials: the first packet of a new connection, again and again,
//! never followed by the rest of the handshake.
//!
//! Each Initial is a real one, built by quinn-proto as a client would (a new connection per
//! packet: its own connection ids and TLS ClientHello, the product's client settings), sent
//! from UDP sockets on loopback addresses other than the good client's. What comes back is
//! sorted by long-header packet type: a Handshake packet means the server took the connection
//! on (it keeps state for it until its handshake time-out), a Retry that it asked the client
//! to prove its address first. With `answer_retries` the flood proves it — it answers each
//! Retry with the Initial that carries the server's token, as any client that owns its
//! address can — and goes no further.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn_proto::{
    ClientConfig, Connection, ConnectionHandle, DatagramEvent, Endpoint, EndpointConfig,
    EndpointEvent,
};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use super::good;

/// How often the flood sends its share of Initials.
const TICK: Duration = Duration::from_millis(10);
/// How long a connection that may still get a Retry is kept, to answer it.
const KEEP_FOR_RETRY: Duration = Duration::from_secs(2);

/// What to flood.
#[derive(Debug, Clone)]
pub struct FloodConfig {
    pub server: SocketAddr,
    /// One socket per address, used in turn.
    pub sources: Vec<IpAddr>,
    /// Initials per second.
    pub rate: u32,
    pub answer_retries: bool,
}

/// What the flood sent and what came back.
#[derive(Debug, Clone, Default)]
pub struct FloodReport {
    pub seconds: f64,
    pub sent: u64,
    pub send_errors: u64,
    pub datagrams_back: u64,
    /// Connections answered at all.
    pub answered: u64,
    /// Connections the server took on: it sent a Handshake packet.
    pub taken_on: u64,
    /// Retry packets received.
    pub retries: u64,
    /// Retries answered with the token (`answer_retries`).
    pub retries_answered: u64,
}

/// A flood running on a thread of its own until [`Flood::finish`].
pub struct Flood {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<FloodReport, String>>,
}

impl Flood {
    pub fn start(config: FloodConfig) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(flood(config, flag))
        });
        Flood { stop, thread }
    }

    pub fn finish(self) -> Result<FloodReport, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| "the flood thread panicked".to_string())?
    }
}

async fn flood(config: FloodConfig, stop: Arc<AtomicBool>) -> Result<FloodReport, String> {
    let mut sockets = Vec::with_capacity(config.sources.len());
    for ip in &config.sources {
        let socket = UdpSocket::bind(SocketAddr::new(*ip, 0))
            .await
            .map_err(|e| format!("cannot bind a flood socket on {ip}: {e}"))?;
        sockets.push(Arc::new(socket));
    }
    let (tx, mut rx) = mpsc::channel(4096);
    for (index, socket) in sockets.iter().enumerate() {
        tokio::spawn(receive(index, socket.clone(), tx.clone()));
    }
    let mut state = State::new(&config, sockets)?;
    let start = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // At most one tick's share at a time, each Initial followed by what came back: on a busy
    // machine the rate drops (the report has the real one) instead of the answers going
    // unread.
    let per_tick = (f64::from(config.rate) * TICK.as_secs_f64()).ceil() as u64;
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            _ = tick.tick() => {
                let due = (start.elapsed().as_secs_f64() * f64::from(config.rate)) as u64;
                for _ in 0..due.saturating_sub(state.attempts()).min(per_tick) {
                    state.send_initial().await;
                    tokio::task::yield_now().await;
                    while let Ok((index, datagram)) = rx.try_recv() {
                        state.received(index, datagram).await;
                    }
                }
                state.forget_old();
            }
            Some((index, datagram)) = rx.recv() => state.received(index, datagram).await,
        }
    }
    state.report.seconds = start.elapsed().as_secs_f64();
    Ok(state.report)
}

/// Hands every datagram a socket receives to the flood's loop.
async fn receive(index: usize, socket: Arc<UdpSocket>, tx: mpsc::Sender<(usize, BytesMut)>) {
    let mut buf = vec![0u8; 2048];
    while let Ok((n, _)) = socket.recv_from(&mut buf).await {
        if tx.send((index, BytesMut::from(&buf[..n]))).await.is_err() {
            return;
        }
    }
}

struct State {
    server: SocketAddr,
    answer_retries: bool,
    endpoint: Endpoint,
    client: ClientConfig,
    sockets: Vec<Arc<UdpSocket>>,
    /// Connections kept to answer a Retry: handle → (connection, socket index).
    kept: HashMap<ConnectionHandle, (Connection, usize)>,
    kept_since: VecDeque<(Instant, ConnectionHandle)>,
    answered: HashSet<Vec<u8>>,
    taken_on: HashSet<Vec<u8>>,
    buf: Vec<u8>,
    report: FloodReport,
}

impl State {
    fn new(config: &FloodConfig, sockets: Vec<Arc<UdpSocket>>) -> Result<State, String> {
        Ok(State {
            server: config.server,
            answer_retries: config.answer_retries,
            endpoint: Endpoint::new(Arc::new(EndpointConfig::default()), None, false, None),
            client: good::client_config()?,
            sockets,
            kept: HashMap::new(),
            kept_since: VecDeque::new(),
            answered: HashSet::new(),
            taken_on: HashSet::new(),
            buf: Vec::with_capacity(2048),
            report: FloodReport::default(),
        })
    }

    /// Initials tried so far.
    fn attempts(&self) -> u64 {
        self.report.sent + self.report.send_errors
    }

    /// Starts a new connection and sends its first datagram, the Initial.
    async fn send_initial(&mut self) {
        let now = Instant::now();
        let index = self.attempts() as usize % self.sockets.len();
        let connect = self
            .endpoint
            .connect(now, self.client.clone(), self.server, "localhost");
        let Ok((handle, mut connection)) = connect else {
            self.report.send_errors += 1;
            return;
        };
        self.buf.clear();
        let sent = match connection.poll_transmit(now, 1, &mut self.buf) {
            Some(transmit) => self.sockets[index]
                .send_to(&self.buf[..transmit.size], self.server)
                .await
                .is_ok(),
            None => false,
        };
        match sent {
            true => self.report.sent += 1,
            false => self.report.send_errors += 1,
        }
        if self.answer_retries {
            self.kept.insert(handle, (connection, index));
            self.kept_since.push_back((now, handle));
        } else {
            self.endpoint.handle_event(handle, EndpointEvent::drained());
        }
    }

    /// Sorts a datagram from the server; answers a Retry when asked to.
    async fn received(&mut self, index: usize, datagram: BytesMut) {
        self.report.datagrams_back += 1;
        for (kind, dcid) in long_header_packets(&datagram) {
            self.answered.insert(dcid.to_vec());
            match kind {
                PacketKind::Handshake => {
                    self.taken_on.insert(dcid.to_vec());
                }
                PacketKind::Retry => self.report.retries += 1,
                _ => {}
            }
        }
        self.report.answered = self.answered.len() as u64;
        self.report.taken_on = self.taken_on.len() as u64;
        if self.answer_retries && is_retry(&datagram) {
            self.answer_retry(index, datagram).await;
        }
    }

    /// Feeds the Retry to its connection, which answers with a new Initial carrying the
    /// server's token; nothing after that is ever fed to it.
    async fn answer_retry(&mut self, index: usize, datagram: BytesMut) {
        let now = Instant::now();
        let mut response = Vec::new();
        let event = self
            .endpoint
            .handle(now, self.server, None, None, datagram, &mut response);
        let Some(DatagramEvent::ConnectionEvent(handle, event)) = event else {
            return;
        };
        let Some((connection, _)) = self.kept.get_mut(&handle) else {
            return;
        };
        connection.handle_event(event);
        self.buf.clear();
        if let Some(transmit) = connection.poll_transmit(now, 1, &mut self.buf) {
            let socket = &self.sockets[index];
            if socket
                .send_to(&self.buf[..transmit.size], self.server)
                .await
                .is_ok()
            {
                self.report.retries_answered += 1;
            }
        }
    }

    /// Drops connections too old to still get a Retry.
    fn forget_old(&mut self) {
        let now = Instant::now();
        while let Some(&(since, handle)) = self.kept_since.front() {
            if now.duration_since(since) < KEEP_FOR_RETRY {
                break;
            }
            self.kept_since.pop_front();
            self.kept.remove(&handle);
            self.endpoint.handle_event(handle, EndpointEvent::drained());
        }
    }
}

/// Long-header packet types (RFC 9000 §17.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    Initial,
    ZeroRtt,
    Handshake,
    Retry,
}

/// A Retry: a long-header packet (first bit set, fixed bit set) of type 0b11.
pub fn is_retry(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| b & 0xf0 == 0xf0)
}

/// The long-header packets coalesced in a datagram, each with its destination connection id
/// (the id the client chose for itself). Stops at a short-header packet or anything it cannot
/// read.
pub fn long_header_packets(datagram: &[u8]) -> Vec<(PacketKind, &[u8])> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while let Some((kind, dcid, next)) = one_packet(rest) {
        out.push((kind, dcid));
        rest = next;
    }
    out
}

/// One long-header packet: its type, destination connection id and what follows it.
fn one_packet(data: &[u8]) -> Option<(PacketKind, &[u8], &[u8])> {
    let first = *data.first()?;
    if first & 0x80 == 0 {
        return None;
    }
    let kind = match (first >> 4) & 0b11 {
        0 => PacketKind::Initial,
        1 => PacketKind::ZeroRtt,
        2 => PacketKind::Handshake,
        _ => PacketKind::Retry,
    };
    // First byte, 4-byte version, then the two connection ids, each after its length.
    let dcid_len = usize::from(*data.get(5)?);
    let dcid = data.get(6..6 + dcid_len)?;
    let scid_len = usize::from(*data.get(6 + dcid_len)?);
    let mut at = 7 + dcid_len + scid_len;
    if kind == PacketKind::Retry {
        // A Retry has no length field: it fills the datagram.
        return Some((kind, dcid, &[]));
    }
    if kind == PacketKind::Initial {
        let (token_len, n) = varint(data.get(at..)?)?;
        at += n + usize::try_from(token_len).ok()?;
    }
    let (length, n) = varint(data.get(at..)?)?;
    let end = at + n + usize::try_from(length).ok()?;
    Some((kind, dcid, data.get(end..)?))
}

/// A QUIC variable-length integer: its value and its length in bytes.
fn varint(data: &[u8]) -> Option<(u64, usize)> {
    let first = *data.first()?;
    let len = 1usize << (first >> 6);
    let bytes = data.get(..len)?;
    let mut value = u64::from(first & 0x3f);
    for byte in &bytes[1..] {
        value = (value << 8) | u64::from(*byte);
    }
    Some((value, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A long-header packet of `kind` with an 8-byte dcid of `id` and a payload of `len`.
    fn packet(kind: u8, id: u8, len: usize) -> Vec<u8> {
        let mut p = vec![0xc0 | (kind << 4), 0, 0, 0, 1, 8];
        p.extend([id; 8]);
        p.push(0); // empty scid
        if kind == 0 {
            p.push(0); // no token
        }
        if kind != 3 {
            p.extend([0x40 | (len >> 8) as u8, len as u8]); // two-byte length
        }
        p.extend(vec![0xaa; len]);
        p
    }

    #[test]
    fn coalesced_packets_are_walked_with_their_ids() {
        let mut datagram = packet(0, 1, 300);
        datagram.extend(packet(2, 1, 700));
        let packets = long_header_packets(&datagram);
        assert_eq!(
            packets,
            vec![
                (PacketKind::Initial, &[1u8; 8][..]),
                (PacketKind::Handshake, &[1u8; 8][..])
            ]
        );
        assert!(!is_retry(&datagram));
    }

    #[test]
    fn a_retry_fills_its_datagram_and_a_short_header_ends_the_walk() {
        let retry = packet(3, 7, 40);
        assert!(is_retry(&retry));
        assert_eq!(
            long_header_packets(&retry),
            vec![(PacketKind::Retry, &[7u8; 8][..])]
        );
        let mut datagram = packet(2, 2, 10);
        datagram.extend([0x40, 1, 2, 3]);
        assert_eq!(long_header_packets(&datagram).len(), 1);
        // Truncated: nothing readable.
        assert!(long_header_packets(&packet(2, 2, 10)[..12]).is_empty());
    }

    #[test]
    fn varints_of_every_length() {
        assert_eq!(varint(&[0x25]), Some((37, 1)));
        assert_eq!(varint(&[0x7b, 0xbd]), Some((15293, 2)));
        assert_eq!(varint(&[0x9d, 0x7f, 0x3e, 0x7d]), Some((494878333, 4)));
        assert_eq!(varint(&[0x40]), None);
    }
}
