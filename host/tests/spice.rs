//! Real SPICE connections (recorded between qemu and remote-viewer) replayed through a real
//! tunnel: both endpoints must report the protocol and properties the recording's
//! expected.json gives, while the bytes cross unchanged.

mod common;

use common::spice::{fixtures, play};
use common::*;
use quictun::tunnel::TunnelRegistry;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
        let peer_fixture = fixture.clone();
        let spice_server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            play(stream, &peer_fixture, false).await;
            // Hold the connection open until the test has read both tunnel lists.
            let _ = done.await;
        });
        let app = connect_tcp(&client.addr).await;
        // Kept open until both tunnel lists are read: closing with unread bytes resets it.
        let app = within(30, play(app, &fixture, true)).await;

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
        drop(app);
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
