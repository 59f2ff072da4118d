//! The dashboard page in a real headless Chromium: a live tunnel's row appears and its byte
//! counts grow while data flows.
//!
//! Needs Debian's `chromium` (or `$QUICTUN_CHROMIUM`); `scripts/test.sh` installs it. Without
//! it the test fails saying what to install, unless `QUICTUN_SKIP_BROWSER=1` asks to skip it
//! (loudly).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use quictun::api::{self, ApiState};
use quictun::relay::Side;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("QUICTUN_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if path.is_file() {
        return Some(path);
    }
    if std::env::var("QUICTUN_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!(
            "\n*** SKIPPED: the dashboard browser test (QUICTUN_SKIP_BROWSER=1; no {}) ***\n",
            path.display()
        );
        return None;
    }
    panic!(
        "{} not found: install Chromium (apt-get install chromium, or run scripts/test.sh), \
         set QUICTUN_CHROMIUM to its path, or set QUICTUN_SKIP_BROWSER=1 to skip this test",
        path.display()
    );
}

/// The page as headless Chromium has it after running its script for `budget` of virtual
/// time (the page's own fetches are real requests to the endpoint).
fn render(browser: &Path, url: &str, profile: &Path) -> String {
    let output = std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=2500",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The `data-client-bytes` of the tunnel row with this uuid, if the page shows one.
fn client_bytes(page: &str, uuid: &str) -> Option<u64> {
    let row = &page[page.find(&format!("data-uuid=\"{uuid}\""))?..];
    let row = &row[..row.find('>')?];
    let value = &row[row.find("data-client-bytes=\"")? + "data-client-bytes=\"".len()..];
    value[..value.find('"')?].parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_tunnel_shows_on_the_dashboard_with_growing_counts() {
    let Some(browser) = chromium() else { return };
    let app = app_server_tcp(Behaviour::Echo).await;
    let server = start_server("");
    let client = start_client(local_tcp(), server.addr, &app.addr.to_string()).await;
    let state = ApiState::new(
        Side::Client,
        client.registry.clone(),
        client.connections.clone(),
    );
    let listen = "127.0.0.1:0".parse().unwrap();
    let api_addr = api::start(&listen, state).await.unwrap();

    // A tunnel that keeps moving data until the test ends.
    let conn = connect_tcp(&client.addr).await;
    let (mut reader, mut writer) = conn.into_split();
    let pump = tokio::spawn(async move {
        let chunk = pattern(64 * 1024, 3);
        loop {
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let drain = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(reader.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    let uuid = within(10, async {
        loop {
            if let Some(tunnel) = client.registry.list().first() {
                return tunnel.uuid.to_string();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    let url = format!("http://{api_addr}/");
    let profile = TempDir::new("chromium");
    let mut counts = Vec::new();
    for _ in 0..2 {
        let (browser, url, profile_dir) = (browser.clone(), url.clone(), profile.0.clone());
        let page = tokio::task::spawn_blocking(move || render(&browser, &url, &profile_dir))
            .await
            .unwrap();
        let bytes = client_bytes(&page, &uuid)
            .unwrap_or_else(|| panic!("no row for tunnel {uuid} in the page: {page}"));
        assert!(
            page.contains("tcp:127.0.0.1") || page.contains("127.0.0.1:"),
            "{page}"
        );
        assert!(page.contains(" ms</td>"), "no connection RTT shown: {page}");
        counts.push(bytes);
    }
    pump.abort();
    drain.abort();
    assert!(counts[0] > 0, "{counts:?}");
    assert!(counts[1] > counts[0], "bytes did not grow: {counts:?}");
}
