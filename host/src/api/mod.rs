//! The REST API of one endpoint (SPEC §8): the live tunnels with the original's field names,
//! closing a tunnel, the QUIC connections, Prometheus metrics, a health check, and at `/` a
//! live dashboard page built on those (`api/dashboard.html`, embedded in the binary).
//!
//! Everything is read from the registries when asked. The only state of the API's own is the
//! send rates, sampled from the tunnels' byte counters by a background task ([`Rates`]), so
//! the data path pays nothing for the API.
//!
//! The API has no authentication: it is meant for loopback. Every request must name a
//! loopback host or an allowed one (`guard.rs`, against DNS rebinding), and connections are
//! bounded in number and in the time their headers may take (`http.rs`).

mod guard;
mod http;
mod metrics;
mod rates;

pub use guard::{AllowedHost, AllowedHostError};
pub use http::{HEADER_READ_TIMEOUT, MAX_CONNECTIONS};
pub use rates::{Rate, Rates};

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tracing::{Instrument, info};
use uuid::Uuid;

use crate::quic::SetupError;
use crate::quic::connections::{ConnectionInfo, ConnectionRegistry};
use crate::tunnel::{Side, Transport, Tunnel, TunnelRegistry};
use crate::wire::addr::HostPort;

/// How often the send rates are sampled: they are rates over the last second.
pub const RATE_INTERVAL: Duration = Duration::from_secs(1);
/// Largest request body accepted. No route reads one; this bounds any that ever does.
const BODY_LIMIT: usize = 4 * 1024;
/// How long DELETE waits for the tunnel to end, so a listing right after it no longer shows it.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// What the API serves and how: one endpoint's registries and its send rates, and the
/// options of its listener.
#[derive(Clone)]
pub struct ApiState {
    pub side: Side,
    pub tunnels: Arc<TunnelRegistry>,
    pub connections: Arc<ConnectionRegistry>,
    pub rates: Arc<Rates>,
    pub options: ApiOptions,
    /// The server's `--server-id`, a label of every metric when given (SPEC §12).
    pub server_id: Option<u8>,
}

/// Who may reach the API and how its connections are bounded.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// Hosts besides loopback that requests may name in `Host` (`--httpd-allowed-host`).
    pub allowed_hosts: Arc<[AllowedHost]>,
    /// How long a client has to send a request's headers before its connection is closed.
    pub header_read_timeout: Duration,
    /// Connections served at once; a further one is closed at once.
    pub max_connections: usize,
}

