//! A small W3C WebDriver client for the browser tests: starts chromedriver on a free loopback
//! port, opens one headless Chromium session, and speaks the protocol's JSON over HTTP/1.1 on
//! plain TCP (one request per connection). The session is deleted and chromedriver killed, by
//! its PID, when the [`Browser`] is dropped — also when a test fails.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The key under which WebDriver returns an element's id.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Chromium and chromedriver, as Debian's `chromium` and `chromium-driver` install them (or
/// `$QUICTUN_CHROMIUM` / `$QUICTUN_CHROMEDRIVER`). Without them the test fails saying what to
/// install.
pub fn find_browser() -> (PathBuf, PathBuf) {
    let path = |var: &str, default: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(default))
    };
    let chromium = path("QUICTUN_CHROMIUM", "/usr/bin/chromium");
    let driver = path("QUICTUN_CHROMEDRIVER", "/usr/bin/chromedriver");
    let missing: Vec<String> = [&chromium, &driver]
        .iter()
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "{} not found: install Chromium and its driver (apt-get install chromium \
         chromium-driver, or run scripts/test.sh), or set QUICTUN_CHROMIUM and \
         QUICTUN_CHROMEDRIVER to their paths",
        missing.join(" and ")
    );
    (chromium, driver)
}

/// A chromedriver process with one headless Chromium session.
pub struct Browser {
    driver: Child,
    port: u16,
    session: Option<String>,
    /// chromedriver's own output, kept for failure messages.
    output: mpsc::Receiver<String>,
}

/// A WebDriver command that failed: its error code (`no such element`, `stale element
/// reference`, …) and message.
#[derive(Debug)]
pub struct Failure {
    pub error: String,
    pub message: String,
}

