//! The binaries' start-up errors: one clear line on standard error and a non-zero exit.

mod common;

use std::process::{Command, Output};

fn run(binary: &str, args: &[&str]) -> Output {
    let dir = common::plugin_dir().to_str().unwrap().to_owned();
    Command::new(binary)
        .args(args)
        .args(["--plugin-dir", &dir])
        // Only the error itself: start-up progress is logged at info.
        .args(["--log-level", "error"])
        .env_remove("QUICTUN_PLUGIN_DIR")
        // Never the user's own state directory.
        .env(
            "XDG_DATA_HOME",
            std::env::temp_dir().join(format!("quictun-cli-{}", std::process::id())),
        )
        .output()
        .expect("run binary")
}

/// Asserts an exit code and a single line of standard error containing `expected`.
fn assert_one_line(output: &Output, code: i32, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "stderr: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "not one line: {stderr}"
    );
    assert!(stderr.contains(expected), "{expected:?} not in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

const SERVER: &str = env!("CARGO_BIN_EXE_quictun-server");
const CLIENT: &str = env!("CARGO_BIN_EXE_quictun-client");

#[test]
fn a_bad_listen_address_names_the_value_and_the_forms() {
    let output = run(
        CLIENT,
        &["--listen-on", "bogus", "--server-endpoint", "127.0.0.1:1"],
    );
    assert_one_line(
        &output,
        2,
        "invalid address \"bogus\": no scheme (expected tcp:HOST:PORT or unix:/path/to/socket)",
    );
}

#[test]
fn a_missing_required_flag_is_named() {
    let output = run(CLIENT, &["--insecure-skip-verify"]);
    assert_one_line(&output, 2, "--server-endpoint");
}

#[test]
fn a_bad_duration_is_explained() {
    let output = run(SERVER, &["--connect-timeout", "5"]);
    assert_one_line(
        &output,
        2,
        "\"5\" is not a duration (write 500ms, 10s, 2m or 1h)",
    );
}

#[test]
fn a_thread_count_outside_its_range_is_explained() {
    for value in ["0", "many"] {
        let output = run(SERVER, &["--threads", value]);
        assert_one_line(&output, 2, &format!("'{value}' for '--threads <N>'"));
    }
}

#[test]
fn booleans_take_an_optional_value_after_an_equals_sign_or_a_space() {
    let output = run(
        CLIENT,
        &[
            "--server-endpoint",
            "127.0.0.1:1",
            "--insecure-skip-verify=maybe",
        ],
    );
    assert_one_line(&output, 2, "maybe");
    let output = run(
        CLIENT,
        &[
            "--insecure-skip-verify",
            "maybe",
            "--server-endpoint",
            "127.0.0.1:1",
        ],
    );
    assert_one_line(&output, 2, "maybe");
    // The original's form `--flag true`: the value is taken, not left over as an argument.
    let fingerprint = format!("sha256:{}", "ab".repeat(32));
    for form in [
        &["--insecure-skip-verify", "true"][..],
        &["--insecure-skip-verify=true"],
    ] {
        let mut args = vec!["--server-endpoint", "127.0.0.1:1"];
        args.extend_from_slice(form);
        args.extend_from_slice(&["--server-cert-fingerprint", &fingerprint]);
        assert_one_line(
            &run(CLIENT, &args),
            1,
            "choose one of --insecure-skip-verify, --server-cert-fingerprint",
        );
    }
    let output = run(
        SERVER,
        &[
            "--verify-remote-endpoint",
            "true",
            "--listen-on",
            "127.0.0.1:0",
            "--httpd-listen-on",
            "",
        ],
    );
    assert_one_line(&output, 1, "--verify-remote-endpoint needs --ca-file");
}

#[test]
fn a_missing_plugin_file_is_a_start_up_error() {
    let output = run(
        SERVER,
        &[
            "--listen-on",
            "127.0.0.1:0",
            "--token-parser-plugin",
            "./nope.so",
        ],
    );
    assert_one_line(
        &output,
        1,
        "quictun-server: error: cannot load ./nope.so: No such file or directory",
    );
}

#[test]
fn a_plugin_of_the_wrong_kind_is_a_start_up_error() {
    let output = run(
        SERVER,
        &[
            "--listen-on",
            "127.0.0.1:0",
            "--token-parser-plugin",
            "Fixed",
        ],
    );
    assert_one_line(
        &output,
        1,
        "it is a token source plugin, not a token parser",
    );
}

#[test]
fn a_bad_plugin_configuration_is_a_start_up_error() {
    let output = run(
        SERVER,
        &["--listen-on", "127.0.0.1:0", "--token-parser-key", "aes"],
    );
    assert_one_line(&output, 1, "unknown --token-parser-key \"aes\"");
}

#[test]
fn verification_choices_exclude_each_other() {
    let fingerprint = format!("sha256:{}", "ab".repeat(32));
    let output = run(
        CLIENT,
        &[
            "--server-endpoint",
            "127.0.0.1:1",
            "--insecure-skip-verify",
            "--server-cert-fingerprint",
            &fingerprint,
        ],
    );
    assert_one_line(
        &output,
        1,
        "choose one of --insecure-skip-verify, --server-cert-fingerprint",
    );
}

#[test]
fn verifying_the_remote_endpoint_needs_a_ca() {
    let output = run(
        CLIENT,
        &[
            "--server-endpoint",
            "127.0.0.1:1",
            "--verify-remote-endpoint",
        ],
    );
    assert_one_line(&output, 1, "--verify-remote-endpoint needs --ca-file");
    let output = run(
        SERVER,
        &[
            "--listen-on",
            "127.0.0.1:0",
            "--httpd-listen-on",
            "",
            "--verify-remote-endpoint",
        ],
    );
    assert_one_line(&output, 1, "--verify-remote-endpoint needs --ca-file");
}

#[test]
fn a_certificate_needs_its_key() {
    let output = run(SERVER, &["--cert-file", "/tmp/c.pem"]);
    assert_one_line(&output, 2, "--key-file");
    let output = run(
        SERVER,
        &[
            "--listen-on",
            "127.0.0.1:0",
            "--httpd-listen-on",
            "",
            "--cert-file",
            "/nonexistent/c.pem",
            "--key-file",
            "/nonexistent/k.pem",
        ],
    );
    assert_one_line(&output, 1, "cannot read certificate /nonexistent/c.pem");
}

#[test]
fn a_bad_allow_target_rule_is_explained() {
    let output = run(SERVER, &["--allow-target", "10.0.0.0/33"]);
    assert_one_line(
        &output,
        1,
        "invalid --allow-target \"10.0.0.0/33\": bad prefix length",
    );
}

#[test]
fn a_bad_fingerprint_is_explained() {
    let output = run(
        CLIENT,
        &[
            "--server-endpoint",
            "127.0.0.1:1",
            "--server-cert-fingerprint",
            "sha256:12",
        ],
    );
    assert_one_line(&output, 2, "is not a fingerprint");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = std::env::temp_dir().join(format!("quictun-json-{}", std::process::id()));
    let mut child = Command::new(SERVER)
        .args([
            "--listen-on",
            "127.0.0.1:0",
            "--httpd-listen-on",
            "",
            "--log-format",
            "json",
        ])
        .args(["--plugin-dir", common::plugin_dir().to_str().unwrap()])
        .env("XDG_DATA_HOME", &dir)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let stderr = child.stderr.take().unwrap();
    let mut ready = false;
    for line in std::io::BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
    {
        let object: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
        assert!(
            object["level"].is_string() && object["fields"].is_object(),
            "{line}"
        );
        if object["fields"]["message"] == "server ready" {
            ready = true;
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready);
}
