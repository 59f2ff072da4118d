//! The binaries as separate processes, as a user runs them. Each gets a scratch directory of
//! its own (its state directory and `$HOME`), an environment with nothing inherited (neither
//! the user's `$QUICTUN_PLUGIN_DIR` nor their state), the tests' plugin libraries, no REST API
//! unless asked, and loopback addresses the kernel picks: the test reads the bound addresses
//! back from the log lines that say the binary is ready. The process is killed, by its PID,
//! when the test ends, however it ends.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quictun::wire::addr::Address;

use super::{TempDir, plugin_dir, wait_until};

pub const SERVER: &str = env!("CARGO_BIN_EXE_quictun-server");
pub const CLIENT: &str = env!("CARGO_BIN_EXE_quictun-client");

/// How long a binary may take to start, or to run to its end (a debug build, a busy machine).
const START_LIMIT: Duration = Duration::from_secs(30);

/// A binary's command line: flags that isolate it, which the test's own flags replace.
pub struct Launch {
    program: PathBuf,
    /// The message of the log line that says the binary is ready.
    ready: &'static str,
    /// Given unless the test gives the flag itself, or drops it with [`Launch::without`].
    defaults: BTreeMap<&'static str, OsString>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    /// Runs in the scratch directory, not the test's (for relative paths in a config).
    in_scratch: bool,
    scratch: TempDir,
}

impl Launch {
    /// `quictun-server` on a UDP port the kernel picks, relaying to any target unless the
    /// test gives its own `--allow-target` rules (the binary refuses to start without one).
    pub fn server() -> Launch {
        Launch::program(SERVER, "server ready")
            .default("--listen-on", "127.0.0.1:0")
            .default("--allow-target", "any")
    }

    /// `quictun-client` on a TCP port the kernel picks; the test names the server and token.
    pub fn client() -> Launch {
        Launch::program(CLIENT, "client ready").default("--listen-on", "tcp:127.0.0.1:0")
    }

    /// `quictun-client --check` against `server`, logging errors only.
    pub fn check(server: &str) -> Launch {
        Launch::program(CLIENT, "")
            .args(["--check", "--server-endpoint", server])
            .default("--log-level", "error")
    }

    /// Any build of the binaries (the installed copies), ready when it logs `ready`.
    pub fn program(program: impl Into<PathBuf>, ready: &'static str) -> Launch {
        let scratch = TempDir::new("proc");
        let state = scratch.join("state");
        Launch {
            program: program.into(),
            ready,
            defaults: BTreeMap::new(),
            args: Vec::new(),
            env: vec![
                ("HOME".into(), scratch.0.clone().into()),
                ("XDG_DATA_HOME".into(), scratch.join("data").into()),
            ],
            in_scratch: false,
            scratch,
        }
        .default("--plugin-dir", plugin_dir())
        .default("--state-dir", state)
        .default("--httpd-listen-on", "")
    }

    fn default(mut self, flag: &'static str, value: impl Into<OsString>) -> Launch {
        self.defaults.insert(flag, value.into());
        self
    }

