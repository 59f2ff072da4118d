//! quinn-peer: a bare QUIC stream between two processes, the ceiling for any QUIC tunnel.
//!
//! Built from the host crate's own pieces (ring TLS, the product's transport settings and
//! UDP socket set-up), so the only difference from the tunnel is what the tunnel adds: the
//! TCP hops on both ends and the relay between them.
//!
//! `quinn-peer server --listen 127.0.0.1:P` accepts connections and serves each stream by its
//! first byte, like quictun-bench's target: `s` sink (read to the end, then finish), `g`
//! source (send the 8-byte big-endian length that follows), `e` echo.
//!
//! `quinn-peer client --server 127.0.0.1:P` connects once and then takes commands on standard
//! input, one a line, answering each on standard output with `ok <numbers…>`:
//! `transfer up|down BYTES STREAMS` (seconds), `ttfb N` (milliseconds to open a stream, send
//! one byte and get its echo, N times), `echo N` (1 KiB round trips on one stream, ms),
//! `datagrams N SIZE` (round trips of SIZE-byte DATAGRAM frames, one a millisecond, ms; the
//! server echoes every DATAGRAM frame; a reply not back within a second is left out).

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use quictun::quic::path::PathTransports;
use quictun::quic::{self, TransportOptions};
use quictun::tls::{self, Identity, Verification};
use quictun_bench::mode;
use quinn::{Connection, RecvStream, SendStream};

/// Chunk handed to quinn by the sending side (one shared buffer, never copied).
const CHUNK: usize = 64 * 1024;

#[derive(Parser)]
#[command(about = "A bare QUIC stream between two processes (the tunnel's ceiling)")]
struct Args {
    /// Runtime worker threads [default: the product's, half the available cores].
    #[arg(long, global = true)]
    threads: Option<u16>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Serve streams: sink, source or echo.
    Server {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Connect and run the commands read from standard input.
    Client {
        #[arg(long)]
        server: SocketAddr,
    },
}

fn main() {
    let args = Args::parse();
    // The product's runtime, so that the ceiling and the tunnel schedule alike.
    let runtime = quictun::cli::runtime(args.threads).expect("tokio runtime");
    let result = runtime.block_on(async {
        match args.mode {
            Mode::Server { listen } => serve(listen).await,
            Mode::Client { server } => client(server).await,
        }
    });
    if let Err(error) = result {
        eprintln!("quinn-peer: {error}");
        std::process::exit(1);
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

async fn serve(listen: SocketAddr) -> Result<()> {
    let identity = Identity::self_signed(&["localhost"])?;
    let config =
        quinn::ServerConfig::with_crypto(tls::server_crypto(identity, tls::ClientAuth::Off)?);
    let options = TransportOptions {
        max_streams: 20_000,
        ..TransportOptions::default()
    };
    // As the server does: each connection gets the transport of its path.
    let transports = Arc::new(PathTransports::new(options)?);
    let endpoint = quic::endpoint(listen, Some(config.clone()))?;
    println!("listening {}", endpoint.local_addr()?);
    std::io::stdout().flush()?;
    while let Some(incoming) = endpoint.accept().await {
        let mut config = config.clone();
        config.transport_config(transports.towards(incoming.remote_address()));
        tokio::spawn(async move {
            let Ok(connecting) = incoming.accept_with(Arc::new(config)) else {
                return;
            };
            let Ok(connection) = connecting.await else {
                return;
            };
            tokio::spawn(echo_datagrams(connection.clone()));
            while let Ok((send, recv)) = connection.accept_bi().await {
                tokio::spawn(serve_stream(send, recv));
            }
        });
    }
    Ok(())
}

async fn serve_stream(mut send: SendStream, mut recv: RecvStream) -> Result<()> {
    let mut header = [0u8; 9];
    recv.read_exact(&mut header).await?;
    let len = u64::from_be_bytes(header[1..].try_into()?);
    match header[0] {
        mode::SINK => while recv.read_chunk(usize::MAX, true).await?.is_some() {},
        mode::SOURCE => send_bytes(&mut send, len).await?,
        _ => {
            while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
                send.write_chunk(chunk.bytes).await?;
            }
        }
    }
    send.finish()?;
    // Keep the stream until the peer has everything.
    let _ = send.stopped().await;
    Ok(())
}

/// Sends every DATAGRAM frame back.
async fn echo_datagrams(connection: Connection) {
    while let Ok(datagram) = connection.read_datagram().await {
        let _ = connection.send_datagram(datagram);
    }
}

/// Sends `len` bytes as clones of one shared chunk: quinn's own cost, nothing else.
async fn send_bytes(send: &mut SendStream, len: u64) -> Result<()> {
    let chunk = Bytes::from(vec![0x5au8; CHUNK]);
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        send.write_chunk(chunk.slice(..n)).await?;
        left -= n as u64;
    }
    Ok(())
}

async fn client(server: SocketAddr) -> Result<()> {
    let mut config = quinn::ClientConfig::new(tls::client_crypto(&Verification::Insecure, None)?);
    config.transport_config(PathTransports::new(TransportOptions::default())?.towards(server));
    let local: SocketAddr = if server.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let endpoint = quic::endpoint(local, None)?;
    let connection = endpoint.connect_with(config, server, "localhost")?.await?;
    println!("connected");
    std::io::stdout().flush()?;
    let (lines_tx, mut lines) = tokio::sync::mpsc::channel::<String>(4);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(|l| l.ok()) {
            if lines_tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = lines.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["transfer", way, bytes, streams] => {
                let mode = if *way == "up" {
                    mode::SINK
                } else {
                    mode::SOURCE
                };
                let seconds = transfer(&connection, mode, bytes.parse()?, streams.parse()?).await?;
                format!("ok {seconds:.6}")
            }
            ["ttfb", n] => numbers(ttfb(&connection, n.parse()?).await?),
            ["echo", n] => numbers(echo(&connection, n.parse()?).await?),
            ["datagrams", n, size] => {
                numbers(datagrams(&connection, n.parse()?, size.parse()?).await?)
            }
            [] => continue,
            _ => format!("error unknown command {line:?}"),
        };
        println!("{answer}");
        std::io::stdout().flush()?;
    }
    connection.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    Ok(())
}

