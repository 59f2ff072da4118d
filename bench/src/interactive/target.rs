//! The target in namespace B: one TCP port whose connections' first byte picks what it does.
//! [`mode::ECHO`] makes an echo server of the connection (a thread each, Nagle off, every byte
//! after the mode byte written back as it comes); any other first byte makes it a bulk
//! transfer, counted and dropped — cc-bench's [`Source`](crate::cc::flow::Source) writes
//! `0x5a` bytes from its first. One port serves both, so the one tunnel service of
//! [`Tunnel`](crate::cc::flow::Tunnel) carries the echo and the bulk transfer over the same
//! client and QUIC connection.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use crate::linkem::Link;
use crate::mode;

/// Listens on all of B's addresses: the direct connections come to 198.18.0.2, the tunnel
/// server's to 127.0.0.1 inside B. Stops serving on drop.
pub struct Target {
    port: u16,
    bulk_received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Target {
    pub fn start(link: &Link) -> Result<Target, String> {
        let listener = link
            .run_in_b(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot bind the target in namespace B: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let bulk_received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, flag) = (bulk_received.clone(), stop.clone());
        thread::spawn(move || accept_loop(&listener, &count, &flag));
        Ok(Target {
            port,
            bulk_received,
            stop,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Bytes the bulk connections delivered so far.
    pub fn bulk_received(&self) -> u64 {
        self.bulk_received.load(Ordering::Relaxed)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn accept_loop(listener: &TcpListener, bulk_received: &Arc<AtomicU64>, stop: &Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (count, flag) = (bulk_received.clone(), stop.clone());
                thread::spawn(move || serve(stream, &count, &flag));
            }
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// One connection: echo or count, until its end, an error or the target's drop.
fn serve(mut stream: TcpStream, bulk_received: &AtomicU64, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    // Wakes the reads now and then to see the stop flag.
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut first = [0u8; 1];
    if read_some(&mut stream, &mut first, stop).is_none() {
        return;
    }
    let mut buf = vec![0u8; 256 * 1024];
    if first[0] == mode::ECHO {
        while let Some(n) = read_some(&mut stream, &mut buf, stop) {
            if stream.write_all(&buf[..n]).is_err() {
                return;
            }
        }
        return;
    }
    bulk_received.fetch_add(1, Ordering::Relaxed);
    while let Some(n) = read_some(&mut stream, &mut buf, stop) {
        bulk_received.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The next bytes read, or `None` at the end of the stream, on an error or once stopped.
fn read_some(stream: &mut TcpStream, buf: &mut [u8], stop: &AtomicBool) -> Option<usize> {
    while !stop.load(Ordering::Relaxed) {
        match stream.read(buf) {
            Ok(0) => return None,
            Ok(n) => return Some(n),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return None,
        }
    }
    None
}
