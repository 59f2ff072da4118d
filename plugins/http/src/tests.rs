//! The Http source against a real HTTP/1.1 server on loopback, started by each test.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quictun_plugin_api::{FailureKind, HostLog, TokenSource};

use super::*;

fn log() -> HostLog {
    HostLog::discard("Http")
}

/// What the test service answers: status, body, and how long it waits first.
type Handler = fn(&str) -> (u16, String, Duration);

struct Service {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    targets: Arc<Mutex<Vec<String>>>,
}

impl Service {
    fn start(handler: Handler) -> Service {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let targets = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (connections.clone(), targets.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                let seen = seen.clone();
                std::thread::spawn(move || serve(stream, handler, seen));
            }
        });
        Service {
            addr,
            connections,
            targets,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/token", self.addr)
    }
}

/// Answers requests on one connection until the client closes it (keep-alive).
fn serve(stream: TcpStream, handler: Handler, seen: Arc<Mutex<Vec<String>>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                break;
            }
        }
        let target = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_owned();
        seen.lock().unwrap().push(target.clone());
        let (status, body, delay) = handler(&target);
        std::thread::sleep(delay);
        let answer = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn ok(_: &str) -> (u16, String, Duration) {
    (
        200,
        r#"{"token": "tcp:127.0.0.1:22"}"#.into(),
        Duration::ZERO,
    )
}

#[test]
fn asks_with_the_client_address_and_reuses_the_connection() {
    let service = Service::start(ok);
    let http = Http::new(&service.url(), log()).unwrap();
    for port in [5000, 5001, 5002] {
        assert_eq!(
            http.token(&format!("10.0.0.1:{port}")).unwrap(),
            b"tcp:127.0.0.1:22"
        );
    }
    assert_eq!(
        http.token("[2001:db8::1]:443").unwrap(),
        b"tcp:127.0.0.1:22"
    );
    let targets = service.targets.lock().unwrap().clone();
    assert_eq!(targets[0], "/token?addr=10.0.0.1%3A5000");
    assert_eq!(targets[3], "/token?addr=%5B2001%3Adb8%3A%3A1%5D%3A443");
    assert_eq!(
        service.connections.load(Ordering::SeqCst),
        1,
        "connections must be reused"
    );
}

#[test]
fn a_non_2xx_status_refuses() {
    let service = Service::start(|_| (404, "{}".into(), Duration::ZERO));
    let error = Http::new(&service.url(), log())
        .unwrap()
        .token("10.0.0.1:1")
        .unwrap_err();
    assert_eq!(error.kind, FailureKind::Refused);
    assert!(
        error.message.ends_with("HTTP 404 Not Found"),
        "{}",
        error.message
    );
}

#[test]
fn bad_json_missing_and_empty_tokens_refuse() {
    let cases: [(Handler, &str); 4] = [
        (
            |_| (200, "not json".into(), Duration::ZERO),
            "answer is not JSON",
        ),
        (
            |_| (200, r#"{"other": 1}"#.into(), Duration::ZERO),
            "answer has no \"token\"",
        ),
        (
            |_| (200, r#"{"token": ""}"#.into(), Duration::ZERO),
            "empty \"token\"",
        ),
        (
            |_| (200, r#"{"token": 7}"#.into(), Duration::ZERO),
            "not a string",
        ),
    ];
    for (handler, reason) in cases {
        let service = Service::start(handler);
        let error = Http::new(&service.url(), log())
            .unwrap()
            .token("10.0.0.1:1")
            .unwrap_err();
        assert!(error.message.contains(reason), "{}", error.message);
    }
}

#[test]
fn a_slow_answer_times_out() {
    let service =
        Service::start(|_| (200, r#"{"token": "t"}"#.into(), Duration::from_millis(1500)));
    let config = format!(r#"{{"url": "{}", "timeout_ms": 300}}"#, service.url());
    let http = Http::new(&config, log()).unwrap();
    let started = std::time::Instant::now();
    let error = http.token("10.0.0.1:1").unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );
    assert!(
        error.message.contains("no answer within 300ms"),
        "{}",
        error.message
    );
}

#[test]
fn an_unreachable_service_fails_with_the_reason() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let http = Http::new(&format!("http://127.0.0.1:{port}/t"), log()).unwrap();
    let error = http.token("10.0.0.1:1").unwrap_err();
    assert_eq!(error.kind, FailureKind::Failed);
    assert!(
        error.message.to_lowercase().contains("refused"),
        "{}",
        error.message
    );
}

#[test]
fn configuration_forms_and_errors() {
    let plain = settings("http://svc.example/get").unwrap();
    assert_eq!(plain.timeout, DEFAULT_TIMEOUT);
    let full = settings(
        r#"{"url": "https://svc.example/get?x=1", "timeout_ms": 250, "ca_file": "/etc/ca.pem"}"#,
    )
    .unwrap();
    assert_eq!(full.timeout, Duration::from_millis(250));
    assert_eq!(full.ca_file.as_deref(), Some("/etc/ca.pem"));
    let cases = [
        ("", "needs the token service's URL"),
        ("ftp://x/", "is not http or https"),
        ("not a url", "is not a URL"),
        ("{", "not valid JSON"),
        (r#"{"timeout_ms": 5}"#, "needs \"url\""),
        (
            r#"{"url": "http://x/", "timeout_ms": 0}"#,
            "positive integer",
        ),
        (
            r#"{"url": "http://x/", "retries": 3}"#,
            "unknown Http setting \"retries\"",
        ),
    ];
    for (config, reason) in cases {
        let error = settings(config).unwrap_err();
        assert!(error.contains(reason), "{config}: {error}");
    }
    assert!(
        Http::new(
            r#"{"url": "https://x/", "ca_file": "/nonexistent.pem"}"#,
            log()
        )
        .is_err()
    );
}
