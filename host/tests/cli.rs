//! The binaries' start-up errors: one clear line on standard error and a non-zero exit.

mod common;

use std::process::Output;

use common::Launch;

/// Runs `binary` with `args` to its end, logging errors only: start-up progress is at info.
async fn run(binary: Launch, args: &[&str]) -> Output {
    binary
        .args(args)
        .args(["--log-level", "error"])
        .output()
        .await
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

#[tokio::test]
async fn a_bad_listen_address_names_the_value_and_the_forms() {
    let output = run(
        Launch::client(),
        &["--listen-on", "bogus", "--server-endpoint", "127.0.0.1:1"],
    )
    .await;
    assert_one_line(
        &output,
        2,
        "invalid address \"bogus\": no scheme (expected tcp:HOST:PORT or unix:/path/to/socket)",
    );
}

/// The whole of standard error, which must be one line, and the exit code.
fn only_line(output: &Output) -> (Option<i32>, String) {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    (output.status.code(), stderr.trim_end().to_owned())
}

#[tokio::test]
async fn a_mistyped_flag_keeps_clap_s_suggestion_on_the_one_line() {
    let output = run(Launch::client(), &["--server-endpiont", "127.0.0.1:7500"]).await;
    assert_eq!(
        only_line(&output),
        (
            Some(2),
            "quictun-client: error: unexpected argument '--server-endpiont' found; \
             tip: a similar argument exists: '--server-endpoint' (see --help)"
                .into()
        )
    );
    let output = run(Launch::server(), &["--alow-target", "any"]).await;
    assert_eq!(
        only_line(&output),
        (
            Some(2),
            "quictun-server: error: unexpected argument '--alow-target' found; \
             tip: a similar argument exists: '--allow-target' (see --help)"
                .into()
        )
    );
}

#[tokio::test]
async fn a_missing_required_flag_is_named() {
    let output = run(Launch::client(), &["--insecure-skip-verify"]).await;
    assert_one_line(&output, 2, "--server-endpoint");
}

#[tokio::test]
async fn a_bad_duration_is_explained() {
    let output = run(Launch::server(), &["--connect-timeout", "5"]).await;
    assert_one_line(
        &output,
        2,
        "\"5\" is not a duration (write 500ms, 10s, 2m or 1h)",
    );
}

#[tokio::test]
async fn a_thread_count_outside_its_range_is_explained() {
    for value in ["0", "many"] {
        let output = run(Launch::server(), &["--threads", value]).await;
        assert_one_line(&output, 2, &format!("'{value}' for '--threads <N>'"));
    }
}

#[tokio::test]
async fn booleans_take_an_optional_value_after_an_equals_sign_or_a_space() {
    let output = run(
        Launch::client(),
        &[
            "--server-endpoint",
            "127.0.0.1:1",
            "--insecure-skip-verify=maybe",
        ],
    )
    .await;
    assert_one_line(&output, 2, "maybe");
    let output = run(
        Launch::client(),
        &[
            "--insecure-skip-verify",
            "maybe",
            "--server-endpoint",
            "127.0.0.1:1",
        ],
    )
    .await;
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
            &run(Launch::client(), &args).await,
            1,
            "choose one of --insecure-skip-verify, --server-cert-fingerprint",
        );
    }
    let output = run(
        Launch::server(),
        &[
            "--verify-remote-endpoint",
            "true",
            "--listen-on",
            "127.0.0.1:0",
            "--httpd-listen-on",
            "",
        ],
    )
    .await;
    assert_one_line(&output, 1, "--verify-remote-endpoint needs --ca-file");
}

#[tokio::test]
async fn a_missing_plugin_file_is_a_start_up_error() {
    let output = run(
        Launch::server(),
        &[
            "--listen-on",
            "127.0.0.1:0",
            "--token-parser-plugin",
            "./nope.so",
        ],
    )
    .await;
    assert_one_line(
        &output,
        1,
        "quictun-server: error: cannot load ./nope.so: No such file or directory",
    );
}

#[tokio::test]
async fn a_plugin_of_the_wrong_kind_is_a_start_up_error() {
    let output = run(
        Launch::server(),
        &[
            "--listen-on",
            "127.0.0.1:0",
            "--token-parser-plugin",
            "Fixed",
        ],
    )
    .await;
    assert_one_line(
        &output,
        1,
        "it is a token source plugin, not a token parser",
    );
}

#[tokio::test]
async fn a_bad_plugin_configuration_is_a_start_up_error() {
    let output = run(
        Launch::server(),
        &["--listen-on", "127.0.0.1:0", "--token-parser-key", "aes"],
    )
    .await;
    assert_one_line(&output, 1, "unknown --token-parser-key \"aes\"");
}

#[tokio::test]
async fn verification_choices_exclude_each_other() {
    let fingerprint = format!("sha256:{}", "ab".repeat(32));
    let output = run(
        Launch::client(),
        &[
            "--server-endpoint",
            "127.0.0.1:1",
            "--insecure-skip-verify",
            "--server-cert-fingerprint",
            &fingerprint,
        ],
    )
    .await;
    assert_one_line(
        &output,
        1,
        "choose one of --insecure-skip-verify, --server-cert-fingerprint",
    );
}

