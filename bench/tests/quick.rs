//! Smoke test of quictun-bench: a `--quick` loopback run against freshly built endpoints, the
//! JSON checked for every path's numbers, so the tool keeps working as the product changes.
//! Runs the build profile of the test itself (debug under `cargo test`), writes its results to
//! a temporary file and never touches bench/results/. It builds the endpoints itself (cargo
//! builds no other package's binaries for this test, and quictun-bench runs them with the
//! plugins beside them) and takes minutes: ignored by a plain `cargo test`, run by
//! `scripts/test.sh`.

use std::path::PathBuf;
use std::process::Command;

/// target/<profile>/, from target/<profile>/deps/<test binary>.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps")
        .to_path_buf()
}

#[test]
#[ignore = "builds the endpoints and runs a quictun-bench round, minutes; scripts/test.sh runs it"]
fn quick_run_reports_every_path() {
    let bin_dir = profile_dir();
    let release = bin_dir.file_name().is_some_and(|n| n == "release");
    // The endpoints and their default plugins, in this test's profile (cargo test does not
    // build another package's binaries or cdylibs).
    let mut build = Command::new(env!("CARGO"));
    build.args(["build", "-p", "quictun", "-p", "quictun-plugin-fixed"]);
    build.args([
        "-p",
        "quictun-plugin-cleartext",
        "-p",
        "quictun-plugin-spice",
    ]);
    if release {
        build.arg("--release");
    }
    let status = build.status().expect("cannot run cargo");
    assert!(status.success(), "building the endpoints failed: {status}");

    let out = std::env::temp_dir().join(format!("quictun-bench-smoke-{}.json", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_quictun-bench"))
        .arg("--quick")
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("cannot run quictun-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "quictun-bench failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&out).expect("results written to --out");
    let _ = std::fs::remove_file(&out);
    let json: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");

    let paths = json["paths"].as_array().expect("paths");
    let mut names: Vec<&str> = paths.iter().filter_map(|p| p["name"].as_str()).collect();
    for required in ["direct TCP", "tunnel", "bare quinn", "tcp relay"] {
        assert!(
            names.contains(&required),
            "no {required:?} in {names:?}\n{stdout}"
        );
    }
    for path in paths {
        let name = path["name"].as_str().unwrap_or("?");
        for key in [
            "up1_gbps",
            "down1_gbps",
            "up8_gbps",
            "down8_gbps",
            "ttfb_p50_ms",
            "ttfb_p99_ms",
            "echo_p50_ms",
            "echo_p99_ms",
        ] {
            let value = path[key].as_f64().unwrap_or(f64::NAN);
            assert!(value > 0.0 && value.is_finite(), "{name}: {key} = {value}");
        }
        if name != "direct TCP" {
            let cpu = path["cpu_s_per_gib"].as_f64().unwrap_or(f64::NAN);
            assert!(
                cpu > 0.0 && cpu.is_finite(),
                "{name}: cpu_s_per_gib = {cpu}"
            );
        }
    }
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), paths.len(), "a path reported twice");

    let interleaved = &json["interleaved"];
    assert_eq!(interleaved["rounds"].as_u64(), Some(1), "{interleaved}");
    for way in ["up", "down"] {
        for key in [
            "tunnel_gbps",
            "quinn_gbps",
            "tcp_relay_gbps",
            "tunnel_of_quinn",
            "bound_gbps",
            "tunnel_of_bound",
            "tunnel_core_s_per_gib",
            "quinn_core_s_per_gib",
            "tcp_relay_core_s_per_gib",
            "tunnel_endpoints_s_per_gib",
            "quinn_endpoints_s_per_gib",
            "tunnel_endpoints_of_quinn",
        ] {
            let value = interleaved[way][key].as_f64().unwrap_or(f64::NAN);
            assert!(value > 0.0 && value.is_finite(), "{way}: {key} = {value}");
        }
        let t = interleaved[way]["tunnel_gbps"].as_f64().unwrap_or(0.0);
        let q = interleaved[way]["quinn_gbps"].as_f64().unwrap_or(0.0);
        let ratio = interleaved[way]["tunnel_of_quinn"].as_f64().unwrap_or(0.0);
        assert!(
            (ratio - t / q).abs() < 0.01,
            "{way}: ratio {ratio} vs {t} / {q}"
        );
    }

    let idle = json["idle"].as_array().expect("idle");
    assert_eq!(idle.len(), 2, "idle levels: {idle:?}");
    for level in idle {
        for key in ["client_rss_kib", "server_rss_kib"] {
            assert!(level[key].as_u64().unwrap_or(0) > 0, "{level}: {key}");
        }
    }
    assert!(json["loadavg_before"].is_string());
}
