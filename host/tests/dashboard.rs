//! The dashboard page in a real headless Chromium, driven through chromedriver (WebDriver):
//! a live tunnel's row appears and its byte counts grow while data flows.
//!
//! Needs Debian's `chromium` and `chromium-driver` (or `$QUICTUN_CHROMIUM` and
//! `$QUICTUN_CHROMEDRIVER`), so it is ignored by a plain `cargo test`: `scripts/test.sh`
//! installs them and runs it. Without them the test fails saying what to install.

mod common;
mod webdriver;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use quictun::api::{self, ApiState};
use quictun::tunnel::Side;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use webdriver::{Browser, Failure};

/// How long the page has to show the row and then a larger count: it refreshes every second.
const PAGE_WAIT: Duration = Duration::from_secs(30);

/// The browser, shared with the blocking threads its WebDriver calls run on.
type Shared = Arc<Mutex<Browser>>;

/// Runs one WebDriver call (blocking HTTP) on the blocking pool.
async fn on_browser<T: Send + 'static>(
    browser: &Shared,
    call: impl FnOnce(&Browser) -> T + Send + 'static,
) -> T {
    let browser = browser.clone();
    tokio::task::spawn_blocking(move || call(&browser.lock().unwrap()))
        .await
        .unwrap()
}

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

/// Waits until the page shows a row of the tunnel that `accept` takes. The page rebuilds its
/// rows on every refresh, so an element may go stale between two commands: it is looked up
/// again.
async fn row_where(browser: &Shared, uuid: &str, accept: impl Fn(u64) -> bool) -> (u64, String) {
    let last = Mutex::new(None);
    let found = wait_until(PAGE_WAIT, || async {
        let uuid = uuid.to_owned();
        let row = on_browser(browser, move |b| tunnel_row(b, &uuid)).await;
        let accepted = matches!(&row, Ok((bytes, _)) if accept(*bytes));
        let shown = accepted.then(|| row.as_ref().ok().cloned()).flatten();
        *last.lock().unwrap() = Some(row);
        shown
    })
    .await;
    let Ok(row) = found else {
        let page = on_browser(browser, Browser::page_source).await;
        let last = last.into_inner().unwrap();
        panic!(
            "the page did not show the expected row of tunnel {uuid} within {PAGE_WAIT:?} \
             (last: {last:?}): {page}"
        );
    };
    row
}

/// The connections table's RTT cell, once the page has filled it.
async fn connection_rtt(browser: &Shared) -> String {
    let cell = wait_until(PAGE_WAIT, || async {
        on_browser(browser, |b| {
            b.find("#connections td.rtt").and_then(|cell| b.text(&cell))
        })
        .await
        .ok()
    })
    .await;
    let Ok(text) = cell else {
        let page = on_browser(browser, Browser::page_source).await;
        panic!("no connection RTT shown: {page}");
    };
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium and chromedriver; scripts/test.sh installs them and runs it"]
async fn a_live_tunnel_shows_on_the_dashboard_with_growing_counts() {
    let (chromium, driver) = webdriver::find_browser();
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
    let uuid = wait_until(Duration::from_secs(10), || async {
        let tunnels = client.registry.list();
        tunnels.first().map(|tunnel| tunnel.uuid.to_string())
    })
    .await
    .expect("the tunnel listed on the client");

    let url = format!("http://{api_addr}/");
    // Outlives the browser: declared first, dropped last.
    let profile = TempDir::new("chromium");
    let profile_dir = profile.0.clone();
    let browser = tokio::task::spawn_blocking(move || {
        let browser = Browser::start(&chromium, &driver, &profile_dir);
        browser.navigate(&url);
        Arc::new(Mutex::new(browser))
    })
    .await
    .unwrap();
    let (first, text) = row_where(&browser, &uuid, |bytes| bytes > 0).await;
    let (second, _) = row_where(&browser, &uuid, |bytes| bytes > first).await;
    let rtt = connection_rtt(&browser).await;
    pump.abort();
    drain.abort();
    assert!(second > first, "bytes did not grow: {first} then {second}");
    assert!(
        text.contains("127.0.0.1:"),
        "no addresses in the row: {text}"
    );
    assert!(rtt.ends_with(" ms"), "no connection RTT shown: {rtt:?}");
}
