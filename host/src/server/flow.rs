//! One UDP flow on the server (SPEC §11): the token named a `udp:` target; the policy is
//! checked as for TCP, a UDP socket of the flow's own is connected to the target, the answer
//! is written and the flow relayed until it ends.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::{Connection, RecvStream, SendStream};
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};

use super::ServerCore;
use super::stream::{allowed_addrs, refuse, unreachable};
use crate::tunnel::udp::{self, Flow, FlowApp, FlowTable};
use crate::tunnel::{Side, Transport, Tunnel, TunnelSpec};
use crate::wire::addr::{Address, HostPort};
use crate::wire::handshake::{self, Protocol};
use crate::wire::{Answer, Status};

/// Serves a flow to `target`, a `udp:` address.
pub(super) async fn serve_flow(
    (mut send, recv): (SendStream, RecvStream),
    connection: Connection,
    core: Arc<ServerCore>,
    target: &Address,
    host_port: &HostPort,
    flows: &FlowTable,
) {
    let protocol = Protocol::of(&connection);
    let socket = match open_socket(target, host_port, &core, protocol, flows).await {
        Ok(socket) => socket,
        Err(answer) => {
            warn!(status = %answer.status, "flow refused: {}", answer.reason);
            return refuse(&core, (send, recv), protocol, answer).await;
        }
    };
    let id = u64::from(send.id());
    let registered = core.registry.register(Tunnel::new(TunnelSpec {
        stream_id: id,
        side: Side::Server,
        client_app: None,
        server_app: Some(target.to_string()),
        remote_endpoint: connection.remote_address(),
        connection: connection.stable_id(),
        service: None,
        transport: Transport::Udp,
    }));
    let tunnel = registered.tunnel();
    // Listed before the answer: the client sends DATAGRAM frames once it has it.
    let Some(datagrams) = flows.insert(id, tunnel.clone()) else {
        let answer = Answer::refuse(Status::Unreachable, "too many UDP flows on this connection");
        warn!("flow refused: {}", answer.reason);
        return refuse(&core, (send, recv), protocol, answer).await;
    };
    if let Err(error) = handshake::accept(&mut send, protocol).await {
        flows.remove(id);
        return debug!("peer went away before the answer: {error}");
    }
    debug!("flow open");
    let flow = Flow {
        app: FlowApp::Connected(socket),
        send,
        recv,
        datagrams,
        connection,
        side: Side::Server,
        idle_timeout: core.udp_idle_timeout,
    };
    let end = udp::relay(flow, tunnel).await;
    flows.remove(id);
    info!("flow ended: {end}");
}

/// A UDP socket connected to the first address of `target` the policy allows.
async fn open_socket(
    target: &Address,
    host_port: &HostPort,
    core: &ServerCore,
    protocol: Protocol,
    flows: &FlowTable,
) -> Result<UdpSocket, Answer> {
    if protocol == Protocol::Legacy {
        return Err(Answer::refuse(
            Status::Unreachable,
            "UDP flows need the quic-tun/2 protocol",
        ));
    }
    if flows.len() >= udp::MAX_FLOWS {
        return Err(Answer::refuse(
            Status::Unreachable,
            "too many UDP flows on this connection",
        ));
    }
    let allowed = allowed_addrs(target, host_port, &core.policy, core.connect_timeout).await?;
    let addr = *allowed
        .first()
        .ok_or_else(|| unreachable(target, std::io::ErrorKind::NotFound.into()))?;
    connect(addr)
        .await
        .map_err(|error| unreachable(target, error))
}

async fn connect(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("a valid address")
    } else {
        "[::]:0".parse().expect("a valid address")
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(addr).await?;
    Ok(socket)
}
