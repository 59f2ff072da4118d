//! The dashboard page in a real headless Chromium, driven through chromedriver (WebDriver):
//! a live tunnel's row appears and its byte counts grow while data flows.
//!
//! Needs Debian's `chromium` and `chromium-driver` (or `$QUICTUN_CHROMIUM` and
//! `$QUICTUN_CHROMEDRIVER`); `scripts/test.sh` installs them. Without them the test fails
//! saying what to install, unless `QUICTUN_SKIP_BROWSER=1` asks to skip it (loudly).

mod common;
mod webdriver;

use std::time::{Duration, Instant};

use common::*;
use quictun::api::{self, ApiState};
use quictun::tunnel::Side;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use webdriver::{Browser, Failure};

/// How long the page has to show the row and then a larger count: it refreshes every second.
const PAGE_WAIT: Duration = Duration::from_secs(30);

/// The tunnel's row as the page shows it now: its client byte count and its text.
fn tunnel_row(browser: &Browser, uuid: &str) -> Result<(u64, String), Failure> {
    let row = browser.find(&format!("#tunnels tr[data-uuid=\"{uuid}\"]"))?;
    let bytes = browser.attribute(&row, "data-client-bytes")?;
    let text = browser.text(&row)?;
    let bytes = bytes
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("no data-client-bytes on the row of {uuid}: {text}"));
    Ok((bytes, text))
}

/// Polls the page until `accept` takes the tunnel's row. The page rebuilds its rows on every
/// refresh, so an element may go stale between two commands: it is looked up again.
fn wait_for_row(browser: &Browser, uuid: &str, accept: impl Fn(u64) -> bool) -> (u64, String) {
    let deadline = Instant::now() + PAGE_WAIT;
    let mut last = None;
    while Instant::now() < deadline {
        match tunnel_row(browser, uuid) {
            Ok((bytes, text)) if accept(bytes) => return (bytes, text),
            Ok(row) => last = Some(Ok(row)),
            Err(failure) => last = Some(Err(failure)),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "the page did not show the expected row of tunnel {uuid} within {PAGE_WAIT:?} \
         (last: {last:?}): {}",
        browser.page_source()
    );
}

/// The connections table's RTT cell, once the page has filled it.
fn connection_rtt(browser: &Browser) -> String {
    let deadline = Instant::now() + PAGE_WAIT;
    while Instant::now() < deadline {
        if let Ok(text) = browser
            .find("#connections td.rtt")
            .and_then(|cell| browser.text(&cell))
        {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no connection RTT shown: {}", browser.page_source());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_tunnel_shows_on_the_dashboard_with_growing_counts() {
    let test = "the dashboard browser test";
    let Some((chromium, driver)) = webdriver::find_browser(test) else {
        return;
    };
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
    let (first, second, text, rtt) = tokio::task::spawn_blocking(move || {
        let browser = Browser::start(&chromium, &driver, &profile.0);
        browser.navigate(&url);
        let (first, text) = wait_for_row(&browser, &uuid, |bytes| bytes > 0);
        let (second, _) = wait_for_row(&browser, &uuid, |bytes| bytes > first);
        let rtt = connection_rtt(&browser);
        (first, second, text, rtt)
    })
    .await
    .unwrap();
    pump.abort();
    drain.abort();
    assert!(second > first, "bytes did not grow: {first} then {second}");
    assert!(
        text.contains("127.0.0.1:"),
        "no addresses in the row: {text}"
    );
    assert!(rtt.ends_with(" ms"), "no connection RTT shown: {rtt:?}");
}