#[tokio::test]
async fn verifying_the_remote_endpoint_needs_a_ca() {
    let output = run(
        Launch::client(),
        &[
            "--server-endpoint",
            "127.0.0.1:1",
            "--verify-remote-endpoint",
        ],
    )
    .await;
    assert_one_line(&output, 1, "--verify-remote-endpoint needs --ca-file");
    let output = run(
        Launch::server(),
        &[
            "--listen-on",
            "127.0.0.1:0",
            "--httpd-listen-on",
            "",
            "--verify-remote-endpoint",
        ],
    )
    .await;
    assert_one_line(&output, 1, "--verify-remote-endpoint needs --ca-file");
}

#[tokio::test]
async fn a_certificate_needs_its_key() {
    let output = run(Launch::server(), &["--cert-file", "/tmp/c.pem"]).await;
    assert_one_line(&output, 2, "--key-file");
    let output = run(
        Launch::server(),
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
    )
    .await;
    assert_one_line(&output, 1, "cannot read certificate /nonexistent/c.pem");
}

#[tokio::test]
async fn a_bad_allow_target_rule_is_explained() {
    let output = run(Launch::server(), &["--allow-target", "10.0.0.0/33"]).await;
    assert_one_line(
        &output,
        1,
        "invalid --allow-target \"10.0.0.0/33\": bad prefix length",
    );
}

#[tokio::test]
async fn a_bad_fingerprint_is_explained() {
    let output = run(
        Launch::client(),
        &[
            "--server-endpoint",
            "127.0.0.1:1",
            "--server-cert-fingerprint",
            "sha256:12",
        ],
    )
    .await;
    assert_eq!(
        only_line(&output),
        invalid(
            "quictun-client",
            "sha256:12",
            "--server-cert-fingerprint <sha256:HEX>",
            "\"sha256:12\" is not a SHA-256 fingerprint (write sha256: and 64 hex digits, the \
             64 hex digits alone, or 32 colon-separated pairs AB:CD:... as `openssl x509 \
             -fingerprint -sha256` prints them; upper or lower case)"
        )
    );
}

/// The error clap prints for `value` of `flag`: ours after its own words.
fn invalid(program: &str, value: &str, flag: &str, ours: &str) -> (Option<i32>, String) {
    let line =
        format!("{program}: error: invalid value '{value}' for '{flag}': {ours} (see --help)");
    (Some(2), line)
}

/// What an endpoint's address error says it expects.
const ENDPOINT_FORMS: &str = "(expected HOST:PORT or [IPv6]:PORT, HOST an IP address or a DNS \
                              name; a tcp: or udp: prefix is ignored)";

#[tokio::test]
async fn each_address_error_names_the_forms_its_flag_expects() {
    let output = run(Launch::client(), &["--server-endpoint", "::1:7500"]).await;
    assert_eq!(
        only_line(&output),
        invalid(
            "quictun-client",
            "::1:7500",
            "--server-endpoint <HOST:PORT>",
            &format!(
                "\"::1:7500\": an IPv6 address must be in brackets, as [::1]:22 {ENDPOINT_FORMS}"
            )
        )
    );
    let output = run(Launch::server(), &["--listen-on", "unix:/run/quictun.sock"]).await;
    assert_eq!(
        only_line(&output),
        invalid(
            "quictun-server",
            "unix:/run/quictun.sock",
            "--listen-on <HOST:PORT>",
            &format!(
                "\"unix:/run/quictun.sock\": port is not a number from 0 to 65535 {ENDPOINT_FORMS}"
            )
        )
    );
    let output = run(
        Launch::client(),
        &[
            "--server-endpoint",
            "127.0.0.1:7500",
            "--listen-on",
            "127.0.0.1:6500",
        ],
    )
    .await;
    assert_eq!(
        only_line(&output),
        invalid(
            "quictun-client",
            "127.0.0.1:6500",
            "--listen-on <ADDRESS>",
            "invalid address \"127.0.0.1:6500\": unknown scheme (expected tcp:HOST:PORT or \
             unix:/path/to/socket)"
        )
    );
}

#[tokio::test]
async fn the_server_listens_on_a_host_name_resolved_at_start() {
    for given in ["localhost:0", "udp:localhost:0"] {
        let server = Launch::server().args(["--listen-on", given]).start().await;
        assert!(server.quic_addr().ip().is_loopback(), "{}", server.log());
        assert_ne!(server.quic_addr().port(), 0, "{}", server.log());
    }
    let output = run(
        Launch::server(),
        &["--listen-on", "no-such-host.invalid:7500"],
    )
    .await;
    let (code, line) = only_line(&output);
    assert_eq!(code, Some(1), "{line}");
    assert!(
        line.starts_with(
            "quictun-server: error: cannot resolve --listen-on no-such-host.invalid:7500: "
        ),
        "{line}"
    );
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let server = Launch::server()
        .args(["--log-format", "json"])
        .start()
        .await;
    let mut ready = false;
    for line in server.lines() {
        let object: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
        assert!(
            object["level"].is_string() && object["fields"].is_object(),
            "{line}"
        );
        ready |= object["fields"]["message"] == "server ready";
    }
    assert!(ready, "{}", server.log());
}