impl Browser {
    /// Starts chromedriver on a free port of 127.0.0.1 and a headless Chromium session with
    /// a fresh profile in `profile`.
    pub fn start(chromium: &Path, driver: &Path, profile: &Path) -> Browser {
        let mut child = Command::new(driver)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver.display()));
        let output = lines_of(child.stdout.take().expect("chromedriver's output"));
        let mut browser = Browser {
            driver: child,
            port: 0,
            session: None,
            output,
        };
        browser.port = browser.wait_for_port();
        browser.wait_ready();
        browser.open_session(chromium, profile);
        browser
    }

    /// Loads `url` in the session's window.
    pub fn navigate(&self, url: &str) {
        self.session_command("POST", "/url", json!({ "url": url }))
            .unwrap_or_else(|f| panic!("cannot open {url}: {f:?}"));
    }

    /// The first element matching a CSS selector; `Err` with `no such element` if none does.
    pub fn find(&self, css: &str) -> Result<String, Failure> {
        let found = self.session_command(
            "POST",
            "/element",
            json!({ "using": "css selector", "value": css }),
        )?;
        Ok(found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element id in {found}"))
            .to_owned())
    }

    /// An element's attribute (`None` when it has none).
    pub fn attribute(&self, element: &str, name: &str) -> Result<Option<String>, Failure> {
        let path = format!("/element/{element}/attribute/{name}");
        let value = self.session_command("GET", &path, Value::Null)?;
        Ok(value.as_str().map(str::to_owned))
    }

    /// An element's rendered text.
    pub fn text(&self, element: &str) -> Result<String, Failure> {
        let value =
            self.session_command("GET", &format!("/element/{element}/text"), Value::Null)?;
        Ok(value.as_str().unwrap_or_default().to_owned())
    }

    /// Clicks an element, as a user would (scrolled into view, at its centre).
    pub fn click(&self, element: &str) -> Result<(), Failure> {
        let path = format!("/element/{element}/click");
        self.session_command("POST", &path, json!({}))?;
        Ok(())
    }

    /// The text of the open `alert`/`confirm`/`prompt` dialog; `Err` with `no such alert`
    /// when none is open.
    pub fn alert_text(&self) -> Result<String, Failure> {
        let value = self.session_command("GET", "/alert/text", Value::Null)?;
        Ok(value.as_str().unwrap_or_default().to_owned())
    }

    /// Accepts the open dialog (OK on a `confirm`).
    pub fn accept_alert(&self) -> Result<(), Failure> {
        self.session_command("POST", "/alert/accept", json!({}))?;
        Ok(())
    }

    /// The page's HTML as it is now, for failure messages.
    pub fn page_source(&self) -> String {
        match self.session_command("GET", "/source", Value::Null) {
            Ok(source) => source.as_str().unwrap_or_default().to_owned(),
            Err(failure) => format!("(no page source: {failure:?})"),
        }
    }

    fn wait_for_port(&self) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(line) = self.output.recv_timeout(left) else {
                break;
            };
            if let Some(port) = line
                .split("started successfully on port ")
                .nth(1)
                .and_then(|rest| rest.trim_end_matches('.').trim().parse().ok())
            {
                return port;
            }
            seen.push(line);
        }
        panic!("chromedriver did not say its port: {seen:?}");
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.request("GET", "/status", Value::Null) {
                Ok(status) if status["ready"] == true => return,
                result if Instant::now() > deadline => {
                    panic!("chromedriver is not ready: {result:?}")
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn open_session(&mut self, chromium: &Path, profile: &Path) {
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ]
        .map(String::from)
        .into_iter()
        .chain([format!("--user-data-dir={}", profile.display())])
        .collect::<Vec<_>>();
        let capabilities = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": { "binary": chromium, "args": args },
            }}
        });
        let created = self
            .request("POST", "/session", capabilities)
            .unwrap_or_else(|f| panic!("no browser session: {f:?}"));
        let id = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {created}"));
        self.session = Some(id.to_owned());
    }

    fn session_command(&self, method: &str, path: &str, body: Value) -> Result<Value, Failure> {
        let session = self.session.as_deref().expect("an open session");
        self.request(method, &format!("/session/{session}{path}"), body)
    }

    /// One WebDriver command: its `value` on success, the error it names otherwise.
    fn request(&self, method: &str, path: &str, body: Value) -> Result<Value, Failure> {
        let (status, reply) = http(self.port, method, path, &body).map_err(|e| Failure {
            error: "transport".into(),
            message: format!("{method} {path}: {e}"),
        })?;
        let reply: Value = serde_json::from_str(&reply).map_err(|e| Failure {
            error: "bad reply".into(),
            message: format!("{method} {path}: HTTP {status}: {e}: {reply}"),
        })?;
        let value = reply["value"].clone();
        if status == 200 {
            return Ok(value);
        }
        Err(Failure {
            error: value["error"].as_str().unwrap_or("unknown").to_owned(),
            message: value["message"].as_str().unwrap_or_default().to_owned(),
        })
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            // Closes Chromium; chromedriver would leave it running if killed first.
            let _ = self.request("DELETE", &format!("/session/{session}"), Value::Null);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The lines a child writes, read on a thread of their own.
fn lines_of(output: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// One HTTP/1.1 request to chromedriver on 127.0.0.1, one connection each: the status code
/// and the body. The body is read by its Content-Length: chromedriver says `Connection:
/// close` but keeps the socket open.
fn http(port: u16, method: &str, path: &str, body: &Value) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    // Opening a session starts Chromium, which can take a while on a busy machine.
    stream.set_read_timeout(Some(Duration::from_secs(90)))?;
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad(format!("no status line: {line:?}")))?;
    let mut length = None;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse::<usize>().ok();
        }
    }
    let length = length.ok_or_else(|| bad(format!("{method} {path}: no Content-Length")))?;
    let mut reply = vec![0u8; length];
    reader.read_exact(&mut reply)?;
    Ok((status, String::from_utf8_lossy(&reply).into_owned()))
}
