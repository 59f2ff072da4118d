//! The REST API (SPEC §8): answers of the router alone, then real endpoints on loopback with
//! real applications, checking the original's JSON fields, byte counts, rates, closing a
//! tunnel, the connections, the Prometheus metrics and SPICE properties; and the binaries'
//! `--httpd-listen-on`.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::*;
use http_body_util::BodyExt;
use quictun::api::{ApiState, router};
use quictun::client::service::Service;
use quictun::client::{Client, ClientConfig};
use quictun::plugins::TokenSource;
use quictun::quic::connections::ConnectionRegistry;
use quictun::tls::Verification;
use quictun::tunnel::Side;
use quictun::tunnel::TunnelRegistry;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tower::ServiceExt;

/// Rates sampled this often in tests, so a test waits tenths of a second, not seconds.
const SAMPLING: Duration = Duration::from_millis(100);

// ---- calling the API -------------------------------------------------------------------------

fn api(
    side: Side,
    tunnels: &Arc<TunnelRegistry>,
    connections: &Arc<ConnectionRegistry>,
) -> ApiState {
    ApiState::with_rate_interval(side, tunnels.clone(), connections.clone(), SAMPLING)
}

fn server_api(server: &TestServer) -> ApiState {
    api(Side::Server, &server.registry, &server.connections)
}

fn client_api(client: &TestClient) -> ApiState {
    api(Side::Client, &client.registry, &client.connections)
}

fn empty_api() -> ApiState {
    api(Side::Server, &Arc::default(), &Arc::default())
}

struct Answer {
    status: StatusCode,
    content_type: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        assert!(
            self.content_type.starts_with("application/json"),
            "content type {}",
            self.content_type
        );
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("UTF-8 body")
    }
}

async fn call(state: &ApiState, method: &str, uri: &str) -> Answer {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, "localhost")
        .body(Body::empty())
        .unwrap();
    let response = router(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        content_type,
        body: body.to_vec(),
    }
}

async fn get_json(state: &ApiState, uri: &str) -> Value {
    let answer = call(state, "GET", uri).await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "GET {uri}: {}",
        answer.text()
    );
    answer.json()
}

/// The only tunnel an endpoint lists.
async fn only_tunnel(state: &ApiState) -> Value {
    let tunnels = get_json(state, "/tunnels").await;
    let tunnels = tunnels.as_array().expect("an array");
    assert_eq!(tunnels.len(), 1, "{tunnels:?}");
    tunnels[0].clone()
}

/// How long a change takes at most to show in the API (rates are sampled every 100 ms).
const WAIT: Duration = Duration::from_secs(10);

/// A tunnel through both endpoints to an echo server, with `len` bytes echoed and the
/// connection held open.
async fn held_open(client: &TestClient, len: usize) -> tokio::net::TcpStream {
    let mut conn = connect_tcp(&client.addr).await;
    let data = pattern(len, len as u64);
    conn.write_all(&data).await.unwrap();
    let mut echoed = vec![0; len];
    within(30, conn.read_exact(&mut echoed)).await.unwrap();
    assert!(echoed == data);
    conn
}

async fn endpoints() -> (AppServer, TestServer, TestClient) {
    let app = app_server_tcp(Behaviour::Echo).await;
    let server = start_server("");
    let client = start_client(local_tcp(), server.addr, &app.addr.to_string()).await;
    (app, server, client)
}

// ---- the router alone ------------------------------------------------------------------------

