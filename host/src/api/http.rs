//! The API's HTTP/1.1 server: the accept loop, one task per connection, a cap on connections
//! served at once and a time limit on each request's headers.
//!
//! `axum::serve` has neither bound, so a client that opens connections and sends a few bytes
//! of headers now and then would hold a task and a buffer each, without end. Here a request
//! whose headers take longer than the time-out closes its connection (an idle keep-alive
//! connection too: its next request's headers do not arrive), and a connection over the cap
//! is closed at once.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use super::ApiOptions;

/// How long a client has to send a request's headers: what SPEC §7 asks of the API.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// API connections served at once. Far above what an operator's tools and a dashboard open
/// (one or two each), so 300 stalled clients still leave room for `/healthz`; low enough that
/// the stalled ones cost at most 1024 tasks and [`MAX_BUFFER`]s, and 1024 descriptors (the
/// packaged units allow 65 536).
pub const MAX_CONNECTIONS: usize = 1024;

/// Largest buffer of one connection, for the request's headers and for the answer in
/// flight. Roomy for a browser's headers and cookies; a larger head gets 431.
const MAX_BUFFER: usize = 64 * 1024;

/// After a failed accept (out of descriptors, typically), a pause before the next, so the
/// loop does not spin while nothing can be accepted.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Serves `router` on `listener`, bounded as `options` say, until the task is dropped.
pub(super) async fn serve(
    listener: TcpListener,
    router: Router,
    options: &ApiOptions,
) -> Infallible {
    let slots = Arc::new(Semaphore::new(options.max_connections));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                warn!("REST API cannot accept a connection: {error}");
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(
                limit = options.max_connections,
                "REST API connection closed: too many open"
            );
            continue;
        };
        let timeout = options.header_read_timeout;
        tokio::spawn(serve_connection(stream, router.clone(), timeout, slot));
    }
}

/// Serves one connection; its slot is given back when it ends.
async fn serve_connection(
    stream: TcpStream,
    router: Router,
    header_read_timeout: Duration,
    _slot: OwnedSemaphorePermit,
) {
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(MAX_BUFFER)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router))
        .await;
    if let Err(error) = served {
        debug!("REST API connection ended: {error}");
    }
}