impl Default for ApiOptions {
    /// Loopback only, [`HEADER_READ_TIMEOUT`], [`MAX_CONNECTIONS`]: what the binaries use.
    fn default() -> Self {
        ApiOptions {
            allowed_hosts: Arc::new([]),
            header_read_timeout: HEADER_READ_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

impl ApiState {
    /// The API state of one endpoint, its rates sampled every second. Starts the sampler, so
    /// it must be called inside a tokio runtime.
    pub fn new(
        side: Side,
        tunnels: Arc<TunnelRegistry>,
        connections: Arc<ConnectionRegistry>,
    ) -> ApiState {
        ApiState::with_rate_interval(side, tunnels, connections, RATE_INTERVAL)
    }

    /// As [`new`](Self::new), sampling every `interval` (tests use a short one).
    pub fn with_rate_interval(
        side: Side,
        tunnels: Arc<TunnelRegistry>,
        connections: Arc<ConnectionRegistry>,
        interval: Duration,
    ) -> ApiState {
        let rates = Rates::start(tunnels.clone(), interval);
        ApiState {
            side,
            tunnels,
            connections,
            rates,
            options: ApiOptions::default(),
            server_id: None,
        }
    }

    /// Labels every metric with the server's `--server-id`, when it has one.
    pub fn with_server_id(mut self, server_id: Option<u8>) -> ApiState {
        self.server_id = server_id;
        self
    }

    /// Answers requests naming `hosts` too, besides loopback.
    pub fn allowing_hosts(mut self, hosts: Vec<AllowedHost>) -> ApiState {
        self.options.allowed_hosts = hosts.into();
        self
    }
}

/// The value of `--httpd-listen-on`: `HOST:PORT`, or `""` for no REST API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiListen(pub Option<HostPort>);

impl FromStr for ApiListen {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if value.is_empty() {
            return Ok(ApiListen(None));
        }
        value
            .parse()
            .map(|addr| ApiListen(Some(addr)))
            .map_err(|reason| format!("{reason} (expected HOST:PORT, or \"\" for no REST API)"))
    }
}

/// Binds the REST API's TCP port and serves it in the background. A port that cannot be
/// bound is an error, for the binary to report at start-up. Returns the bound address.
pub async fn start(listen: &HostPort, state: ApiState) -> Result<SocketAddr, SetupError> {
    let cannot = |source| SetupError::Listen {
        what: format!("tcp {listen} for the REST API"),
        error: source,
    };
    let listener = TcpListener::bind(listen.to_string())
        .await
        .map_err(cannot)?;
    let local = listener.local_addr().map_err(cannot)?;
    info!(listen = %local, "REST API ready");
    for host in state.options.allowed_hosts.iter() {
        info!(%host, "REST API also answers requests for this host (--httpd-allowed-host)");
    }
    // In the caller's span: a server's API logs carry its server_id too.
    tokio::spawn(serve(listener, state).in_current_span());
    Ok(local)
}

/// Serves the API on a bound listener until the task is dropped.
pub async fn serve(listener: TcpListener, state: ApiState) {
    let options = state.options.clone();
    match http::serve(listener, router(state), &options).await {}
}

/// The API's routes, with JSON answers for unknown paths and wrong methods, behind the check
/// of the request's `Host`.
pub fn router(state: ApiState) -> Router {
    let allowed_hosts = state.options.allowed_hosts.clone();
    Router::new()
        .route("/", get(dashboard))
        .route("/tunnels", get(list_tunnels))
        .route("/tunnels/{uuid}", get(get_tunnel).delete(close_tunnel))
        .route("/connections", get(list_connections))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        // After the routes: it applies to the routes already added.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        // Added last, so it runs first: every route and both fallbacks are behind it.
        .layer(middleware::from_fn_with_state(
            allowed_hosts,
            guard::check_host,
        ))
        .with_state(state)
}

/// One tunnel as the original listed it (field names and order kept), plus numeric rates.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TunnelView {
    uuid: String,
    stream_id: u64,
    endpoint: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_app_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_app_addr: Option<String>,
    remote_endpoint_addr: String,
    created_at: String,
    server_total_bytes: u64,
    client_total_bytes: u64,
    server_send_rate: String,
    client_send_rate: String,
    protocol: String,
    protocol_properties: Option<serde_json::Value>,
    server_send_bytes_per_second: u64,
    client_send_bytes_per_second: u64,
    /// The application side: `tcp`, `udp` or `unix`.
    transport: &'static str,
    /// The client's service the tunnel came in on (client side only).
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<String>,
    /// UDP flows only: datagrams sent by the client application.
    #[serde(skip_serializing_if = "Option::is_none")]
    client_datagrams: Option<u64>,
    /// UDP flows only: datagrams sent by the server application.
    #[serde(skip_serializing_if = "Option::is_none")]
    server_datagrams: Option<u64>,
    /// UDP flows only: datagrams dropped (a full queue, a send that failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    dropped_datagrams: Option<u64>,
}

/// One QUIC connection.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ConnectionView {
    id: u64,
    remote_endpoint_addr: String,
    created_at: String,
    rtt_ms: f64,
    /// The largest UDP payload the connection's packets carry now (path MTU discovery).
    max_udp_payload: u16,
    congestion_window: u64,
    sent_packets: u64,
    lost_packets: u64,
    lost_bytes: u64,
    congestion_events: u64,
    open_tunnels: usize,
    /// The receive window the server gave this connection (its share of `--max-buffered`).
    #[serde(skip_serializing_if = "Option::is_none")]
    receive_window: Option<u64>,
    /// How often the connection's path changed (the peer's address, or the client's own
    /// socket), and when it last did (RFC 3339, absent before the first change).
    path_changes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_path_change: Option<String>,
}

/// An error answer: a status and `{"message": ...}`.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, message(&self.1)).into_response()
    }
}

fn message(text: &str) -> Json<serde_json::Value> {
    Json(json!({ "message": text }))
}

