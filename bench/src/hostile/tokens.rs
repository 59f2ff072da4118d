//! A flood of pending tokens: a few QUIC connections, each opening as many streams as the
//! server lets it, every stream sending only the 2-byte token header that claims 4 096 bytes
//! and then nothing, holding the stream open until the server answers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use quictun::quic;
use quictun::wire::Status;
use quictun::wire::handshake::{Protocol, read_answer};
use quinn::Connection;

use super::good;

/// A token header claiming 4 096 bytes (u16 big-endian), never followed by the token.
const HEADER: [u8; 2] = [0x10, 0x00];

#[derive(Debug, Clone)]
pub struct TokenFloodConfig {
    pub server: SocketAddr,
    pub source: IpAddr,
    pub connections: usize,
    pub streams_per_connection: u64,
}

#[derive(Debug, Clone, Default)]
pub struct TokenFloodReport {
    pub seconds: f64,
    pub connections: usize,
    /// Streams opened and sent their header.
    pub opened: u64,
    /// The most streams held open at once, over all connections.
    pub most_open: u64,
    /// Streams answered with status 2 (bad token: none within the handshake time-out).
    pub bad_token: u64,
    /// Streams that ended otherwise.
    pub other_ends: u64,
}

#[derive(Default)]
struct Counters {
    opened: AtomicU64,
    open: AtomicU64,
    most_open: AtomicU64,
    bad_token: AtomicU64,
    other_ends: AtomicU64,
}

/// The flood, on a thread of its own until [`TokenFlood::finish`].
pub struct TokenFlood {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<TokenFloodReport, String>>,
}

impl TokenFlood {
    /// Connects, then floods; returns once the connections are up.
    pub fn start(config: TokenFloodConfig) -> Result<TokenFlood, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(flood(config, flag, ready_tx))
        });
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(TokenFlood { stop, thread }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(thread
                .join()
                .map_err(|_| "the token flood panicked".to_string())?
                .err()
                .unwrap_or_default()),
        }
    }

    pub fn finish(self) -> Result<TokenFloodReport, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| "the token flood panicked".to_string())?
    }
}

async fn flood(
    config: TokenFloodConfig,
    stop: Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) -> Result<TokenFloodReport, String> {
    let connections = match connect_all(&config).await {
        Ok(connections) => connections,
        Err(error) => {
            let _ = ready.send(Err(error.clone()));
            return Err(error);
        }
    };
    let _ = ready.send(Ok(()));
    let counters = Arc::new(Counters::default());
    let start = Instant::now();
    for connection in &connections {
        let streams = config.streams_per_connection;
        tokio::spawn(fill(connection.clone(), streams, counters.clone()));
    }
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for connection in &connections {
        connection.close(0u32.into(), b"done");
    }
    let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    Ok(TokenFloodReport {
        seconds: start.elapsed().as_secs_f64(),
        connections: connections.len(),
        opened: get(&counters.opened),
        most_open: get(&counters.most_open),
        bad_token: get(&counters.bad_token),
        other_ends: get(&counters.other_ends),
    })
}

async fn connect_all(config: &TokenFloodConfig) -> Result<Vec<Connection>, String> {
    let endpoint =
        quic::endpoint(SocketAddr::new(config.source, 0), None).map_err(|e| e.to_string())?;
    let mut connections = Vec::new();
    for _ in 0..config.connections {
        let connecting = endpoint
            .connect_with(good::client_config()?, config.server, "localhost")
            .map_err(|e| e.to_string())?;
        let connection = tokio::time::timeout(good::TRY_LIMIT, connecting)
            .await
            .map_err(|_| "the token flood could not connect in time".to_string())?
            .map_err(|e| format!("the token flood could not connect: {e}"))?;
        connections.push(connection);
    }
    Ok(connections)
}

/// Opens streams as the server grants them, each with a bare token header, and holds each
/// until its answer.
async fn fill(connection: Connection, streams: u64, counters: Arc<Counters>) {
    for _ in 0..streams {
        let Ok((mut send, mut recv)) = connection.open_bi().await else {
            return;
        };
        if send.write_all(&HEADER).await.is_err() {
            return;
        }
        counters.opened.fetch_add(1, Ordering::Relaxed);
        let open = counters.open.fetch_add(1, Ordering::Relaxed) + 1;
        counters.most_open.fetch_max(open, Ordering::Relaxed);
        let counters = counters.clone();
        tokio::spawn(async move {
            let ended = match read_answer(&mut recv, Protocol::V2).await {
                Ok(answer) if answer.status == Status::BadToken => &counters.bad_token,
                _ => &counters.other_ends,
            };
            ended.fetch_add(1, Ordering::Relaxed);
            counters.open.fetch_sub(1, Ordering::Relaxed);
            drop(send);
        });
    }
}
