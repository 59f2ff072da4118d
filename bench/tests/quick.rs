//! Smoke tests of quictun-bench: a `--quick` loopback run, a `--quick` hostile run, the
//! loopback part of a `--quick` UDP run, a `--quick` many-clients run and, as root, `--quick`
//! interactive and veth runs against freshly built endpoints, the JSON checked for every
//! path's and every phase's numbers, so the tool keeps working as the product changes. They
//! run the build profile of the test
//! itself (debug under `cargo test`), write their results to temporary files and never touch
//! bench/results/. They build the endpoints and take minutes: ignored by a plain
//! `cargo test`, run by `scripts/test.sh`.

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

/// Builds the endpoints and their default plugins in this test's profile (cargo test does not
/// build another package's binaries or cdylibs), then runs `quictun-bench --quick` with
/// `args`: its JSON and its standard output.
fn quick_run(args: &[&str]) -> (serde_json::Value, String) {
    let bin_dir = profile_dir();
    let release = bin_dir.file_name().is_some_and(|n| n == "release");
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

    let name = format!(
        "quictun-bench-smoke-{}-{}.json",
        std::process::id(),
        args.join("-")
    );
    let out = std::env::temp_dir().join(name);
    let output = Command::new(env!("CARGO_BIN_EXE_quictun-bench"))
        .arg("--quick")
        .args(args)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("cannot run quictun-bench");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "quictun-bench failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&out).expect("results written to --out");
    let _ = std::fs::remove_file(&out);
    (serde_json::from_str(&text).expect("valid JSON"), stdout)
}

