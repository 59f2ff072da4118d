//! The traffic of one measurement: TCP sinks in namespace B that count what arrives, bulk TCP
//! sources in namespace A, and the real tunnel (quictun-client in A, quictun-server in B) in
//! between when the flow is a QUIC one.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::linkem::{Link, tcp};

/// Port of the tunnel's client-side listener (inside namespace A) and UDP port of the server.
const TUNNEL_APP_PORT: u16 = 6500;
const TUNNEL_QUIC_PORT: u16 = 7500;

/// A TCP listener in namespace B that accepts any number of connections and counts the bytes
/// they deliver. It listens on all of B's addresses, so both a direct flow (to 198.18.0.2) and
/// the tunnel server (to 127.0.0.1 inside B) can reach it.
pub struct Sink {
    port: u16,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Sink {
    pub fn start(link: &Link) -> Result<Sink, String> {
        let listener = link
            .run_in_b(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot bind the sink in namespace B: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, flag) = (received.clone(), stop.clone());
        thread::spawn(move || accept_loop(listener, count, flag));
        Ok(Sink {
            port,
            received,
            stop,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Bytes received so far, over all connections.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn accept_loop(listener: TcpListener, received: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    let _ = listener.set_nonblocking(true);
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (count, flag) = (received.clone(), stop.clone());
                thread::spawn(move || drain(stream, count, flag));
            }
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn drain(mut stream: TcpStream, received: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = vec![0u8; 256 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// A bulk sender: one TCP connection made from namespace A, writing until stopped.
pub struct Source {
    stream: TcpStream,
    writer: Option<thread::JoinHandle<()>>,
}

impl Source {
    /// Connects from A to `to` (retrying while the listener is not up yet, for up to
    /// `patience`), sets the TCP congestion control if given, and starts writing.
    pub fn start(
        link: &Link,
        to: SocketAddr,
        cc: Option<&str>,
        patience: Duration,
    ) -> Result<Source, String> {
        let deadline = Instant::now() + patience;
        let stream = loop {
            let attempt = link
                .run_in_a(|| make_connected(to, cc))
                .map_err(|e| e.to_string())?;
            match attempt {
                Ok(stream) => break stream,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("cannot connect to {to} from namespace A: {e}"));
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        };
        let mut writer_stream = stream.try_clone().map_err(|e| e.to_string())?;
        let writer = thread::spawn(move || {
            let buf = vec![0x5au8; 64 * 1024];
            while writer_stream.write_all(&buf).is_ok() {}
        });
        Ok(Source {
            stream,
            writer: Some(writer),
        })
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// A connected socket whose congestion control is set before the handshake (so the whole
/// connection uses it).
fn make_connected(to: SocketAddr, cc: Option<&str>) -> Result<TcpStream, String> {
    let socket =
        Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).map_err(|e| e.to_string())?;
    if let Some(name) = cc {
        tcp::set_on_socket(&socket, name).map_err(|e| e.to_string())?;
    }
    socket.connect(&to.into()).map_err(|e| e.to_string())?;
    Ok(socket.into())
}

/// The real tunnel across the link: quictun-server in B, quictun-client in A, forwarding
/// connections made to 127.0.0.1:6500 in A to `127.0.0.1:target_port` in B.
pub struct Tunnel {
    server: Child,
    client: Child,
    state: PathBuf,
}

impl Tunnel {
    pub fn start(
        link: &Link,
        bin_dir: &Path,
        congestion: &str,
        target_port: u16,
    ) -> Result<Tunnel, String> {
        let state = std::env::temp_dir().join(format!("cc-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        std::fs::create_dir_all(&state).map_err(|e| format!("{}: {e}", state.display()))?;
        let listen = format!("{}:{TUNNEL_QUIC_PORT}", link.addr_b());
        let target = format!("127.0.0.1:{target_port}");
        let server = link
            .command_in_b(&bin_dir.join("quictun-server").to_string_lossy())
            .map_err(|e| e.to_string())?
            .args(["--listen-on", &listen, "--httpd-listen-on", ""])
            .args(["--allow-target", &target, "--congestion", congestion])
            .args(["--log-level", "warn"])
            .arg("--state-dir")
            .arg(state.join("server"))
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start quictun-server: {e}"))?;
        let client = link
            .command_in_a(&bin_dir.join("quictun-client").to_string_lossy())
            .map_err(|e| e.to_string())?
            .args(["--listen-on", &format!("tcp:127.0.0.1:{TUNNEL_APP_PORT}")])
            .args(["--server-endpoint", &listen, "--httpd-listen-on", ""])
            .args(["--token-source", &format!("tcp:{target}")])
            .args(["--congestion", congestion, "--insecure-skip-verify"])
            .args(["--log-level", "error"])
            .arg("--state-dir")
            .arg(state.join("client"))
            .stdin(Stdio::null())
            .spawn();
        let mut tunnel = Tunnel {
            server,
            client: match client {
                Ok(child) => child,
                Err(e) => return Err(format!("cannot start quictun-client: {e}")),
            },
            state,
        };
        tunnel.check_alive()?;
        Ok(tunnel)
    }

    /// Where an application in namespace A connects to use the tunnel.
    pub fn app_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, TUNNEL_APP_PORT))
    }

    pub fn check_alive(&mut self) -> Result<(), String> {
        for (name, child) in [("server", &mut self.server), ("client", &mut self.client)] {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("quictun-{name} exited: {status}"));
            }
        }
        Ok(())
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        // Our own children, by handle (their PIDs).
        for child in [&mut self.client, &mut self.server] {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}
