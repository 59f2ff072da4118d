//! Real SPICE connections (recorded between qemu and remote-viewer) replayed through a real
//! tunnel: both endpoints must report the protocol and properties the recording's
//! expected.json gives, while the bytes cross unchanged.

mod common;

use std::path::PathBuf;

use common::*;
use quictun::tunnel::TunnelRegistry;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

fn captures() -> PathBuf {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/spice-captures"
    ));
    assert!(
        dir.join("expected.json").is_file(),
        "SPICE captures missing at {}",
        dir.display()
    );
    dir
}

struct Fixture {
    name: String,
    c2s: Vec<u8>,
    s2c: Vec<u8>,
    properties: Value,
    script: Vec<(bool, usize)>,
}

fn fixtures() -> Vec<Fixture> {
    let dir = captures();
    let expected: Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    expected["fixtures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| Fixture {
            name: f["name"].as_str().unwrap().to_owned(),
            c2s: std::fs::read(dir.join(f["c2s"].as_str().unwrap())).unwrap(),
            s2c: std::fs::read(dir.join(f["s2c"].as_str().unwrap())).unwrap(),
            properties: f["protocolProperties"].clone(),
            script: f["script"]
                .as_array()
                .unwrap()
                .iter()
                .map(|step| (step[0] == "c2s", step[1].as_u64().unwrap() as usize))
                .collect(),
        })
        .collect()
}

/// Plays one side of the recording: writes this side's steps, and reads the other side's,
/// checking every byte read against the recording.
async fn play<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, fixture: &Fixture, client: bool) {
    let (mine, theirs) = if client {
        (&fixture.c2s, &fixture.s2c)
    } else {
        (&fixture.s2c, &fixture.c2s)
    };
    let (mut wrote, mut read) = (0, 0);
    for &(c2s, len) in &fixture.script {
        if c2s == client {
            stream.write_all(&mine[wrote..wrote + len]).await.unwrap();
            wrote += len;
        } else {
            let mut buf = vec![0; len];
            stream.read_exact(&mut buf).await.unwrap();
            assert!(
                buf == theirs[read..read + len],
                "{}: bytes changed in the tunnel",
                fixture.name
            );
            read += len;
        }
    }
}

fn reported(registry: &TunnelRegistry) -> (String, Value) {
    let tunnels = registry.list();
    assert_eq!(tunnels.len(), 1);
    let protocol = tunnels[0].protocol().expect("a protocol");
    (protocol.name, protocol.properties.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_spice_channels_are_recognised_on_both_endpoints() {
    for fixture in fixtures() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = format!("tcp:{}", listener.local_addr().unwrap());
        let server = start_server("");
        let client = start_client(local_tcp(), server.addr, &target).await;

        let (done_tx, done) = tokio::sync::oneshot::channel::<()>();
        let peer_fixture = Fixture {
            name: fixture.name.clone(),
            c2s: fixture.c2s.clone(),
            s2c: fixture.s2c.clone(),
            properties: Value::Null,
            script: fixture.script.clone(),
        };
        let spice_server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            play(stream, &peer_fixture, false).await;
            // Hold the connection open until the test has read both tunnel lists.
            let _ = done.await;
        });
        let app = connect_tcp(&client.addr).await;
        within(30, play(app, &fixture, true)).await;

        // The last bytes have crossed; the discriminators have seen them.
        for (side, registry) in [("server", &server.registry), ("client", &client.registry)] {
            let (protocol, properties) = reported(registry);
            assert_eq!(protocol, "spice", "{} on the {side}", fixture.name);
            assert_eq!(
                properties, fixture.properties,
                "{} on the {side}",
                fixture.name
            );
        }
        let _ = done_tx.send(());
        within(30, spice_server).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_that_is_not_spice_has_no_protocol() {
    let app = app_server_tcp(Behaviour::Echo).await;
    let server = start_server("");
    let client = start_client(local_tcp(), server.addr, &app.addr.to_string()).await;
    let mut conn = connect_tcp(&client.addr).await;
    conn.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await.unwrap();
    let mut echoed = [0u8; 21];
    within(30, conn.read_exact(&mut echoed)).await.unwrap();
    for registry in [&server.registry, &client.registry] {
        let tunnels = registry.list();
        assert_eq!(tunnels.len(), 1);
        assert_eq!(tunnels[0].protocol(), None);
    }
}