async fn list_tunnels(State(state): State<ApiState>) -> Json<Vec<TunnelView>> {
    Json(
        state
            .tunnels
            .list()
            .iter()
            .map(|t| view(&state, t))
            .collect(),
    )
}

async fn get_tunnel(
    State(state): State<ApiState>,
    uuid: Result<Path<String>, PathRejection>,
) -> Result<Json<TunnelView>, ApiError> {
    let tunnel = find(&state, uuid)?;
    Ok(Json(view(&state, &tunnel)))
}

/// Closes a tunnel: its relay resets both sides (QUIC code 4, "closed by the operator").
async fn close_tunnel(
    State(state): State<ApiState>,
    uuid: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let tunnel = find(&state, uuid)?;
    info!(uuid = %tunnel.uuid, stream_id = tunnel.stream_id, "closing tunnel on request");
    tunnel.close();
    if ended_within(&state.tunnels, tunnel.uuid, CLOSE_WAIT).await {
        return Ok((StatusCode::OK, message("tunnel closed")).into_response());
    }
    Ok((StatusCode::ACCEPTED, message("tunnel closing")).into_response())
}

/// Waits, up to `limit`, until the tunnel has left the registry.
async fn ended_within(tunnels: &TunnelRegistry, uuid: Uuid, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tunnels.get(&uuid).is_some() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

async fn list_connections(State(state): State<ApiState>) -> Json<Vec<ConnectionView>> {
    let tunnels = state.tunnels.list();
    let views = state.connections.list().into_iter().map(|c| {
        let open_tunnels = tunnels
            .iter()
            .filter(|t| t.connection == c.stable_id)
            .count();
        connection_view(c, open_tunnels)
    });
    Json(views.collect())
}

async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    let text = metrics::render(&state);
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text)
}

/// The live dashboard: one self-contained page that polls `/tunnels` and `/connections`.
async fn dashboard() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such resource".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this resource".into(),
    )
}

/// The live tunnel a path names; a path that is not a UUID names none.
fn find(
    state: &ApiState,
    uuid: Result<Path<String>, PathRejection>,
) -> Result<Arc<Tunnel>, ApiError> {
    let not_found = |text: String| ApiError(StatusCode::NOT_FOUND, text);
    let Ok(Path(text)) = uuid else {
        return Err(not_found("not a tunnel uuid".into()));
    };
    let uuid = Uuid::try_parse(&text).map_err(|_| not_found("not a tunnel uuid".into()))?;
    state
        .tunnels
        .get(&uuid)
        .ok_or_else(|| not_found(format!("no tunnel {uuid}")))
}

fn view(state: &ApiState, tunnel: &Tunnel) -> TunnelView {
    let rate = state.rates.of(&tunnel.uuid);
    let protocol = tunnel.protocol();
    let traffic = tunnel.counters.snapshot();
    let udp = |count: u64| (tunnel.transport == Transport::Udp).then_some(count);
    TunnelView {
        uuid: tunnel.uuid.to_string(),
        stream_id: tunnel.stream_id,
        endpoint: side_name(state.side),
        client_app_addr: tunnel.client_app.clone(),
        server_app_addr: tunnel.server_app.as_deref().map(app_addr),
        remote_endpoint_addr: tunnel.remote_endpoint.to_string(),
        created_at: rfc3339(tunnel.created_at),
        server_total_bytes: tunnel.server_to_client(),
        client_total_bytes: tunnel.client_to_server(),
        server_send_rate: kib_per_second(rate.server_to_client),
        client_send_rate: kib_per_second(rate.client_to_server),
        protocol: protocol
            .as_ref()
            .map(|p| p.name.clone())
            .unwrap_or_default(),
        protocol_properties: protocol.and_then(|p| p.properties),
        server_send_bytes_per_second: rate.server_to_client.round() as u64,
        client_send_bytes_per_second: rate.client_to_server.round() as u64,
        transport: tunnel.transport.label(),
        service: tunnel.service.as_deref().map(str::to_owned),
        client_datagrams: udp(traffic.client_datagrams),
        server_datagrams: udp(traffic.server_datagrams),
        dropped_datagrams: udp(traffic.dropped_datagrams),
    }
}

