//! The installed layout, for real: `scripts/install.sh` into a scratch prefix, then the
//! installed binaries carry a tunnel with the plugins from `PREFIX/lib/quictun/plugins`, each
//! reading the example configuration of `packaging/config/`. A client outside the prefix (as
//! `cargo install` puts it in ~/.cargo/bin) finds them through `$QUICTUN_PLUGIN_DIR`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::TempDir;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// A process of ours, killed (by its PID) when the test ends.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(command: &mut Command) -> Running {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start installed binary");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Running { child, lines }
    }

    /// The JSON log lines until one whose message is `message`; that one is returned.
    fn wait_for(&self, message: &str, seen: &mut Vec<serde_json::Value>) -> serde_json::Value {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no {message:?} in the log: {seen:#?}"));
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                panic!("not a JSON log line: {line}");
            };
            seen.push(event.clone());
            if event["fields"]["message"] == message {
                return event;
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn install(prefix: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(Path::new(REPO).join("scripts/install.sh"));
    command.args(["--debug", "--prefix"]).arg(prefix);
    command.env("CARGO", &cargo).env_remove("DESTDIR");
    // As in common::cargo_build: variables cargo sets for tests would make build scripts rerun.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("CARGO_") && name != "CARGO_TARGET_DIR" && name != "CARGO_HOME" {
            command.env_remove(name);
        }
    }
    let output = command.output().expect("run install.sh");
    assert!(
        output.status.success(),
        "install.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn echo_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut reader = stream.try_clone().unwrap();
                let mut writer = stream;
                let _ = std::io::copy(&mut reader, &mut writer);
                let _ = writer.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

fn config(name: &str) -> PathBuf {
    Path::new(REPO).join("packaging/config").join(name)
}

#[test]
fn installed_binaries_carry_a_tunnel_with_the_installed_plugins() {
    let scratch = TempDir::new("install");
    let prefix = scratch.join("prefix");
    install(&prefix);

    let plugins = prefix.join("lib/quictun/plugins");
    for file in [
        "bin/quictun-server",
        "bin/quictun-client",
        "share/man/man1/quictun-server.1",
        "share/man/man1/quictun-client.1",
        "share/bash-completion/completions/quictun-client",
        "share/zsh/site-functions/_quictun-server",
        "share/fish/vendor_completions.d/quictun-client.fish",
        "lib/systemd/system/quictun-server.service",
        "lib/systemd/system/quictun-client.service",
        "share/quictun/examples/quictun-server.yaml",
    ] {
        assert!(prefix.join(file).is_file(), "{file} not installed");
    }
    for plugin in ["fixed", "file", "http", "cleartext", "spice"] {
        let file = plugins.join(format!("libquictun_plugin_{plugin}.so"));
        assert!(file.is_file(), "{} not installed", file.display());
    }
    let unit =
        std::fs::read_to_string(prefix.join("lib/systemd/system/quictun-server.service")).unwrap();
    let exec = format!("ExecStart={}/bin/quictun-server ", prefix.display());
    assert!(unit.contains(&exec), "{unit}");
    let man = std::fs::read_to_string(prefix.join("share/man/man1/quictun-client.1")).unwrap();
    assert!(man.contains("server\\-endpoint"), "{man}");

    let echo = echo_server();
    let plugins = std::fs::canonicalize(&plugins).unwrap();
    let mut seen = Vec::new();
    let server = Running::start(
        Command::new(prefix.join("bin/quictun-server"))
            .arg("--config")
            .arg(config("quictun-server.yaml"))
            .args(["--listen-on", "127.0.0.1:0", "--httpd-listen-on", ""])
            .args(["--allow-target", &echo.to_string(), "--log-format", "json"])
            .arg("--state-dir")
            .arg(scratch.join("server-state"))
            .env_remove("QUICTUN_PLUGIN_DIR"),
    );
    let loaded = server.wait_for("token parser loaded", &mut seen);
    let path = loaded["fields"]["path"].as_str().unwrap();
    assert!(
        Path::new(path).starts_with(&plugins),
        "{path} is not under {}",
        plugins.display()
    );
    let ready = server.wait_for("server ready", &mut seen);
    let listen = ready["fields"]["listen"].as_str().unwrap().to_owned();

    // As `cargo install` lays it out: the binary alone, the plugins found by the variable.
    let cargo_bin = scratch.join("cargo-bin");
    std::fs::create_dir_all(&cargo_bin).unwrap();
    std::fs::copy(
        prefix.join("bin/quictun-client"),
        cargo_bin.join("quictun-client"),
    )
    .unwrap();
    let client_command = |plugin_dir: Option<&Path>| {
        let mut command = Command::new(cargo_bin.join("quictun-client"));
        command
            .arg("--config")
            .arg(config("quictun-client.yaml"))
            .args(["--server-endpoint", &listen, "--insecure-skip-verify"])
            .arg(format!(
                "--listen-on=unix:{}",
                scratch.join("app.sock").display()
            ))
            .args(["--token-source", &format!("tcp:{echo}")])
            .args(["--httpd-listen-on", "", "--log-format", "json"])
            .arg("--state-dir")
            .arg(scratch.join("client-state"))
            .env_remove("QUICTUN_PLUGIN_DIR");
        if let Some(dir) = plugin_dir {
            command.env("QUICTUN_PLUGIN_DIR", dir);
        }
        command
    };

    let lost = client_command(None).output().unwrap();
    let stderr = String::from_utf8_lossy(&lost.stderr);
    assert_eq!(lost.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("libquictun_plugin_fixed.so"), "{stderr}");

    let client = Running::start(&mut client_command(Some(&plugins)));
    let loaded = client.wait_for("token source loaded", &mut seen);
    let path = loaded["fields"]["path"].as_str().unwrap();
    assert!(Path::new(path).starts_with(&plugins), "{path}");
    client.wait_for("client ready", &mut seen);

    let data = common::pattern(256 * 1024, 9);
    let mut app = UnixStream::connect(scratch.join("app.sock")).unwrap();
    app.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let writer = {
        let mut app = app.try_clone().unwrap();
        let data = data.clone();
        std::thread::spawn(move || {
            app.write_all(&data).unwrap();
            app.shutdown(std::net::Shutdown::Write).unwrap();
        })
    };
    let mut back = Vec::new();
    app.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert!(back == data, "{} bytes came back, not the same", back.len());
}
