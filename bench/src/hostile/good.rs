//! The good client's side: new QUIC connections from 127.0.0.1 with the product's client
//! settings (quictun-client's TLS, ALPN and transport), timed, while a flood comes from
//! elsewhere; and time to first byte of a real tunnel through quictun-client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use quictun::quic::path::PathPayload;
use quictun::quic::{self, TransportOptions};
use quictun::tls::{self, Verification};

use crate::cc::report::quantile;
use crate::mode;

/// How long one try may take before it counts as failed.
pub const TRY_LIMIT: Duration = Duration::from_secs(5);

/// quictun-client's QUIC settings with `--insecure-skip-verify`.
pub fn client_config() -> Result<quinn::ClientConfig, String> {
    let crypto = tls::client_crypto(&Verification::Insecure, None).map_err(|e| e.to_string())?;
    let mut config = quinn::ClientConfig::new(crypto);
    let transport = TransportOptions::default()
        .build(PathPayload::towards(
            "127.0.0.1:1".parse().map_err(|_| "address")?,
        ))
        .map_err(|e| e.to_string())?;
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// One new connection from a new endpoint on 127.0.0.1: the time its handshake took.
pub async fn connect_once(server: SocketAddr) -> Result<Duration, String> {
    let endpoint = quic::endpoint("127.0.0.1:0".parse().map_err(|_| "address")?, None)
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let connecting = endpoint
        .connect_with(client_config()?, server, "localhost")
        .map_err(|e| e.to_string())?;
    let result = match tokio::time::timeout(TRY_LIMIT, connecting).await {
        Ok(Ok(connection)) => {
            let took = start.elapsed();
            connection.close(0u32.into(), b"done");
            Ok(took)
        }
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no handshake within {TRY_LIMIT:?}")),
    };
    endpoint.close(0u32.into(), b"done");
    // Let the close reach the server, so it does not hold the connection until its idle
    // time-out.
    let _ = tokio::time::timeout(Duration::from_millis(200), endpoint.wait_idle()).await;
    result
}

/// Timed samples taken on a thread of its own until [`Prober::finish`]: connection
/// handshakes, or tunnels' time to first byte.
pub struct Prober {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Samples>,
}

/// Each try's time in milliseconds, or why it failed.
#[derive(Debug, Clone, Default)]
pub struct Samples(pub Vec<Result<f64, String>>);

impl Prober {
    /// A new QUIC connection to `server` every `every`.
    pub fn connections(server: SocketAddr, every: Duration) -> Result<Prober, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Prober::start_with(every, move || {
            let took = runtime.block_on(connect_once(server))?;
            Ok(took.as_secs_f64() * 1e3)
        }))
    }

    /// A new tunnel through the client listening on `app` every `every`: connect, send one
    /// byte to the echo target, wait for it to come back.
    pub fn tunnels(app: SocketAddr, every: Duration) -> Prober {
        Prober::start_with(every, move || {
            tunnel_ttfb(app).map(|d| d.as_secs_f64() * 1e3)
        })
    }

    /// Calls `sample` every `every` (the next call waits for the one before).
    pub fn start_with(
        every: Duration,
        mut sample: impl FnMut() -> Result<f64, String> + Send + 'static,
    ) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut samples = Vec::new();
            let start = Instant::now();
            // At least one sample, however soon the prober is finished.
            loop {
                samples.push(sample());
                let next = every * samples.len() as u32;
                while start.elapsed() < next && !flag.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(10));
                }
                if flag.load(Ordering::Relaxed) {
                    break;
                }
            }
            Samples(samples)
        });
        Prober { stop, thread }
    }

    pub fn finish(self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

impl Samples {
    pub fn tries(&self) -> usize {
        self.0.len()
    }

    /// Tries that succeeded within `limit_ms`.
    pub fn within(&self, limit_ms: f64) -> usize {
        self.ok().iter().filter(|&&ms| ms <= limit_ms).count()
    }

    pub fn ok(&self) -> Vec<f64> {
        self.0
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect()
    }

    /// The slowest successful try, in ms.
    pub fn worst_ms(&self) -> Option<f64> {
        self.ok().into_iter().reduce(f64::max)
    }

    pub fn median_ms(&self) -> Option<f64> {
        quantile(&self.ok(), 0.5)
    }

    pub fn failures(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter_map(|r| r.as_ref().err().map(String::as_str))
            .collect()
    }

    pub fn json(&self, limit_ms: f64) -> String {
        let first_failure = self
            .failures()
            .first()
            .map_or("null".into(), |f| json_string(f));
        format!(
            "{{\"tries\":{},\"ok\":{},\"within_limit\":{},\"limit_ms\":{limit_ms},\"median_ms\":{},\
             \"worst_ms\":{},\"first_failure\":{first_failure}}}",
            self.tries(),
            self.ok().len(),
            self.within(limit_ms),
            number(self.median_ms()),
            number(self.worst_ms()),
        )
    }

    pub fn text(&self, limit_ms: f64) -> String {
        let mut text = format!(
            "{}/{} within {limit_ms:.0} ms, median {}, worst {}",
            self.within(limit_ms),
            self.tries(),
            ms(self.median_ms()),
            ms(self.worst_ms())
        );
        if let Some(failure) = self.failures().first() {
            text.push_str(&format!(
                ", {} failed (first: {failure})",
                self.failures().len()
            ));
        }
        text
    }
}

/// Time to first byte of one new tunnel to the echo target.
pub fn tunnel_ttfb(app: SocketAddr) -> Result<Duration, String> {
    let start = Instant::now();
    let mut stream = TcpStream::connect_timeout(&app, TRY_LIMIT).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(TRY_LIMIT))
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream
        .write_all(&[mode::ECHO, 0, 0, 0, 0, 0, 0, 0, 0, b'x'])
        .map_err(|e| e.to_string())?;
    let mut byte = [0u8; 1];
    stream
        .read_exact(&mut byte)
        .map_err(|e| format!("no echo: {e}"))?;
    Ok(start.elapsed())
}

/// Waits until a tunnel through `app` echoes: the client is up and connected.
pub fn wait_tunnel(app: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match tunnel_ttfb(app) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(format!("tunnel not ready: {e}")),
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    }
}

pub fn number(value: Option<f64>) -> String {
    value.map_or("null".into(), |v| format!("{v:.1}"))
}

pub fn ms(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.0} ms"))
}

/// One aim of a suite as JSON: what it asks, what was measured, whether that meets it.
pub fn aim_json(name: &str, measured: &str, met: bool) -> String {
    format!(
        "{{\"name\":{},\"measured\":{},\"met\":{met}}}",
        json_string(name),
        json_string(measured)
    )
}

pub fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