fn connection_view(c: ConnectionInfo, open_tunnels: usize) -> ConnectionView {
    ConnectionView {
        id: c.id as u64,
        remote_endpoint_addr: c.remote.to_string(),
        created_at: rfc3339(c.created_at),
        rtt_ms: c.rtt.as_secs_f64() * 1000.0,
        max_udp_payload: c.max_udp_payload,
        congestion_window: c.congestion_window,
        sent_packets: c.sent_packets,
        lost_packets: c.lost_packets,
        lost_bytes: c.lost_bytes,
        congestion_events: c.congestion_events,
        open_tunnels,
        receive_window: c.receive_window,
        path_changes: c.path_changes,
        last_path_change: c.last_path_change.map(rfc3339),
    }
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Client => "client",
        Side::Server => "server",
    }
}

/// A TCP application address as the original printed it, `IP:PORT`; a UNIX one keeps its
/// `unix:` so it reads as a path.
fn app_addr(address: &str) -> String {
    address.strip_prefix("tcp:").unwrap_or(address).to_owned()
}

/// As the original: two decimals, kB = 1024 bytes.
fn kib_per_second(bytes_per_second: f64) -> String {
    format!("{:.2} kB/s", bytes_per_second / 1024.0)
}

fn rfc3339(at: SystemTime) -> String {
    use time::format_description::well_known::Rfc3339;
    // Fails only for years past 9999.
    time::OffsetDateTime::from(at)
        .format(&Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_as_the_original_printed_them() {
        assert_eq!(kib_per_second(0.0), "0.00 kB/s");
        assert_eq!(kib_per_second(12636.16), "12.34 kB/s");
        assert_eq!(kib_per_second(1024.0 * 1024.0), "1024.00 kB/s");
    }

    #[test]
    fn app_addresses_drop_the_tcp_scheme_only() {
        assert_eq!(app_addr("tcp:127.0.0.1:22"), "127.0.0.1:22");
        assert_eq!(app_addr("tcp:[::1]:22"), "[::1]:22");
        assert_eq!(app_addr("unix:/run/app.sock"), "unix:/run/app.sock");
        assert_eq!(app_addr("10.0.0.1:5000"), "10.0.0.1:5000");
    }

    #[test]
    fn times_are_rfc3339_in_utc() {
        let at = SystemTime::UNIX_EPOCH + Duration::new(1_655_783_045, 74_778_434);
        assert_eq!(rfc3339(at), "2022-06-21T03:44:05.074778434Z");
    }

    #[tokio::test]
    async fn the_dashboard_is_at_the_root_and_other_paths_stay_json() {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let state = ApiState::new(Side::Server, Arc::default(), Arc::default());
        let get = |uri: &str, method: &str| {
            axum::http::Request::builder()
                .method(method)
                .uri(uri)
                .header(header::HOST, "localhost")
                .body(axum::body::Body::empty())
                .unwrap()
        };
        let response = router(state.clone())
            .oneshot(get("/", "GET"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let kind = response.headers()[header::CONTENT_TYPE].to_str().unwrap();
        assert!(kind.starts_with("text/html"), "{kind}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let page = std::str::from_utf8(&body).unwrap();
        for needed in ["fetch", "/tunnels", "/connections", "setInterval"] {
            assert!(page.contains(needed), "{needed}");
        }
        // Nothing from elsewhere: no build step, no CDN.
        assert!(!page.contains("http://") && !page.contains("https://"));
        for (uri, method, status) in [
            ("/", "POST", StatusCode::METHOD_NOT_ALLOWED),
            ("/index.html", "GET", StatusCode::NOT_FOUND),
        ] {
            let response = router(state.clone())
                .oneshot(get(uri, method))
                .await
                .unwrap();
            assert_eq!(response.status(), status, "{method} {uri}");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert!(json["message"].is_string(), "{json}");
        }
    }

    #[test]
    fn the_listen_flag_takes_host_port_or_nothing() {
        assert_eq!("".parse::<ApiListen>(), Ok(ApiListen(None)));
        let listen: ApiListen = "127.0.0.1:8086".parse().unwrap();
        assert_eq!(
            listen.0.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:8086")
        );
        let error = "8086".parse::<ApiListen>().unwrap_err();
        assert!(error.contains("expected HOST:PORT"), "{error}");
    }
}
