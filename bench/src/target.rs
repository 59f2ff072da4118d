//! quictun-bench's TCP target and the application's side of a transfer to it.
//!
//! One port; the first byte of a connection picks what the target does ([`crate::mode`]): a
//! sink reads to the end and then closes, a source sends the 8-byte big-endian length that
//! follows its byte, an echo sends everything back. A thread serves each connection.
//!
//! The loopback suites serve it for the whole run ([`serve_on`]); a suite that makes a network
//! namespace for it holds a [`Target`], which stops accepting when dropped, so that nothing
//! keeps the namespace alive afterwards.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};

use crate::mode;

/// The size of every read and write of bulk data, on both sides.
pub const BUF: usize = 256 * 1024;

/// Serves the target on `listener` until the process ends; the listener's address.
pub fn serve_on(listener: TcpListener) -> io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    thread::spawn(move || accept_until(&listener, &AtomicBool::new(false)));
    Ok(addr)
}

/// The target on a listener until dropped; connections accepted by then run to their end.
pub struct Target {
    addr: SocketAddr,
    listener: Arc<TcpListener>,
    stopped: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Target {
    /// Serves on `listener`, which may belong to another network namespace.
    pub fn serve(listener: TcpListener) -> io::Result<Target> {
        let addr = listener.local_addr()?;
        let listener = Arc::new(listener);
        let stopped = Arc::new(AtomicBool::new(false));
        let acceptor = thread::spawn({
            let (listener, stopped) = (listener.clone(), stopped.clone());
            move || accept_until(&listener, &stopped)
        });
        Ok(Target {
            addr,
            listener,
            stopped,
            acceptor: Some(acceptor),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Relaxed);
        // On Linux, shutting a listening socket down wakes the accept blocked on it (with an
        // error), where closing it from another thread would not.
        // SAFETY: a plain system call on the listener's descriptor, open until it is dropped.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// The application's side of one transfer to the target at `addr`: [`connect`], then
/// [`transfer_on`].
pub fn transfer(addr: SocketAddr, bytes: u64, mode: u8) -> io::Result<()> {
    transfer_on(connect(addr, mode, bytes)?, bytes, mode)
}

/// A connection to the target at `addr` that has announced `mode` (sink or source) and
/// `bytes`, with no data moved yet (so that several can be made first and started together).
pub fn connect(addr: SocketAddr, mode: u8, bytes: u64) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)?;
    let mut header = [0u8; 9];
    header[0] = mode;
    header[1..].copy_from_slice(&bytes.to_be_bytes());
    stream.write_all(&header)?;
    Ok(stream)
}

/// Moves the `bytes` announced on `stream` ([`connect`]): sends them when uploading, and
/// reads until the target closes (a sink closes once it has read everything).
pub fn transfer_on(mut stream: TcpStream, bytes: u64, mode: u8) -> io::Result<()> {
    let mut buf = vec![0u8; BUF];
    if mode == mode::SINK {
        let mut left = bytes;
        while left > 0 {
            let n = left.min(BUF as u64) as usize;
            stream.write_all(&buf[..n])?;
            left -= n as u64;
        }
        stream.shutdown(Shutdown::Write)?;
    }
    // The sink answers with EOF once it has read everything; the source ends with EOF.
    let mut got = 0u64;
    loop {
        match stream.read(&mut buf)? {
            0 => break,
            n => got += n as u64,
        }
    }
    if mode == mode::SOURCE && got != bytes {
        return Err(io::Error::other(format!("received {got} of {bytes} bytes")));
    }
    Ok(())
}

/// Serves each connection `listener` accepts until `stopped` is set.
fn accept_until(listener: &TcpListener, stopped: &AtomicBool) {
    for stream in listener.incoming() {
        if stopped.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(stream) = stream {
            serve_connection(stream);
        }
    }
}

/// Serves one accepted connection on a thread of its own.
fn serve_connection(stream: TcpStream) {
    thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(move || serve(stream))
        .ok();
}

fn serve(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut header = [0u8; 9];
    stream.read_exact(&mut header)?;
    let len = u64::from_be_bytes(header[1..].try_into().unwrap_or_default());
    let mut buf = vec![0u8; if header[0] == mode::ECHO { 4096 } else { BUF }];
    match header[0] {
        mode::SOURCE => {
            let mut left = len;
            while left > 0 {
                let n = left.min(BUF as u64) as usize;
                stream.write_all(&buf[..n])?;
                left -= n as u64;
            }
        }
        mode::SINK => while stream.read(&mut buf)? > 0 {},
        _ => loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            stream.write_all(&buf[..n])?;
        },
    }
    stream.shutdown(Shutdown::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_target_stops_accepting() {
        let target = Target::serve(TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
        let addr = target.addr();
        transfer(addr, 1 << 20, mode::SINK).unwrap();
        transfer(addr, 1 << 20, mode::SOURCE).unwrap();
        drop(target);
        assert!(transfer(addr, 1, mode::SINK).is_err());
    }
}
