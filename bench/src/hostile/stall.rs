//! Tunnels into targets that never read: the client applications write as fast as they can,
//! the target accepts and reads nothing, so every byte in between waits in a buffer — in the
//! server's case, in what its flow-control windows let clients send it.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::process::{TempDir, free_port, stop};

/// A TCP target that accepts connections and never reads from them.
pub struct NeverReads {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl NeverReads {
    pub fn start() -> Result<NeverReads, String> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (flag, list) = (stop.clone(), held.clone());
        thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => list.lock().unwrap_or_else(|e| e.into_inner()).push(stream),
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(NeverReads { addr, stop, held })
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for NeverReads {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.held.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// A release quictun-client whose tokens name `target`, ended on drop.
pub struct ClientProcess {
    /// Where applications connect.
    pub app: SocketAddr,
    /// Its REST API, when it has one.
    pub api: Option<SocketAddr>,
    child: Child,
    _dir: TempDir,
}

impl ClientProcess {
    pub fn start(
        bin_dir: &Path,
        server: SocketAddr,
        target: SocketAddr,
        name: &str,
    ) -> Result<ClientProcess, String> {
        ClientProcess::start_with(bin_dir, server, target, name, &[])
    }

    /// Started with `extra` flags too.
    pub fn start_with(
        bin_dir: &Path,
        server: SocketAddr,
        target: SocketAddr,
        name: &str,
        extra: &[&str],
    ) -> Result<ClientProcess, String> {
        ClientProcess::spawn(bin_dir, server, target, name, None, extra)
    }

    /// Started with its REST API on a free loopback port.
    pub fn start_with_api(
        bin_dir: &Path,
        server: SocketAddr,
        target: SocketAddr,
        name: &str,
    ) -> Result<ClientProcess, String> {
        let api = free_port(false)?;
        ClientProcess::spawn(bin_dir, server, target, name, Some(api), &[])
    }

    fn spawn(
        bin_dir: &Path,
        server: SocketAddr,
        target: SocketAddr,
        name: &str,
        api: Option<SocketAddr>,
        extra: &[&str],
    ) -> Result<ClientProcess, String> {
        let dir = TempDir::named(name)?;
        let app = free_port(false)?;
        let path = bin_dir.join("quictun-client");
        let httpd = api.map_or(String::new(), |a| a.to_string());
        let child = Command::new(&path)
            .args(["--listen-on", &format!("tcp:{app}")])
            .args(["--server-endpoint", &server.to_string()])
            .args(["--token-source", &format!("tcp:{target}")])
            .args(["--insecure-skip-verify", "--httpd-listen-on", &httpd])
            .arg("--state-dir")
            .arg(&dir.0)
            .args(["--log-level", "error"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
        Ok(ClientProcess {
            app,
            api,
            child,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        stop([&mut self.child]);
    }
}

/// Applications that write as fast as they can into tunnels until [`Writers::finish`].
pub struct Writers {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Writers {
    /// `each` connections to every client's application port.
    pub fn start(apps: &[SocketAddr], each: usize) -> Result<Writers, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for app in apps {
            for _ in 0..each {
                let stream = connect_until_up(*app)?;
                let (flag, count) = (stop.clone(), written.clone());
                threads.push(thread::spawn(move || write_until(stream, &flag, &count)));
            }
        }
        Ok(Writers {
            stop,
            written,
            threads,
        })
    }

    /// Bytes the applications have handed to the tunnels so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Stops writing and closes the application connections; the bytes written.
    pub fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            let _ = thread.join();
        }
        self.written.load(Ordering::Relaxed)
    }
}

/// Connects once the client listens (it was just started).
fn connect_until_up(app: SocketAddr) -> Result<TcpStream, String> {
    for _ in 0..200 {
        if let Ok(stream) = TcpStream::connect(app) {
            return Ok(stream);
        }
        thread::sleep(Duration::from_millis(50));
    }
    Err(format!("quictun-client on {app} does not listen"))
}

fn write_until(mut stream: TcpStream, stop: &AtomicBool, written: &AtomicU64) {
    let chunk = vec![0x5au8; 64 * 1024];
    // Short write time-outs, so a full pipe still sees the stop flag.
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    while !stop.load(Ordering::Relaxed) {
        match stream.write(&chunk) {
            Ok(n) => {
                written.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}
