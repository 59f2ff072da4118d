//! The dashboard page in a real headless Chromium, driven through chromedriver (WebDriver):
//! a live tunnel's row appears, its byte counts grow and its chart fills while data flows,
//! and its close button (after the confirmation) resets the application connection and
//! removes the row.
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
use quictun::wire::addr::Address;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
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

/// The tunnel's throughput chart as drawn now: the samples it says it holds, their peak in
/// bytes per second, and the points of its client → server line.
fn tunnel_chart(browser: &Browser, uuid: &str) -> Result<(usize, f64, usize), Failure> {
    let row = format!("#tunnels tr[data-uuid=\"{uuid}\"]");
    let svg = browser.find(&format!("{row} svg.chart"))?;
    let number = |name: &str| -> Result<f64, Failure> {
        let value = browser.attribute(&svg, name)?;
        Ok(value.and_then(|v| v.parse().ok()).unwrap_or(-1.0))
    };
    let (samples, peak) = (number("data-samples")?, number("data-peak")?);
    let line = browser.find(&format!("{row} svg.chart polyline.c2s"))?;
    let points = browser.attribute(&line, "points")?.unwrap_or_default();
    Ok((samples as usize, peak, points.split_whitespace().count()))
}

/// Waits until the tunnel's chart has drawn at least three samples, with data in them.
async fn charted(browser: &Shared, uuid: &str) -> (usize, f64, usize) {
    let last = Mutex::new(None);
    let found = wait_until(PAGE_WAIT, || async {
        let uuid = uuid.to_owned();
        let chart = on_browser(browser, move |b| tunnel_chart(b, &uuid)).await;
        let drawn = matches!(chart, Ok((samples, peak, points)) if samples >= 3 && peak > 0.0 && points >= 3);
        let shown = drawn.then(|| chart.as_ref().ok().copied()).flatten();
        *last.lock().unwrap() = Some(chart);
        shown
    })
    .await;
    let Ok(chart) = found else {
        let page = on_browser(browser, Browser::page_source).await;
        let last = last.into_inner().unwrap();
        panic!("no chart with data for tunnel {uuid} (last: {last:?}): {page}");
    };
    chart
}

/// Clicks the tunnel's close button and accepts the confirmation it opens; the dialog's text.
/// The button is rebuilt with its row every second, so a click on a stale one is retried.
async fn close_from_page(browser: &Shared, uuid: &str) -> String {
    let css = format!("#tunnels tr[data-uuid=\"{uuid}\"] button.close");
    let clicked = wait_until(PAGE_WAIT, || async {
        let css = css.clone();
        on_browser(browser, move |b| {
            b.find(&css).and_then(|button| b.click(&button))
        })
        .await
        .ok()
    })
    .await;
    assert!(clicked.is_ok(), "could not click {css}");
    on_browser(browser, |b| {
        let text = b
            .alert_text()
            .unwrap_or_else(|f| panic!("no confirmation: {f:?}"));
        b.accept_alert()
            .unwrap_or_else(|f| panic!("cannot accept: {f:?}"));
        text
    })
    .await
}

/// Waits until the page shows no row of the tunnel; then the status line.
async fn row_gone(browser: &Shared, uuid: &str) -> String {
    let css = format!("#tunnels tr[data-uuid=\"{uuid}\"]");
    let gone = wait_until(PAGE_WAIT, || async {
        let css = css.clone();
        on_browser(browser, move |b| match b.find(&css) {
            Err(f) if f.error == "no such element" => {
                b.find("#status").and_then(|s| b.text(&s)).ok()
            }
            _ => None,
        })
        .await
    })
    .await;
    let Ok(status) = gone else {
        let page = on_browser(browser, Browser::page_source).await;
        panic!("the row of tunnel {uuid} is still shown: {page}");
    };
    status
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

/// An application connection through the tunnel that keeps moving data (the echo sends it
/// back) until it ends: the task writing, and the task reading, which ends with how the
/// connection ended (`Ok` on EOF, the error on a reset).
async fn busy_tunnel(client: &Address) -> (JoinHandle<()>, JoinHandle<std::io::Result<()>>) {
    let (mut reader, mut writer) = connect_tcp(client).await.into_split();
    let pump = tokio::spawn(async move {
        let chunk = pattern(64 * 1024, 3);
        while writer.write_all(&chunk).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let drain = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while reader.read(&mut buf).await? > 0 {}
        Ok(())
    });
    (pump, drain)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium and chromedriver; scripts/test.sh installs them and runs it"]
async fn a_live_tunnel_shows_on_the_dashboard_charted_and_closes_from_it() {
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

    let (pump, drain) = busy_tunnel(&client.addr).await;
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
    let (samples, peak, points) = charted(&browser, &uuid).await;
    eprintln!("chart: {samples} samples, peak {peak} B/s, {points} points");

    let question = close_from_page(&browser, &uuid).await;
    let ended = tokio::time::timeout(Duration::from_secs(5), drain).await;
    let status = row_gone(&browser, &uuid).await;
    pump.abort();
    let ended = ended
        .expect("the application connection still open 5 s after the close")
        .unwrap();
    assert_eq!(
        ended.as_ref().map_err(std::io::Error::kind).err(),
        Some(std::io::ErrorKind::ConnectionReset),
        "the application connection was not reset: {ended:?}"
    );
    assert!(
        client.registry.list().is_empty(),
        "the tunnel is still listed"
    );
    assert!(
        question.contains(&uuid),
        "the confirmation does not name the tunnel: {question:?}"
    );
    // The status line says "closed tunnel …" until the next refresh says "updated …".
    assert!(
        !status.starts_with("cannot"),
        "the page shows an error: {status}"
    );
    assert!(second > first, "bytes did not grow: {first} then {second}");
    assert!(
        text.contains("127.0.0.1:"),
        "no addresses in the row: {text}"
    );
    assert!(rtt.ends_with(" ms"), "no connection RTT shown: {rtt:?}");
}
