//! Stalled REST clients: connections to the server's REST API that send half a request line
//! and then nothing. Meanwhile `/healthz` is asked on new connections, and each stalled
//! connection is watched until the server closes it (or answers it), or the watch ends.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::good::Prober;
use super::server::http_get;

/// Half a request line.
const HALF_REQUEST: &[u8] = b"GET /heal";

/// What became of the stalled connections, and how `/healthz` fared meanwhile.
#[derive(Debug, Clone, Default)]
pub struct StalledRest {
    pub stalled: usize,
    pub connect_failures: usize,
    /// Seconds from the half request to the server's close (or answer), for those it closed.
    pub closed_after_s: Vec<f64>,
    /// Of those, how many the server answered (an HTTP error) before closing.
    pub answered: usize,
    pub watched_s: f64,
    pub healthz: super::good::Samples,
}

impl StalledRest {
    pub fn still_open(&self) -> usize {
        self.stalled - self.closed_after_s.len()
    }
}

/// Opens `count` stalled connections to `api` and watches them for up to `watch`, asking
/// `/healthz` every 250 ms meanwhile.
pub fn run(api: SocketAddr, count: usize, watch: Duration) -> StalledRest {
    let prober = Prober::start_with(Duration::from_millis(250), move || {
        let start = Instant::now();
        match http_get(api, "/healthz", super::good::TRY_LIMIT) {
            Ok((200, _)) => Ok(start.elapsed().as_secs_f64() * 1e3),
            Ok((status, _)) => Err(format!("status {status}")),
            Err(error) => Err(error),
        }
    });
    let mut report = StalledRest::default();
    let mut open: Vec<(TcpStream, Instant)> = Vec::with_capacity(count);
    for _ in 0..count {
        match stall_one(api) {
            Ok(stream) => open.push((stream, Instant::now())),
            Err(_) => report.connect_failures += 1,
        }
    }
    report.stalled = open.len();
    let start = Instant::now();
    while !open.is_empty() && start.elapsed() < watch {
        std::thread::sleep(Duration::from_millis(100));
        open.retain_mut(|(stream, since)| {
            let Some(end) = ended(stream) else {
                return true;
            };
            report.closed_after_s.push(since.elapsed().as_secs_f64());
            report.answered += usize::from(end == End::Answered);
            false
        });
    }
    report.watched_s = start.elapsed().as_secs_f64();
    report.healthz = prober.finish();
    report
}

fn stall_one(api: SocketAddr) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&api, Duration::from_secs(2))?;
    stream.write_all(HALF_REQUEST)?;
    stream.set_nonblocking(true)?;
    Ok(stream)
}

/// How the server ended a stalled connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// It closed or reset the connection without a word.
    Closed,
    /// It answered the half request (e.g. 408) first.
    Answered,
}

/// Whether the server has closed the connection or answered it; `None` while it waits.
fn ended(stream: &mut TcpStream) -> Option<End> {
    let mut buf = [0u8; 512];
    match stream.read(&mut buf) {
        Ok(0) => Some(End::Closed),
        Ok(_) => Some(End::Answered),
        Err(e) if e.kind() == ErrorKind::WouldBlock => None,
        Err(_) => Some(End::Closed),
    }
}
