//! Text logs escape control characters in what peers send (SPEC §7): a token carrying a
//! newline and a fake log line must not start a line of the real server's log.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

const SERVER: &str = env!("CARGO_BIN_EXE_quictun-server");

/// The line a hostile client hopes to see in the operator's log.
const FORGED: &str = "2026-12-06T00:00:00Z  INFO forged line";

/// The server binary, killed when the test ends however it ends.
struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Server {
    /// Starts `quictun-server` as an open relay on a loopback port, its log read line by line.
    fn start(state_dir: &TempDir) -> Server {
        let mut child = Command::new(SERVER)
            .args(["--plugin-dir", plugin_dir().to_str().unwrap()])
            .args(["--allow-target", "any"])
            .args(["--listen-on", "127.0.0.1:0"])
            .args(["--httpd-listen-on", ""])
            .arg("--state-dir")
            .arg(&state_dir.0)
            .env_remove("QUICTUN_PLUGIN_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start quictun-server");
        let stderr = child.stderr.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        Server {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Reads the log until a line contains `needle` (at most ten seconds); returns that line.
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {needle:?} in the log: {:#?}", self.log));
            self.log.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Kills the server (by its PID) and returns its whole log.
    fn stop(mut self) -> Vec<String> {
        self.child.kill().expect("kill the server");
        self.child.wait().expect("reap the server");
        self.log.extend(self.lines.try_iter().collect::<Vec<_>>());
        // The reader thread ends at EOF, once the killed server's pipe is closed.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.log.push(line);
        }
        std::mem::take(&mut self.log)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in `server ready listen=ADDR`.
fn listen_address(line: &str) -> SocketAddr {
    let value = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("listen="))
        .unwrap_or_else(|| panic!("no listen= in {line:?}"));
    value
        .parse()
        .unwrap_or_else(|_| panic!("not an address in {line:?}"))
}

fn private_dir(tag: &str) -> TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new(tag);
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

#[tokio::test]
async fn a_token_cannot_forge_a_line_of_the_server_log() {
    let state_dir = private_dir("log-escaping");
    let mut server = Server::start(&state_dir);
    let addr = listen_address(&server.wait_for("server ready"));

    let connection = raw_connection(addr).await;
    let token = format!("unix:/tmp/quictun-no-such-dir/x\n{FORGED}");
    let answer = within(20, raw_answer(&connection, &token_frame(&token))).await;
    assert!(answer.is_ok(), "the server answers the token: {answer:?}");
    // The refusal is logged before the answer is sent.
    server.wait_for("tunnel refused");
    connection.close(0u32.into(), b"done");
    let log = server.stop();

    for line in &log {
        assert!(!line.starts_with(FORGED), "a forged line: {log:#?}");
        assert!(!line.contains('\r') && !line.contains('\u{1b}'), "{line:?}");
    }
    let escaped = format!("x\\n{FORGED}");
    assert!(
        log.iter().any(|line| line.contains(&escaped)),
        "the token does not show escaped: {log:#?}"
    );
}