#[tokio::test]
async fn health_and_empty_lists() {
    let state = empty_api();
    assert_eq!(get_json(&state, "/healthz").await, json!({"status": "ok"}));
    assert_eq!(get_json(&state, "/tunnels").await, json!([]));
    assert_eq!(get_json(&state, "/connections").await, json!([]));
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods_answer_json() {
    let state = empty_api();
    let uuid = "2e1ce596-8357-4a46-aef1-0c4871b893cd";
    let cases = [
        ("GET", "/nope".to_owned(), StatusCode::NOT_FOUND),
        ("GET", "/tunnels/x/y".to_owned(), StatusCode::NOT_FOUND),
        (
            "GET",
            "/tunnels/not-a-uuid".to_owned(),
            StatusCode::NOT_FOUND,
        ),
        ("GET", "/tunnels/%FF".to_owned(), StatusCode::NOT_FOUND),
        ("GET", format!("/tunnels/{uuid}"), StatusCode::NOT_FOUND),
        ("DELETE", format!("/tunnels/{uuid}"), StatusCode::NOT_FOUND),
        ("DELETE", "/tunnels/12".to_owned(), StatusCode::NOT_FOUND),
        (
            "POST",
            "/tunnels".to_owned(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "PUT",
            format!("/tunnels/{uuid}"),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "DELETE",
            "/healthz".to_owned(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "POST",
            "/metrics".to_owned(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];
    for (method, uri, status) in cases {
        let answer = call(&state, method, &uri).await;
        assert_eq!(answer.status, status, "{method} {uri}");
        let message = &answer.json()["message"];
        assert!(
            message.as_str().is_some_and(|m| !m.is_empty()),
            "{method} {uri}: {message}"
        );
    }
}

#[tokio::test]
async fn metrics_of_an_idle_endpoint_are_zero() {
    let answer = call(&empty_api(), "GET", "/metrics").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.content_type,
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let metrics = Metrics::parse(&answer.text());
    for (name, kind) in FAMILIES {
        assert_eq!(
            metrics.types.get(*name).map(String::as_str),
            Some(*kind),
            "{name}"
        );
    }
    assert_eq!(metrics.value("quictun_tunnels_open", &[]), 0.0);
    assert_eq!(metrics.value("quictun_tunnels_total", &[]), 0.0);
    assert_eq!(metrics.value("quictun_connections_open", &[]), 0.0);
    for direction in ["client_to_server", "server_to_client"] {
        let labels = [("direction", direction)];
        assert_eq!(metrics.value("quictun_bytes_total", &labels), 0.0);
        assert_eq!(metrics.value("quictun_datagrams_total", &labels), 0.0);
    }
    assert_eq!(metrics.value("quictun_datagrams_dropped_total", &[]), 0.0);
}

// ---- real endpoints --------------------------------------------------------------------------

/// The original's fields, in its order, and the numeric rates added beside them.
const COMMON_FIELDS: &[&str] = &[
    "uuid",
    "streamId",
    "endpoint",
    "remoteEndpointAddr",
    "createdAt",
    "serverTotalBytes",
    "clientTotalBytes",
    "serverSendRate",
    "clientSendRate",
    "protocol",
    "protocolProperties",
    "serverSendBytesPerSecond",
    "clientSendBytesPerSecond",
    "transport",
];

/// The tunnel has the common fields and `app_fields`, no more.
fn assert_fields(tunnel: &Value, app_fields: &[&str]) {
    let keys: BTreeSet<&str> = tunnel
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected: BTreeSet<&str> = COMMON_FIELDS.iter().copied().collect();
    expected.extend(app_fields);
    assert_eq!(keys, expected);
    assert_eq!(tunnel["transport"], "tcp", "{tunnel}");
}

fn assert_rfc3339_utc(text: &str) {
    let bytes = text.as_bytes();
    let digits =
        |range: std::ops::Range<usize>| range.into_iter().all(|i| bytes[i].is_ascii_digit());
    assert!(
        bytes.len() >= 20
            && digits(0..4)
            && bytes[4] == b'-'
            && digits(5..7)
            && bytes[7] == b'-'
            && digits(8..10)
            && bytes[10] == b'T'
            && digits(11..13)
            && bytes[13] == b':'
            && digits(14..16)
            && bytes[16] == b':'
            && digits(17..19)
            && text.ends_with('Z'),
        "not RFC 3339: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_have_the_original_fields_on_both_endpoints() {
    let (app, server, client) = endpoints().await;
    let conn = held_open(&client, 3000).await;
    let client_app = conn.local_addr().unwrap().to_string();
    let (server_api, client_api) = (server_api(&server), client_api(&client));
    // Bytes toward an application are counted once the write to it returned, which can be
    // just after the application has read them.
    for api in [&server_api, &client_api] {
        let _ = wait_until(WAIT, || async {
            let tunnel = only_tunnel(api).await;
            tunnel["clientTotalBytes"] == 3000 && tunnel["serverTotalBytes"] == 3000
        })
        .await;
    }

    let on_server = only_tunnel(&server_api).await;
    assert_fields(&on_server, &["serverAppAddr"]);
    assert_eq!(on_server["endpoint"], "server");
    assert_eq!(
        on_server["serverAppAddr"],
        app.addr.to_string().trim_start_matches("tcp:")
    );
    let client_udp = server.connections.list()[0].remote.to_string();
    assert_eq!(on_server["remoteEndpointAddr"], client_udp);

    let on_client = only_tunnel(&client_api).await;
    assert_fields(&on_client, &["clientAppAddr", "service"]);
    assert_eq!(on_client["service"], "default");
    assert_eq!(on_client["endpoint"], "client");
    assert_eq!(on_client["clientAppAddr"], client_app);
    assert_eq!(on_client["remoteEndpointAddr"], server.addr.to_string());

    for tunnel in [&on_server, &on_client] {
        uuid::Uuid::parse_str(tunnel["uuid"].as_str().unwrap()).expect("a UUID");
        assert_eq!(tunnel["streamId"], 0);
        assert_rfc3339_utc(tunnel["createdAt"].as_str().unwrap());
        assert_eq!(tunnel["clientTotalBytes"], 3000);
        assert_eq!(tunnel["serverTotalBytes"], 3000);
        for rate in ["serverSendRate", "clientSendRate"] {
            assert!(tunnel[rate].as_str().unwrap().ends_with(" kB/s"), "{rate}");
        }
        assert_eq!(tunnel["protocol"], "");
        assert_eq!(tunnel["protocolProperties"], Value::Null);
    }
    // One tunnel by its UUID: the same object.
    let uuid = on_server["uuid"].as_str().unwrap();
    let one = get_json(&server_api, &format!("/tunnels/{uuid}")).await;
    assert_eq!(one["uuid"], on_server["uuid"]);
    assert_eq!(one["createdAt"], on_server["createdAt"]);
    assert_eq!(one["serverAppAddr"], on_server["serverAppAddr"]);
    drop(conn);
}

/// Sends 16 KiB chunks, paced, until told to stop; returns how many bytes it sent.
async fn paced_writer(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    stop: Arc<AtomicBool>,
) -> (tokio::net::tcp::OwnedWriteHalf, u64) {
    let chunk = pattern(16 * 1024, 7);
    let mut sent = 0;
    while !stop.load(Ordering::Relaxed) {
        writer.write_all(&chunk).await.unwrap();
        sent += chunk.len() as u64;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (writer, sent)
}

/// Reads and counts until EOF.
async fn counting_reader(mut reader: tokio::net::tcp::OwnedReadHalf, count: Arc<AtomicU64>) {
    let mut buf = vec![0; 64 * 1024];
    while let Ok(n @ 1..) = reader.read(&mut buf).await {
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}

fn rates(tunnel: &Value) -> [u64; 2] {
    ["clientSendBytesPerSecond", "serverSendBytesPerSecond"].map(|f| tunnel[f].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_counts_and_rates_follow_a_transfer() {
    let (_app, server, client) = endpoints().await;
    let states = [server_api(&server), client_api(&client)];
    let (reader, writer) = connect_tcp(&client.addr).await.into_split();
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let writing = tokio::spawn(paced_writer(writer, stop.clone()));
    tokio::spawn(counting_reader(reader, received.clone()));

    // While bytes flow both ways, both rates are above zero on both endpoints.
    wait_until(WAIT, || async {
        let mut all = Vec::new();
        for state in &states {
            let tunnels = get_json(state, "/tunnels").await;
            all.extend(tunnels.as_array().unwrap().iter().flat_map(rates));
        }
        all.len() == 4 && all.iter().all(|&r| r > 0)
    })
    .await
    .expect("rates above zero during the transfer");
    let tunnel = only_tunnel(&states[0]).await;
    assert_ne!(tunnel["clientSendRate"], "0.00 kB/s");
    assert_ne!(tunnel["serverSendRate"], "0.00 kB/s");

    stop.store(true, Ordering::Relaxed);
    let (_writer, sent) = within(30, writing).await.unwrap();
    wait_until(WAIT, || async { received.load(Ordering::Relaxed) == sent })
        .await
        .expect("all bytes echoed");

    // The tunnel is idle but open: the rates fall to zero and the totals are what crossed.
    wait_until(WAIT, || async {
        let mut zero = true;
        for state in &states {
            zero &= rates(&only_tunnel(state).await) == [0, 0];
        }
        zero
    })
    .await
    .expect("rates back to zero");
    for state in &states {
        let tunnel = only_tunnel(state).await;
        assert_eq!(tunnel["clientTotalBytes"].as_u64(), Some(sent));
        assert_eq!(tunnel["serverTotalBytes"].as_u64(), Some(sent));
        assert_eq!(tunnel["clientSendRate"], "0.00 kB/s");
        assert_eq!(tunnel["serverSendRate"], "0.00 kB/s");
    }
}

/// Reads until the connection ends; a reset and an EOF both count as closed.
async fn closed(mut conn: tokio::net::TcpStream) {
    let mut buf = [0u8; 1024];
    loop {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_closes_the_application_connection() {
    let (_app, server, client) = endpoints().await;
    let (server_api, client_api) = (server_api(&server), client_api(&client));
    // Closed from either endpoint, the tunnel ends on both.
    for (closer, other) in [(&server_api, &client_api), (&client_api, &server_api)] {
        let conn = held_open(&client, 100).await;
        let uuid = only_tunnel(closer).await["uuid"]
            .as_str()
            .unwrap()
            .to_owned();
        let path = format!("/tunnels/{uuid}");

        let answer = call(closer, "DELETE", &path).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        assert_eq!(answer.json()["message"], "tunnel closed");
        within(10, closed(conn)).await;

        assert_eq!(get_json(closer, "/tunnels").await, json!([]));
        assert_eq!(
            call(closer, "GET", &path).await.status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            call(closer, "DELETE", &path).await.status,
            StatusCode::NOT_FOUND
        );
        wait_until(WAIT, || async {
            get_json(other, "/tunnels").await == json!([])
        })
        .await
        .expect("the tunnel gone from the other endpoint");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_closes_a_busy_slow_reading_tunnel_at_once_on_both_sides() {
    // A target that sends without end, and an application that reads one kibibyte and then
    // nothing: every buffer on the way fills, and the client's relay waits on the application.
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    let _target = tokio::spawn(async move {
        let (mut conn, _) = target.accept().await.unwrap();
        let chunk = pattern(64 * 1024, 9);
        while conn.write_all(&chunk).await.is_ok() {}
    });
    let server = start_server("");
    let client = start_client(local_tcp(), server.addr, &format!("tcp:{target_addr}")).await;
    let (server_api, client_api) = (server_api(&server), client_api(&client));
    let mut app = connect_tcp(&client.addr).await;
    let mut first = [0u8; 1024];
    within(30, app.read_exact(&mut first)).await.unwrap();
    // Full: the server has read a few MiB ahead and the count no longer grows.
    let last = AtomicU64::new(0);
    wait_until(Duration::from_secs(30), || async {
        let now = only_tunnel(&server_api).await["serverTotalBytes"]
            .as_u64()
            .unwrap();
        now > 1024 * 1024 && last.swap(now, Ordering::Relaxed) == now
    })
    .await
    .expect("the tunnel's buffers filled");
    let lead = last.load(Ordering::Relaxed) - 1024;
    eprintln!("read ahead of a stalled application: {lead} bytes");
    // SPEC §8: the peer's stream window (16 MiB) plus both sockets' kernel buffers.
    assert!(lead < 32 * 1024 * 1024, "read {lead} bytes ahead");

    let uuid = only_tunnel(&server_api).await["uuid"]
        .as_str()
        .unwrap()
        .to_owned();
    let started = Instant::now();
    let answer = call(&server_api, "DELETE", &format!("/tunnels/{uuid}")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    wait_until(Duration::from_secs(10), || async {
        get_json(&client_api, "/tunnels").await == json!([])
    })
    .await
    .expect("the tunnel gone from the client");
    let listed = started.elapsed();
    within(10, closed(app)).await;
    let reset = started.elapsed();
    eprintln!("DELETE: client list {listed:?}, application closed {reset:?}");
    // Before, the client's relay noticed only once the application had read what it held.
    assert!(listed < Duration::from_secs(1), "listed for {listed:?}");
    assert!(
        reset < Duration::from_secs(1),
        "application open for {reset:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_list_the_quic_connection() {
    let (_app, server, client) = endpoints().await;
    let conn = held_open(&client, 100).await;
    let client_udp = server.connections.list()[0].remote.to_string();
    for (state, remote) in [
        (server_api(&server), client_udp),
        (client_api(&client), server.addr.to_string()),
    ] {
        let connections = get_json(&state, "/connections").await;
        let connections = connections.as_array().unwrap();
        assert_eq!(connections.len(), 1, "{connections:?}");
        let c = &connections[0];
        assert_eq!(c["remoteEndpointAddr"], remote.as_str());
        assert_eq!(c["openTunnels"], 1);
        assert!(c["rttMs"].as_f64().unwrap() > 0.0, "{c}");
        assert!(c["congestionWindow"].as_u64().unwrap() > 0, "{c}");
        assert!(c["sentPackets"].as_u64().unwrap() > 0, "{c}");
        for counter in ["lostPackets", "lostBytes", "congestionEvents", "id"] {
            assert!(c[counter].is_u64(), "{counter}: {c}");
        }
        assert_rfc3339_utc(c["createdAt"].as_str().unwrap());
    }
    drop(conn);
}

/// On loopback (a 64 KiB MTU) a connection's packets are as large as an IP packet allows
/// from the start, and a bulk transfer goes in that many fewer packets, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_connections_send_packets_as_large_as_the_interface_allows() {
    let mtu: u64 = std::fs::read_to_string("/sys/class/net/lo/mtu")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let largest = mtu.min(65_535) - 28;
    let (_app, server, client) = endpoints().await;
    let len = 8 << 20;
    let conn = held_open(&client, len).await;
    for state in [server_api(&server), client_api(&client)] {
        let connections = get_json(&state, "/connections").await;
        let c = &connections[0];
        assert_eq!(c["maxUdpPayload"], largest, "{c}");
        assert_eq!(c["lostPackets"], 0, "{c}");
        // 8 MiB each way in 1,452-byte packets would be over 5,700 of them.
        let sent = c["sentPackets"].as_u64().unwrap();
        assert!(sent < (len as u64) / 8192, "{sent} packets: {c}");
    }
    drop(conn);
}

// ---- Prometheus metrics ----------------------------------------------------------------------

const FAMILIES: &[(&str, &str)] = &[
    ("quictun_tunnels_open", "gauge"),
    ("quictun_tunnels_total", "counter"),
    ("quictun_tunnels_refused_total", "counter"),
    ("quictun_bytes_total", "counter"),
    ("quictun_datagrams_total", "counter"),
    ("quictun_datagrams_dropped_total", "counter"),
    ("quictun_handshake_failures_total", "counter"),
    ("quictun_connections_open", "gauge"),
    ("quictun_connection_rtt_seconds", "gauge"),
    ("quictun_connection_lost_packets_total", "counter"),
];

/// A parsed exposition in the Prometheus text format.
struct Metrics {
    types: HashMap<String, String>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Metrics {
    /// Parses every line, failing on any that is not a comment, `# HELP`/`# TYPE`, or a
    /// sample `name{labels} value` of a family whose type came before it.
    fn parse(text: &str) -> Metrics {
        let mut metrics = Metrics {
            types: HashMap::new(),
            samples: Vec::new(),
        };
        for line in text.lines().filter(|l| !l.is_empty()) {
            if let Some(comment) = line.strip_prefix('#') {
                metrics.comment(comment);
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("name and value");
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("value in {line:?}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, labels(rest.strip_suffix('}').expect("closing }"))),
                None => (series, BTreeMap::new()),
            };
            assert!(valid_name(name), "name in {line:?}");
            assert!(metrics.types.contains_key(name), "no TYPE before {line:?}");
            metrics.samples.push((name.to_owned(), labels, value));
        }
        metrics
    }

    fn comment(&mut self, comment: &str) {
        let words: Vec<&str> = comment.split_whitespace().collect();
        match words.as_slice() {
            ["TYPE", name, kind] => {
                assert!(valid_name(name) && ["counter", "gauge"].contains(kind));
                let earlier = self.types.insert(name.to_string(), kind.to_string());
                assert!(earlier.is_none(), "TYPE of {name} twice");
            }
            ["TYPE", ..] => panic!("bad TYPE line: {comment}"),
            ["HELP", name, _, ..] => assert!(valid_name(name)),
            _ => {}
        }
    }

    /// The samples of `name` whose labels include `labels`.
    fn matching(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, value)| *value)
            .collect()
    }

    /// The one sample of `name` with `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.matching(name, labels).as_slice() {
            [value] => *value,
            other => panic!("{name}{labels:?}: {other:?}"),
        }
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses `a="x",b="y\"z"`.
fn labels(mut rest: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").expect("label=\"");
        assert!(valid_name(key), "label name {key:?}");
        let (mut value, mut chars) = (String::new(), after.char_indices());
        let end = loop {
            match chars.next().expect("closing quote") {
                (i, '"') => break i,
                (_, '\\') => match chars.next().expect("escaped char").1 {
                    'n' => value.push('\n'),
                    c @ ('\\' | '"') => value.push(c),
                    c => panic!("bad escape \\{c}"),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.to_owned(), value);
        rest = after[end + 1..]
            .strip_prefix(',')
            .unwrap_or(&after[end + 1..]);
    }
    labels
}

async fn metrics(state: &ApiState) -> Metrics {
    let answer = call(state, "GET", "/metrics").await;
    assert_eq!(answer.status, StatusCode::OK);
    Metrics::parse(&answer.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_traffic_of_ended_and_open_tunnels() {
    let (_app, server, client) = endpoints().await;
    // One tunnel that ends, then one held open.
    let data = pattern(100_000, 1);
    let echoed = within(30, exchange(connect(&client.addr).await, data.clone())).await;
    assert!(echoed.unwrap() == data);
    let conn = held_open(&client, 3000).await;
    for registry in [&server.registry, &client.registry] {
        wait_until(WAIT, || async { registry.open_count() == 1 })
            .await
            .expect("the first tunnel ended");
        // Bytes toward an application are counted once the write to it returned.
        let _ = wait_until(WAIT, || async {
            registry.bytes_total() == (103_000, 103_000)
        })
        .await;
    }
    let client_udp = server.connections.list()[0].remote.to_string();

    for (state, remote) in [
        (server_api(&server), client_udp),
        (client_api(&client), server.addr.to_string()),
    ] {
        let metrics = metrics(&state).await;
        for (name, kind) in FAMILIES {
            assert_eq!(
                metrics.types.get(*name).map(String::as_str),
                Some(*kind),
                "{name}"
            );
        }
        assert_eq!(metrics.value("quictun_tunnels_open", &[]), 1.0);
        assert_eq!(metrics.value("quictun_tunnels_total", &[]), 2.0);
        for direction in ["client_to_server", "server_to_client"] {
            let labels = [("direction", direction)];
            assert_eq!(metrics.value("quictun_bytes_total", &labels), 103_000.0);
        }
        assert_eq!(metrics.value("quictun_connections_open", &[]), 1.0);
        let remote = [("remote", remote.as_str())];
        assert!(metrics.value("quictun_connection_rtt_seconds", &remote) > 0.0);
        assert!(metrics.value("quictun_connection_lost_packets_total", &remote) >= 0.0);
        assert!(
            metrics
                .matching("quictun_handshake_failures_total", &[])
                .is_empty()
        );
    }
    drop(conn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_failures_are_counted_by_reason() {
    let server = start_server("");
    // A client that pins another certificate: its handshakes fail on TLS.
    let wrong = "sha256:".to_owned() + &"ab".repeat(32);
    let source = TokenSource::load("Fixed", "tcp:127.0.0.1:9", Some(plugin_dir())).unwrap();
    let client = Client::bind(ClientConfig {
        services: vec![Service {
            name: "default".parse().unwrap(),
            listen: local_tcp(),
            source,
        }],
        servers: vec![server.addr.into()],
        verification: Verification::Pinned(wrong.parse().unwrap()),
        identity: None,
        transport: transport(),
        handshake_timeout: Duration::from_secs(5),
        outage_wait: Duration::from_secs(5),
        reconnect_max_backoff: Duration::from_secs(1),
        discriminators: Vec::new(),
    })
    .await
    .unwrap();
    let (addr, registry, connections) = (
        client.local_addr().unwrap(),
        client.registry(),
        client.connections(),
    );
    let task = tokio::spawn(client.run());
    within(20, closed(connect_tcp(&addr).await)).await;

    let metrics = metrics(&api(Side::Client, &registry, &connections)).await;
    // The client retries with back-off while the application waits: one failure or more.
    let failures = [("reason", "tls")];
    assert!(metrics.value("quictun_handshake_failures_total", &failures) >= 1.0);
    assert_eq!(metrics.value("quictun_connections_open", &[]), 0.0);
    assert_eq!(metrics.value("quictun_tunnels_total", &[]), 0.0);
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tunnels_are_counted_by_status() {
    let port = ClosedPort::new();
    let server = start_server("");
    // Refused by the target (3), seen by both endpoints.
    let client = start_client(local_tcp(), server.addr, &port.target()).await;
    within(20, closed(connect_tcp(&client.addr).await)).await;
    // Refused by the policy (4): an unspecified address, from a raw client.
    let connection = raw_connection(server.addr).await;
    let answer = raw_answer(&connection, &token_frame("tcp:0.0.0.0:9"))
        .await
        .unwrap();
    assert_eq!(answer.status, quictun::wire::Status::NotAllowed);

    let refused = |status| [("status", status)];
    let server_metrics = metrics(&server_api(&server)).await;
    for (status, count) in [
        ("bad_token", 0.0),
        ("unreachable", 1.0),
        ("not_allowed", 1.0),
        ("plugin_error", 0.0),
    ] {
        let value = server_metrics.value("quictun_tunnels_refused_total", &refused(status));
        assert_eq!(value, count, "server, {status}");
    }
    // The client counts once its relay has read the answer, just after the application's
    // connection was reset.
    let client_api = client_api(&client);
    wait_until(WAIT, || async {
        metrics(&client_api)
            .await
            .value("quictun_tunnels_refused_total", &refused("unreachable"))
            == 1.0
    })
    .await
    .expect("the client counted the refusal");
    let client_metrics = metrics(&client_api).await;
    assert_eq!(
        client_metrics.value("quictun_tunnels_refused_total", &refused("not_allowed")),
        0.0
    );
}

// ---- SPICE, replayed from real captures (as tests/spice.rs does) ----------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spice_properties_appear_in_tunnels() {
    for fixture in common::spice::fixtures() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = format!("tcp:{}", listener.local_addr().unwrap());
        let server = start_server("");
        let client = start_client(local_tcp(), server.addr, &target).await;
        let peer = fixture.clone();
        let spice_server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            // Kept open until the test has read both lists.
            common::spice::play(stream, &peer, false).await
        });
        let app = within(
            30,
            common::spice::play(connect_tcp(&client.addr).await, &fixture, true),
        )
        .await;
        let spice_server = within(30, spice_server).await.unwrap();

        for state in [server_api(&server), client_api(&client)] {
            // An endpoint counts bytes toward an application once its write returned, which
            // can be just after the application has read them.
            let counted = |tunnel: &Value| {
                tunnel["clientTotalBytes"] == fixture.c2s.len()
                    && tunnel["serverTotalBytes"] == fixture.s2c.len()
            };
            let _ = wait_until(WAIT, || async { counted(&only_tunnel(&state).await) }).await;
            let tunnel = only_tunnel(&state).await;
            assert_eq!(tunnel["protocol"], "spice", "{tunnel}");
            assert_eq!(tunnel["protocolProperties"], fixture.properties, "{tunnel}");
            assert_eq!(tunnel["clientTotalBytes"], fixture.c2s.len());
            assert_eq!(tunnel["serverTotalBytes"], fixture.s2c.len());
        }
        drop((app, spice_server));
    }
}

// ---- the binaries ----------------------------------------------------------------------------

/// Each binary with the REST API flag at `httpd`; the client with a server that never answers
/// (its attempts to connect at start fail and are retried; the API is up meanwhile).
fn binaries(httpd: &str) -> [Launch; 2] {
    let client = Launch::client().args([
        "--server-endpoint",
        "127.0.0.1:9",
        "--insecure-skip-verify",
        "--token-source",
        "tcp:127.0.0.1:9",
    ]);
    [Launch::server(), client].map(|binary| binary.args(["--httpd-listen-on", httpd]))
}

#[tokio::test]
async fn both_binaries_serve_the_api_where_the_flag_says() {
    for binary in binaries("127.0.0.1:0") {
        let running = binary.start().await;
        let addr = running.api.expect("REST API ready, with its address");
        let answer = http_get(addr, "/healthz");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with(r#"{"status":"ok"}"#), "{answer}");
        let answer = http_get(addr, "/tunnels");
        assert!(answer.ends_with("[]"), "{answer}");
    }
}

#[tokio::test]
async fn an_empty_flag_turns_the_api_off() {
    for binary in binaries("") {
        let running = binary.start().await;
        let log = running.lines();
        assert!(!log.iter().any(|l| l.contains("REST API")), "{log:?}");
    }
}

#[tokio::test]
async fn a_busy_api_port_is_a_start_up_error() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    for binary in binaries(&addr) {
        // Only errors logged, so the start-up error is the one line.
        let output = binary.args(["--log-level", "error"]).output().await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        let expected = format!("error: cannot listen on tcp {addr} for the REST API: ");
        assert!(stderr.contains(&expected), "{stderr}");
        assert_eq!(stderr.matches("os error").count(), 1, "said once: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flows_show_their_transport_and_datagrams() {
    let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((len, from)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..len], from).await;
        }
    });
    let server = start_server("");
    let listen = "udp:127.0.0.1:0".parse().unwrap();
    let client = start_client(listen, server.addr, &format!("udp:{echo_addr}")).await;
    let app = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to = client
        .addr
        .to_string()
        .trim_start_matches("udp:")
        .to_owned();
    let mut buf = [0u8; 2048];
    for seq in 0..25u8 {
        let datagram = [seq; 100];
        app.send_to(&datagram, &to).await.unwrap();
        let len = within(10, app.recv(&mut buf)).await.unwrap();
        assert_eq!(&buf[..len], &datagram[..]);
    }
    for (api, side) in [
        (server_api(&server), "server"),
        (client_api(&client), "client"),
    ] {
        // The reply toward the application is counted once it was sent.
        let _ = wait_until(WAIT, || async {
            only_tunnel(&api).await["serverDatagrams"] == 25
        })
        .await;
        let tunnel = only_tunnel(&api).await;
        assert_eq!(tunnel["transport"], "udp", "{side}: {tunnel}");
        assert_eq!(tunnel["clientDatagrams"], 25, "{side}: {tunnel}");
        assert_eq!(tunnel["serverDatagrams"], 25, "{side}: {tunnel}");
        assert_eq!(tunnel["droppedDatagrams"], 0, "{side}: {tunnel}");
        assert_eq!(tunnel["clientTotalBytes"], 2500, "{side}: {tunnel}");
        assert_eq!(tunnel["serverTotalBytes"], 2500, "{side}: {tunnel}");
        let service = if side == "client" {
            json!("default")
        } else {
            Value::Null
        };
        assert_eq!(tunnel["service"], service, "{side}: {tunnel}");
        let metrics = metrics(&api).await;
        for direction in ["client_to_server", "server_to_client"] {
            let mut labels = vec![("direction", direction)];
            if side == "client" {
                labels.push(("service", "default"));
            }
            let sent = metrics.value("quictun_datagrams_total", &labels);
            assert_eq!(sent, 25.0, "{side} {direction}");
        }
        let labels: &[(&str, &str)] = if side == "client" {
            &[("service", "default")]
        } else {
            &[]
        };
        assert_eq!(
            metrics.value("quictun_datagrams_dropped_total", labels),
            0.0,
            "{side}"
        );
    }
}