#[test]
#[ignore = "builds the endpoints and runs a quictun-bench round, minutes; scripts/test.sh runs it"]
fn quick_run_reports_every_path() {
    let (json, stdout) = quick_run(&[]);

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

#[test]
#[ignore = "builds the endpoints and runs the hostile suite quickly, about a minute; scripts/test.sh runs it"]
fn quick_hostile_run_reports_every_phase() {
    let (json, stdout) = quick_run(&["--suite", "hostile"]);
    let count = |value: &serde_json::Value| value.as_u64().unwrap_or(0);
    for phase in ["handshake_flood", "handshake_flood_many"] {
        let p = &json[phase];
        for key in ["initials_sent", "datagrams_back", "answered", "taken_on"] {
            assert!(count(&p[key]) > 0, "{phase}: {key} in {p}\n{stdout}");
        }
        assert!(count(&p["good_client"]["ok"]) > 0, "{phase}: {p}");
        assert!(count(&p["rss"]["peak_kib"]) >= count(&p["rss"]["before_kib"]));
        assert!(count(&p["rss"]["before_kib"]) > 0, "{phase}: {p}");
    }
    let one = &json["handshake_flood"];
    assert!(
        count(&one["handshake_failures"]["too_many_handshakes_from_address"]) > 0,
        "one socket fills its address's budget: {one}"
    );
    let many = &json["handshake_flood_many"];
    assert!(
        count(&many["retries"]) > 0,
        "many addresses get Retries: {many}"
    );
    assert!(
        count(&many["retries_answered"]) > 0,
        "and the flood answers them: {many}"
    );

    let tokens = &json["token_flood"];
    assert_eq!(count(&tokens["connections"]), 3, "{tokens}");
    assert!(count(&tokens["opened"]) >= 64, "{tokens}");
    assert!(count(&tokens["good_tunnel"]["ok"]) > 0, "{tokens}");

    let stall = &json["stalled_targets"];
    assert_eq!(count(&stall["tunnels"]), 32, "{stall}");
    assert!(count(&stall["target_accepted"]) > 0, "{stall}");
    assert!(count(&stall["app_written_bytes"]) > 0, "{stall}");
    assert!(count(&stall["new_client_tunnels"]["ok"]) > 0, "{stall}");

    let rest = &json["stalled_rest"];
    assert_eq!(
        count(&rest["stalled"]) + count(&rest["connect_failures"]),
        300,
        "{rest}"
    );
    assert!(count(&rest["healthz"]["tries"]) > 0, "{rest}");

    let targets = json["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 10, "{targets:?}");
    for target in targets {
        assert!(target["met"].is_boolean(), "{target}");
        assert!(target["measured"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert!(json["loadavg_before"].is_string());
}

#[test]
#[ignore = "builds the endpoints and runs the UDP suite's loopback part quickly, under a minute; scripts/test.sh runs it"]
fn quick_udp_run_reports_round_trips_and_flows() {
    // The link part needs root and namespaces: left out, as the link suite has no smoke test.
    let (json, stdout) = quick_run(&["--suite", "udp", "--no-link"]);
    let loopback = &json["loopback"];
    for path in ["direct", "tunnel", "bare_quinn"] {
        let rtt = &loopback["round_trip"][path];
        assert_eq!(rtt["sent"].as_u64(), Some(200), "{path}: {rtt}\n{stdout}");
        assert!(
            rtt["lost"].as_u64().unwrap_or(u64::MAX) < 20,
            "{path}: {rtt}"
        );
        let (p50, p99) = (rtt["p50_ms"].as_f64(), rtt["p99_ms"].as_f64());
        assert!(p50.is_some_and(|p| p > 0.0) && p99 >= p50, "{path}: {rtt}");
    }
    let flows = loopback["flows"].as_array().expect("flows");
    assert_eq!(flows.len(), 4, "two sizes, two paths: {flows:?}");
    for flow in flows {
        let path = flow["path"].as_str().unwrap_or("?");
        assert!(
            flow["datagrams_per_s"].as_f64().unwrap_or(0.0) > 0.0,
            "{flow}"
        );
        let loss = flow["loss"].as_f64().unwrap_or(f64::NAN);
        assert!((0.0..1.0).contains(&loss), "{flow}");
        let cpu = flow["cpu_s_per_million"].as_f64();
        match path {
            "direct" => assert!(cpu.is_none(), "{flow}"),
            _ => assert!(cpu.is_some_and(|c| c > 0.0 && c.is_finite()), "{flow}"),
        }
    }
    assert!(json["link"].is_null(), "--no-link: {}", json["link"]);
    let targets = json["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 1, "{targets:?}");
    assert!(targets[0]["met"].is_boolean());
    assert!(json["loadavg_before"].is_string());
}

#[test]
#[ignore = "builds the endpoints and runs the interactive suite quickly (root: the emulated link), under a minute; scripts/test.sh runs it"]
fn quick_interactive_run_reports_every_case_and_share() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "note: quick_interactive_run_reports_every_case_and_share skipped: the emulated \
             link needs root (network namespaces, TUN devices)"
        );
        return;
    }
    let (json, stdout) = quick_run(&["--suite", "interactive"]);
    let cases = json["cases"].as_array().expect("cases");
    let names: Vec<&str> = cases.iter().filter_map(|c| c["case"].as_str()).collect();
    assert_eq!(
        names,
        [
            "tunnel alone",
            "tunnel beside bulk",
            "direct alone",
            "direct beside bulk"
        ],
        "--quick: the four cases at 0 % loss\n{stdout}"
    );
    for case in cases {
        let sent = case["sent"].as_u64().unwrap_or(0);
        assert!(sent >= 100, "3 s of a message every 20 ms: {case}");
        assert_eq!(case["received"].as_u64(), Some(sent), "{case}");
        let p50 = case["p50_ms"].as_f64().unwrap_or(0.0);
        let p99 = case["p99_ms"].as_f64().unwrap_or(0.0);
        assert!(p50 >= 19.0 && p99 >= p50, "a 20 ms link: {case}");
        let bulk = &case["bulk"];
        match case["bulk_beside"].as_bool() {
            Some(true) => {
                assert!(bulk["mbit_s"].as_f64().unwrap_or(0.0) > 1.0, "{case}");
                assert!(bulk["link_a_to_b"]["offered"].as_u64().unwrap_or(0) > 0);
                assert!(bulk["probe"]["samples"].as_u64().unwrap_or(0) > 0);
            }
            _ => assert!(bulk.is_null(), "{case}"),
        }
    }
    let sharing = json["sharing"].as_array().expect("sharing");
    let competitors: Vec<&str> = sharing
        .iter()
        .filter_map(|s| s["competitor"].as_str())
        .collect();
    assert_eq!(competitors, ["tcp-bbr", "tcp-cubic"], "{stdout}");
    for share in sharing {
        for key in ["ours_mbps", "theirs_mbps"] {
            assert!(share[key].as_f64().unwrap_or(0.0) > 0.0, "{key}: {share}");
        }
    }
    let targets = json["targets"].as_array().expect("targets");
    assert_eq!(
        targets.len(),
        3,
        "one echo target (0 % only) and two shares"
    );
    for target in targets {
        assert!(target["met"].is_boolean(), "{target}");
        assert!(target["measured"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert!(json["loadavg_before"].is_string());
}

#[test]
#[ignore = "builds the endpoints and runs the many-clients suite quickly (5 clients), under a minute; scripts/test.sh runs it"]
fn quick_clients_run_reports_both_server_settings() {
    let (json, stdout) = quick_run(&["--suite", "clients"]);
    assert_eq!(json["clients"].as_u64(), Some(5), "{stdout}");
    let runs = json["runs"].as_array().expect("runs");
    let threads: Vec<u64> = runs.iter().filter_map(|r| r["threads"].as_u64()).collect();
    assert_eq!(threads, [1, 2], "{stdout}");
    for run in runs {
        for (phase, clients) in [("together", 5), ("alone", 1)] {
            let p = &run[phase];
            assert_eq!(p["clients"].as_u64(), Some(clients), "{phase}: {p}");
            for key in [
                "gbps",
                "server_cpu_s_per_gib",
                "clients_cpu_s_per_gib",
                "machine_busy_share",
            ] {
                let value = p[key].as_f64().unwrap_or(f64::NAN);
                assert!(value > 0.0 && value.is_finite(), "{phase}: {key} = {value}");
            }
            let spread = &p["per_client_gbps"];
            let [min, median, max] =
                ["min", "median", "max"].map(|k| spread[k].as_f64().unwrap_or(f64::NAN));
            assert!(
                0.0 < min && min <= median && median <= max,
                "{phase}: {spread}"
            );
            assert!(p["limit"].as_str().is_some_and(|l| !l.is_empty()), "{p}");
            assert!(p["udp"]["in_datagrams"].as_u64().unwrap_or(0) > 0, "{p}");
            let sizes = p["max_udp_payloads"].as_array().expect("max_udp_payloads");
            assert_eq!(sizes.len() as u64, clients, "{p}");
            assert!(sizes.iter().all(|s| s.as_u64() >= Some(1200)), "{p}");
        }
    }
    assert!(json["loadavg_before"].is_string());
}

#[test]
#[ignore = "needs root and `ip` (network namespaces, a veth pair); builds the endpoints and moves 256 MiB each way per path and MTU, minutes in debug; scripts/test.sh runs it"]
fn quick_veth_run_reports_both_mtus() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: the veth suite needs root (network namespaces and a veth pair)");
        return;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        println!("skipped: the veth suite needs the ip command (package iproute2)");
        return;
    }
    let (json, stdout) = quick_run(&["--suite", "veth"]);
    assert_eq!(json["rounds"].as_u64(), Some(1), "{stdout}");
    let mtus = json["mtus"].as_array().expect("mtus");
    let listed: Vec<u64> = mtus.iter().filter_map(|m| m["mtu"].as_u64()).collect();
    assert_eq!(listed, [1500, 9000], "{stdout}");
    for mtu in mtus {
        let names: Vec<&str> = mtu["paths"]
            .as_array()
            .expect("paths")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(names, ["direct TCP", "tunnel", "bare quinn"], "{mtu}");
        for path in mtu["paths"].as_array().expect("paths") {
            for way in ["up", "down"] {
                let gbps = path[way]["gbps"].as_f64().unwrap_or(f64::NAN);
                assert!(gbps > 0.0 && gbps.is_finite(), "{path}");
                let cpu = &path[way]["cpu_s_per_gib"];
                match path["name"].as_str() {
                    Some("direct TCP") => assert!(cpu.is_null(), "{path}"),
                    _ => assert!(cpu.as_f64().is_some_and(|c| c > 0.0), "{path}"),
                }
            }
        }
        for way in ["up", "down"] {
            let ratio = mtu["tunnel_of_quinn"][way]["cpu_s_per_gib"].as_f64();
            assert!(ratio.is_some_and(|r| r > 0.0 && r.is_finite()), "{mtu}");
        }
        let payloads = mtu["max_udp_payload"].as_array().expect("max_udp_payload");
        assert_eq!(payloads.len(), 1, "{mtu}");
        let expected = mtu["mtu"].as_u64().unwrap_or(0) - 28;
        assert_eq!(mtu["expected_max_udp_payload"].as_u64(), Some(expected));
        if expected == 1472 {
            for side in ["client", "server"] {
                assert_eq!(payloads[0][side].as_u64(), Some(1472), "{mtu}");
            }
        }
    }
    assert!(json["loadavg_before"].is_string());
}
