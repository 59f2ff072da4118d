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
        "invalid address \"bogus\": no scheme (expected tcp:HOST:PORT, udp:HOST:PORT or unix:/path/to/socket)",
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
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.matches("os error").count(), 1, "said once: {stderr}");
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
            "invalid address \"127.0.0.1:6500\": unknown scheme (expected tcp:HOST:PORT, \
             udp:HOST:PORT or unix:/path/to/socket)"
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

/// The original's client configuration, as its users have it.
const ORIGINAL_CLIENT_CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/original-config/quictun-client.yaml"
);

#[tokio::test]
async fn the_original_config_logs_into_its_file_with_one_warning_for_the_other_log_keys() {
    let launch = Launch::client()
        .args(["--config", ORIGINAL_CLIENT_CONFIG])
        .in_scratch();
    let file = launch.scratch().join("quictun-client.log");
    let mut client = launch.start().await;
    client
        .line("client ready", std::time::Duration::from_secs(5))
        .await;
    let stderr = client.lines();
    let warnings: Vec<&String> = stderr.iter().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{}", client.log());
    for key in [
        "log-name",
        "log-development",
        "log-disable-caller",
        "log-disable-stacktrace",
        "log-error-output-paths",
    ] {
        assert!(
            warnings[0].contains(&format!("\"{key}\"")),
            "{key}: {}",
            warnings[0]
        );
    }
    let logged = std::fs::read_to_string(&file).expect("the log-output-paths file");
    let logged: Vec<&str> = logged.lines().collect();
    assert_eq!(
        logged,
        stderr[..logged.len()],
        "the file has standard error's lines"
    );
    assert!(
        logged.iter().any(|l| l.contains("client ready")),
        "{logged:?}"
    );
    assert!(logged[0].contains("WARN"), "{logged:?}");
    let scratch = entries(&file);
    assert!(!scratch.contains(&"stdout".to_owned()), "{scratch:?}");
}

/// The names in the directory of `file`.
fn entries(file: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(file.parent().unwrap())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn a_log_file_that_cannot_be_opened_is_a_start_up_error() {
    let scratch = common::TempDir::new("logpath");
    let config = scratch.join("c.yaml");
    let missing = scratch.join("no-such-dir/quictun-client.log");
    std::fs::write(
        &config,
        format!("log-output-paths: {}\n", missing.display()),
    )
    .unwrap();
    let output = run(
        Launch::client(),
        &[
            "-c",
            config.to_str().unwrap(),
            "--server-endpoint",
            "127.0.0.1:1",
        ],
    )
    .await;
    assert_one_line(
        &output,
        1,
        &format!("cannot open log-output-paths {}", missing.display()),
    );
}

/// Runs a binary with nothing but `args` (no defaults: `--generate` must be given alone).
fn plain(binary: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(binary)
        .args(args)
        .output()
        .expect("run the binary");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{args:?}: {stderr}");
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

#[test]
fn the_man_pages_have_every_section_and_examples_of_their_own_binary() {
    for (binary, name) in [
        (common::process::CLIENT, "quictun\\-client"),
        (common::process::SERVER, "quictun\\-server"),
    ] {
        let page = plain(binary, &["--generate", "man"]);
        for section in [
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "OPTIONS",
            "EXAMPLES",
            "FILES",
            "ENVIRONMENT",
        ] {
            assert!(
                page.contains(&format!("\n.SH {section}\n")),
                "{section}:\n{page}"
            );
        }
        let title = page.split("\n.SH NAME\n").nth(1).unwrap().lines().next();
        let title = title.unwrap();
        assert!(title.starts_with(&format!("{name} \\- ")), "{title}");
        let plain_title = title.replace("\\-", "-");
        assert!(
            !title.ends_with('.') && plain_title.len() < 90,
            "not a short name: {title}"
        );
        assert!(page.contains(&format!(".nf\n{name} \\-\\-")), "{page}");
        assert!(page.contains("QUICTUN_PLUGIN_DIR"), "{page}");
        // --generate is not one of the options (the server's page may still say how to
        // generate a cluster key).
        assert!(!page.contains("\\fB\\-\\-generate"), "{page}");
    }
}

#[test]
fn help_lists_generate_and_the_built_in_plugins() {
    let client = plain(common::process::CLIENT, &["--help"]);
    let server = plain(common::process::SERVER, &["--help"]);
    for help in [&client, &server] {
        assert!(help.contains("the built-in Spice"), "{help}");
    }
    assert!(client.contains("--generate <SHELL|man>\n"), "{client}");
    assert!(
        server.contains("--generate <SHELL|man|cluster-key>"),
        "{server}"
    );
    assert!(
        client.contains("a built-in name (Fixed, File or Http)"),
        "{client}"
    );
    assert!(server.contains("the built-in Cleartext"), "{server}");
}
