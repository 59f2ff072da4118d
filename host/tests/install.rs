//! The installed layout, for real: `scripts/install.sh` into a scratch prefix, then the
//! installed binaries carry a tunnel with the plugins from `PREFIX/lib/quictun/plugins`, each
//! reading the example configuration of `packaging/config/`. A client outside the prefix (as
//! `cargo install` puts it in ~/.cargo/bin) finds them through `$QUICTUN_PLUGIN_DIR`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Launch, TempDir};
use serde_json::Value;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// An installed binary, started without the tests' plugin directory, logging JSON.
fn installed(path: PathBuf, ready: &'static str) -> Launch {
    Launch::program(path, ready)
        .without("--plugin-dir")
        .args(["--log-format", "json"])
}

/// The `path` field of a JSON log line.
fn path_in(line: &str) -> PathBuf {
    let event: Value = serde_json::from_str(line).expect("a JSON log line");
    PathBuf::from(event["fields"]["path"].as_str().expect("a path field"))
}

fn install(prefix: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(Path::new(REPO).join("scripts/install.sh"));
    command.args(["--debug", "--prefix"]).arg(prefix);
    command.env("CARGO", &cargo).env_remove("DESTDIR");
    // Variables cargo sets for tests would make build scripts (ring's) see a changed
    // environment and rebuild.
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

fn config(name: &str) -> PathBuf {
    Path::new(REPO).join("packaging/config").join(name)
}

/// How long a log line may take to come.
const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "builds the workspace again through scripts/install.sh, minutes; scripts/test.sh runs it"]
async fn installed_binaries_carry_a_tunnel_with_the_installed_plugins() {
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

    let echo = common::app_server_tcp(common::Behaviour::Echo).await;
    let target = echo.addr.to_string();
    let plugins = std::fs::canonicalize(&plugins).unwrap();
    let mut server = installed(prefix.join("bin/quictun-server"), "server ready")
        .arg("--config")
        .arg(config("quictun-server.yaml"))
        .args(["--listen-on", "127.0.0.1:0"])
        .args(["--allow-target", target.trim_start_matches("tcp:")])
        .start()
        .await;
    let path = path_in(&server.line("token parser loaded", LIMIT).await);
    assert!(
        path.starts_with(&plugins),
        "{} is not under {}",
        path.display(),
        plugins.display()
    );
    let listen = server.listen.clone();

    // As `cargo install` lays it out: the binary alone, the plugins found by the variable.
    let cargo_bin = scratch.join("cargo-bin");
    std::fs::create_dir_all(&cargo_bin).unwrap();
    std::fs::copy(
        prefix.join("bin/quictun-client"),
        cargo_bin.join("quictun-client"),
    )
    .unwrap();
    let client = || {
        installed(cargo_bin.join("quictun-client"), "client ready")
            .arg("--config")
            .arg(config("quictun-client.yaml"))
            .args(["--server-endpoint", &listen, "--insecure-skip-verify"])
            .arg(format!(
                "--listen-on=unix:{}",
                scratch.join("app.sock").display()
            ))
            .args(["--token-source", &target])
    };

    let lost = client().output().await;
    let stderr = String::from_utf8_lossy(&lost.stderr);
    assert_eq!(lost.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("libquictun_plugin_fixed.so"), "{stderr}");

    let mut client = client().env("QUICTUN_PLUGIN_DIR", &plugins).start().await;
    let path = path_in(&client.line("token source loaded", LIMIT).await);
    assert!(path.starts_with(&plugins), "{}", path.display());

    let data = common::pattern(256 * 1024, 9);
    let app = common::connect(&client.app_addr()).await;
    let back = common::within(30, common::exchange(app, data.clone()))
        .await
        .unwrap();
    assert!(back == data, "{} bytes came back, not the same", back.len());
}