    /// Leaves out one of the defaults (a configuration file gives it instead).
    pub fn without(mut self, flag: &str) -> Launch {
        assert!(self.defaults.remove(flag).is_some(), "{flag} is no default");
        self
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Launch {
        self.args.push(arg.into());
        self
    }

    pub fn args<A: Into<OsString>>(self, args: impl IntoIterator<Item = A>) -> Launch {
        args.into_iter().fold(self, Launch::arg)
    }

    pub fn env(mut self, name: &str, value: impl Into<OsString>) -> Launch {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Runs the binary with the scratch directory as its working directory.
    pub fn in_scratch(mut self) -> Launch {
        self.in_scratch = true;
        self
    }

    /// The scratch directory, removed when the process ends.
    pub fn scratch(&self) -> &TempDir {
        &self.scratch
    }

    fn command(&self) -> Command {
        let given = |flag: &str| {
            self.args.iter().any(|arg| {
                let arg = arg.to_string_lossy();
                arg == flag || arg.starts_with(&format!("{flag}="))
            })
        };
        let mut command = Command::new(&self.program);
        for (flag, value) in self.defaults.iter().filter(|(flag, _)| !given(flag)) {
            command.arg(flag).arg(value);
        }
        command
            .args(&self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        if self.in_scratch {
            command.current_dir(&self.scratch.0);
        }
        command
    }

    /// Runs the binary to its end (a start-up error, `--check`): its exit status and output.
    pub async fn output(self) -> Output {
        let run = tokio::process::Command::from(self.command())
            .kill_on_drop(true)
            .output();
        tokio::time::timeout(START_LIMIT, run)
            .await
            .unwrap_or_else(|_| panic!("{} still running after {START_LIMIT:?}", self.name()))
            .expect("run the binary")
    }

    /// Starts the binary and waits for its ready line (failing with its log if it ends first).
    pub async fn start(self) -> Running {
        let mut child = self
            .command()
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.name()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut running = Running {
            child,
            log,
            listen: String::new(),
            api: None,
            _scratch: self.scratch,
        };
        let ready = self.ready;
        let line = running.line(ready, START_LIMIT).await;
        running.listen = field(&line, "listen").unwrap_or_default();
        running.api = running
            .lines()
            .iter()
            .find(|line| message_is(line, "REST API ready"))
            .and_then(|line| field(line, "listen"))
            .map(|addr| addr.parse().expect("the REST API's address"));
        running
    }

    fn name(&self) -> String {
        self.program.display().to_string()
    }
}

/// A started binary, killed when dropped.
pub struct Running {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    /// The `listen` field of its ready line: the address it bound.
    pub listen: String,
    /// Where its REST API listens, when it has one.
    pub api: Option<SocketAddr>,
    _scratch: TempDir,
}

impl Running {
    /// The server's QUIC address.
    pub fn quic_addr(&self) -> SocketAddr {
        self.listen.parse().expect("a server's listen address")
    }

    /// The client's application address.
    pub fn app_addr(&self) -> Address {
        self.listen.parse().expect("a client's listen address")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn log(&self) -> String {
        self.lines().join("\n")
    }

    /// Waits for a log line containing `text` (in the JSON format: whose message contains it);
    /// fails with the whole log if none comes within `limit` or the process ends first.
    pub async fn line(&mut self, text: &str, limit: Duration) -> String {
        let found = wait_until(limit, || {
            let line = self.lines().into_iter().find(|l| message_is(l, text));
            if line.is_none() {
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!("exited ({status}) before {text:?}:\n{}", self.log());
                }
            }
            std::future::ready(line)
        })
        .await;
        found.unwrap_or_else(|_| panic!("no {text:?} within {limit:?}:\n{}", self.log()))
    }

    /// Sends `signal` (`TERM`, `INT`, …) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {signal} {}", self.pid());
    }

    /// Kills the process (SIGKILL, by its PID) and waits for it to end: a server that
    /// vanishes without a word, as when its machine dies.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to end; its exit code.
    pub async fn exit_code(&mut self, limit: Duration) -> Option<i32> {
        let ended = wait_until(limit, || {
            std::future::ready(self.child.try_wait().expect("wait for the binary"))
        })
        .await;
        let status =
            ended.unwrap_or_else(|_| panic!("still running after {limit:?}:\n{}", self.log()));
        status.code()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a log line says `text`: contains it (text format) or has it as its message (JSON).
fn message_is(line: &str, text: &str) -> bool {
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(event) => event["fields"]["message"]
            .as_str()
            .is_some_and(|message| message.contains(text)),
        Err(_) => line.contains(text),
    }
}

/// A field of a log line: `name=value` in the text format (quotes taken off), `fields.name`
/// in JSON.
pub fn field(line: &str, name: &str) -> Option<String> {
    if let Ok(event) = serde_json::from_str::<serde_json::Value>(line) {
        return event["fields"][name].as_str().map(str::to_owned);
    }
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    let value = line[start..].split_whitespace().next()?;
    Some(value.trim_matches('"').to_owned())
}

/// A field the line must have (see [`field`]).
pub fn field_of(line: &str, name: &str) -> String {
    field(line, name).unwrap_or_else(|| panic!("no {name}= in: {line}"))
}
