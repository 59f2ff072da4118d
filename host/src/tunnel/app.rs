//! Application sockets: the TCP or UNIX connection at either end of a tunnel, and the client's
//! listener that accepts them.
//!
//! Both directions of a tunnel work through `&AppStream` (readiness plus non-blocking reads
//! and writes), so one relay task can drive both at once and still reach the socket afterwards
//! to reset it.

use std::io::{self, IoSlice};
use std::net::{Shutdown, SocketAddr};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use crate::wire::addr::Address;

/// Most chunks handed to one vectored write.
pub const WRITE_BATCH: usize = 32;

/// One application connection.
#[derive(Debug)]
pub enum AppStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AppStream {
    /// Dials the first of `addrs` that answers, within `timeout` in all.
    pub async fn connect_tcp(addrs: &[SocketAddr], timeout: Duration) -> io::Result<AppStream> {
        let dial = async {
            let mut last_error = None;
            for &addr in addrs {
                match TcpStream::connect(addr).await {
                    Ok(stream) => return Ok(AppStream::from_tcp(stream)),
                    Err(error) => last_error = Some(error),
                }
            }
            Err(last_error
                .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address to dial")))
        };
        within(timeout, dial).await
    }

    /// Dials a UNIX socket within `timeout`.
    pub async fn connect_unix(path: &Path, timeout: Duration) -> io::Result<AppStream> {
        within(timeout, async {
            Ok(AppStream::Unix(UnixStream::connect(path).await?))
        })
        .await
    }

    pub fn from_tcp(stream: TcpStream) -> AppStream {
        // Interactive protocols (ssh, SPICE input) need each write sent at once.
        let _ = stream.set_nodelay(true);
        AppStream::Tcp(stream)
    }

    pub async fn readable(&self) -> io::Result<()> {
        match self {
            AppStream::Tcp(s) => s.readable().await,
            AppStream::Unix(s) => s.readable().await,
        }
    }

    pub fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            AppStream::Tcp(s) => s.try_read_buf(buf),
            AppStream::Unix(s) => s.try_read_buf(buf),
        }
    }

    /// Writes all of `chunks` in as few system calls as the socket allows (one `writev` of
    /// up to [`WRITE_BATCH`] chunks each), replacing each written chunk with an empty one: an
    /// emptied `Bytes` would still hold the received packet's buffer, and an idle tunnel must
    /// not keep up to a batch of them.
    pub async fn write_all_chunks(&self, chunks: &mut [Bytes]) -> io::Result<()> {
        let mut first = 0;
        while first < chunks.len() {
            if chunks[first].is_empty() {
                drop(std::mem::take(&mut chunks[first]));
                first += 1;
                continue;
            }
            let written = {
                let rest = &chunks[first..];
                let slices: [IoSlice<'_>; WRITE_BATCH] =
                    std::array::from_fn(|i| IoSlice::new(rest.get(i).map_or(&[][..], |c| c)));
                let slices = &slices[..rest.len().min(WRITE_BATCH)];
                match self {
                    AppStream::Tcp(s) => {
                        s.writable().await?;
                        s.try_write_vectored(slices)
                    }
                    AppStream::Unix(s) => {
                        s.writable().await?;
                        s.try_write_vectored(slices)
                    }
                }
            };
            match written {
                Ok(mut n) => {
                    while n > 0 {
                        let chunk = &mut chunks[first];
                        let step = n.min(chunk.len());
                        chunk.advance(step);
                        n -= step;
                        if chunk.is_empty() {
                            drop(std::mem::take(chunk));
                            first += 1;
                        }
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    fn sock(&self) -> SockRef<'_> {
        match self {
            AppStream::Tcp(s) => SockRef::from(s),
            AppStream::Unix(s) => SockRef::from(s),
        }
    }

    /// Half-closes: the application reads EOF, and can still send.
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.sock().shutdown(Shutdown::Write)
    }

    /// Closes abortively: a TCP peer gets a reset instead of a clean EOF, so a cut-off
    /// transfer never looks complete.
    pub fn reset(self) {
        if let AppStream::Tcp(stream) = &self {
            let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
        }
        drop(self);
    }
}

/// Runs `work` with a time limit; running out is a `TimedOut` error.
pub async fn within<T>(
    timeout: Duration,
    work: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {timeout:?}"),
            ))
        })
}

/// The client's listener for application connections.
#[derive(Debug)]
pub enum AppListener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl AppListener {
    /// Binds `addr`. A stale UNIX socket file (nobody listening) is replaced.
    pub async fn bind(addr: &Address) -> io::Result<AppListener> {
        match addr {
            Address::Tcp(host_port) => {
                let addrs = host_port.resolve().await?;
                Ok(AppListener::Tcp(TcpListener::bind(&addrs[..]).await?))
            }
            Address::Udp(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a UDP address is served by a UDP listener, not a stream listener",
            )),
            Address::Unix(path) => {
                remove_stale_socket(path).await?;
                Ok(AppListener::Unix(UnixListener::bind(path)?, path.clone()))
            }
        }
    }

    /// The bound address (with the actual port when 0 was asked for).
    pub fn local_addr(&self) -> io::Result<Address> {
        match self {
            AppListener::Tcp(listener) => Ok(Address::Tcp(listener.local_addr()?.into())),
            AppListener::Unix(_, path) => Ok(Address::Unix(path.clone())),
        }
    }

    /// Accepts a connection and names its source: `IP:PORT` for TCP, and the listener's own
    /// `unix:/path` for a UNIX socket, whose peers have no address.
    pub async fn accept(&self) -> io::Result<(AppStream, String)> {
        match self {
            AppListener::Tcp(listener) => {
                let (stream, peer) = listener.accept().await?;
                Ok((AppStream::from_tcp(stream), peer.to_string()))
            }
            AppListener::Unix(listener, path) => {
                let (stream, _) = listener.accept().await?;
                Ok((AppStream::Unix(stream), format!("unix:{}", path.display())))
            }
        }
    }
}

impl Drop for AppListener {
    fn drop(&mut self) {
        if let AppListener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

async fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    match UnixStream::connect(path).await {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{} is in use by another process", path.display()),
        )),
        Err(_) => std::fs::remove_file(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn chunks_are_written_whole_in_order_and_let_go_of() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let app = AppStream::Unix(ours);
        // More than a socket buffer, so that writes are partial and resume mid-chunk.
        let data: Vec<u8> = (0..4u32 << 20).map(|i| (i * 7 + i / 4093) as u8).collect();
        let storage = Bytes::from(data.clone());
        let step = storage.len() / WRITE_BATCH;
        let mut chunks: Vec<Bytes> = (0..WRITE_BATCH)
            .map(|i| storage.slice(i * step..((i + 1) * step).min(storage.len())))
            .collect();
        chunks.insert(3, Bytes::new());
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; data.len()];
            theirs.read_exact(&mut got).await.unwrap();
            assert!(got == data, "the bytes differ");
        });
        let (batch, rest) = chunks.split_at_mut(WRITE_BATCH);
        app.write_all_chunks(batch).await.unwrap();
        app.write_all_chunks(rest).await.unwrap();
        reader.await.unwrap();
        assert!(chunks.iter().all(Bytes::is_empty));
        // Every written chunk was dropped, not only emptied: the buffer has one owner again.
        assert!(storage.is_unique());
    }
}