fn numbers(values: Vec<f64>) -> String {
    let mut out = String::from("ok");
    for v in values {
        out.push_str(&format!(" {v:.4}"));
    }
    out
}

fn header(mode: u8, len: u64) -> [u8; 9] {
    let mut header = [0u8; 9];
    header[0] = mode;
    header[1..].copy_from_slice(&len.to_be_bytes());
    header
}

/// Moves `bytes` over `streams` streams, each ended by the peer's finish: seconds taken.
async fn transfer(connection: &Connection, mode: u8, bytes: u64, streams: u64) -> Result<f64> {
    let each = bytes / streams;
    let start = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|_| {
            let connection = connection.clone();
            tokio::spawn(async move {
                let (mut send, mut recv) = connection.open_bi().await?;
                send.write_all(&header(mode, each)).await?;
                if mode == mode::SINK {
                    send_bytes(&mut send, each).await?;
                }
                send.finish()?;
                let mut got = 0u64;
                while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
                    got += chunk.bytes.len() as u64;
                }
                if mode == mode::SOURCE && got != each {
                    return Err(format!("received {got} of {each} bytes").into());
                }
                Result::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(start.elapsed().as_secs_f64())
}

async fn ttfb(connection: &Connection, n: usize) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let (mut send, mut recv) = connection.open_bi().await?;
        let mut first = header(mode::ECHO, 0).to_vec();
        first.push(b'x');
        send.write_all(&first).await?;
        let mut byte = [0u8; 1];
        recv.read_exact(&mut byte).await?;
        out.push(start.elapsed().as_secs_f64() * 1e3);
        send.finish()?;
    }
    Ok(out)
}

async fn echo(connection: &Connection, n: usize) -> Result<Vec<f64>> {
    let (mut send, mut recv) = connection.open_bi().await?;
    send.write_all(&header(mode::ECHO, 0)).await?;
    let mut buf = [7u8; 1024];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        send.write_all(&buf).await?;
        recv.read_exact(&mut buf).await?;
        out.push(start.elapsed().as_secs_f64() * 1e3);
    }
    send.finish()?;
    Ok(out)
}

/// `n` round trips of `size`-byte DATAGRAM frames (at least 8: the sequence number), one a
/// millisecond; a reply not back within a second is lost and left out.
async fn datagrams(connection: &Connection, n: u64, size: usize) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n as usize);
    let mut payload = vec![0u8; size.max(8)];
    let start = tokio::time::Instant::now();
    for seq in 0..n {
        tokio::time::sleep_until(start + std::time::Duration::from_millis(seq)).await;
        payload[..8].copy_from_slice(&seq.to_be_bytes());
        let sent = Instant::now();
        connection.send_datagram(Bytes::copy_from_slice(&payload))?;
        let reply = async {
            loop {
                let datagram = connection.read_datagram().await?;
                if datagram.get(..8) == Some(&seq.to_be_bytes()[..]) {
                    return Ok::<_, quinn::ConnectionError>(());
                }
            }
        };
        if let Ok(reply) = tokio::time::timeout(std::time::Duration::from_secs(1), reply).await {
            reply?;
            out.push(sent.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(out)
}
