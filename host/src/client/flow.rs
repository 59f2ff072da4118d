//! The client's UDP listener (SPEC §11): each application source address is a flow, opened
//! by a stream that carries the flow's token as for TCP. The flow's first datagrams follow the
//! token on the stream without waiting; once the server has answered, the flow is relayed by
//! [`crate::tunnel::udp::relay`] and its replies go back to the source address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::Connection;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info, info_span, warn};

use super::{ClientCore, ServiceCore, open_stream};
use crate::lock::lock;
use crate::tunnel::udp::{self, FLOW_QUEUE, Flow, FlowApp, FlowTable, MAX_FLOWS};
use crate::tunnel::{Side, Tunnel, TunnelSpec};
use crate::wire::ErrorCode;
use crate::wire::handshake::{self, Protocol};
use crate::wire::udp::MAX_DATAGRAM;

/// The flows of the listener, by source address.
type Sources = Arc<Mutex<HashMap<SocketAddr, Slot>>>;

/// How often, at most, the listener says it drops datagrams of new sources.
const FULL_WARNING_EVERY: Duration = Duration::from_secs(10);

/// A flow as the listener sees it: where its datagrams are queued.
struct Slot {
    queue: mpsc::Sender<Bytes>,
    dropped: Arc<AtomicU64>,
}

/// Receives the application's datagrams until the task is dropped.
pub(super) async fn run(socket: Arc<UdpSocket>, service: Arc<ServiceCore>, core: Arc<ClientCore>) {
    let sources: Sources = Arc::default();
    let tables = Arc::new(Tables::default());
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let mut full = Full::default();
    loop {
        let (len, source) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(error) => {
                debug!("UDP receive failed: {error}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let datagram = Bytes::copy_from_slice(&buf[..len]);
        let queue = match dispatch(&sources, source, datagram) {
            Dispatched::Queued => continue,
            Dispatched::Full => {
                full.dropped(&service, &core);
                continue;
            }
            Dispatched::New(queue) => queue,
        };
        let span = info_span!("flow", service = %service.name, client_app = %source,
                              stream_id = tracing::field::Empty);
        let app = FlowApp::Listener {
            socket: socket.clone(),
            source,
            queue: queue.0,
            dropped: queue.1,
        };
        let (service, core) = (service.clone(), core.clone());
        let (sources, tables) = (sources.clone(), tables.clone());
        tokio::spawn(
            async move {
                serve_flow(app, source, (&service, &core), &tables).await;
                // Its queue is closed now: the slot goes, and the source's next datagram
                // opens a new flow.
                lock(&sources).retain(|_, slot| !slot.queue.is_closed());
            }
            .instrument(span),
        );
    }
}

/// Where [`dispatch`] put a datagram.
enum Dispatched {
    /// In its flow's queue, or dropped and counted by the flow for a full queue.
    Queued,
    /// Dropped: a new source, and [`MAX_FLOWS`] flows open.
    Full,
    /// In the queue of a new flow, to be served.
    New((mpsc::Receiver<Bytes>, Arc<AtomicU64>)),
}

/// Queues a datagram for its source's flow. A new flow's queue is returned for it to be
/// served; a full queue, or a new source beyond [`MAX_FLOWS`], drops the datagram.
fn dispatch(sources: &Sources, source: SocketAddr, datagram: Bytes) -> Dispatched {
    let mut sources = lock(sources);
    let datagram = match sources.get(&source) {
        Some(slot) => match slot.queue.try_send(datagram) {
            Ok(()) => return Dispatched::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                slot.dropped.fetch_add(1, Ordering::Relaxed);
                return Dispatched::Queued;
            }
            // The flow just ended: this datagram opens a new one.
            Err(mpsc::error::TrySendError::Closed(datagram)) => datagram,
        },
        None => datagram,
    };
    sources.remove(&source);
    if sources.len() >= MAX_FLOWS {
        return Dispatched::Full;
    }
    let (queue, receiver) = mpsc::channel(FLOW_QUEUE);
    let _ = queue.try_send(datagram);
    let dropped = Arc::new(AtomicU64::new(0));
    let slot = Slot {
        queue,
        dropped: dropped.clone(),
    };
    sources.insert(source, slot);
    Dispatched::New((receiver, dropped))
}

/// The datagrams of new sources dropped while the listener is full: counted each, said at
/// most every [`FULL_WARNING_EVERY`].
#[derive(Default)]
struct Full {
    since_warning: u64,
    warned_at: Option<Instant>,
}

impl Full {
    fn dropped(&mut self, service: &ServiceCore, core: &ClientCore) {
        core.registry.count_dropped_datagrams(Some(&service.name));
        self.since_warning += 1;
        if self
            .warned_at
            .is_some_and(|at| at.elapsed() < FULL_WARNING_EVERY)
        {
            return;
        }
        warn!(
            service = %service.name,
            "datagrams of new sources dropped: {MAX_FLOWS} UDP flows open ({} since the last warning)",
            self.since_warning
        );
        self.since_warning = 0;
        self.warned_at = Some(Instant::now());
    }
}

/// The flow table of the live connection, whose DATAGRAM frames a task reads into it.
#[derive(Default)]
struct Tables {
    current: Mutex<Option<(usize, Arc<FlowTable>)>>,
}

impl Tables {
    fn table_for(&self, connection: &Connection) -> Arc<FlowTable> {
        let mut current = lock(&self.current);
        if let Some((id, table)) = current.as_ref()
            && *id == connection.stable_id()
        {
            return table.clone();
        }
        let table = Arc::new(FlowTable::default());
        tokio::spawn(udp::read_datagrams(connection.clone(), table.clone()));
        *current = Some((connection.stable_id(), table.clone()));
        table
    }
}

/// Opens the flow, sends its first datagrams with the token, and relays it once the server
/// has answered.
async fn serve_flow(
    mut app: FlowApp,
    source: SocketAddr,
    (service, core): (&ServiceCore, &ClientCore),
    tables: &Tables,
) {
    let token = match service.source.token(&source.to_string()).await {
        Ok(token) => token,
        Err(error) => return warn!("flow refused: no token: {error}"),
    };
    let wait = core.outage_wait;
    let ((mut send, mut recv), connection) =
        match tokio::time::timeout(wait, open_stream(&core.connector)).await {
            Ok(Ok(opened)) => opened,
            Ok(Err(refused)) => return debug!("flow refused: {refused}"),
            Err(_) => {
                return warn!(
                    "flow closed: no connection or free stream to the server within {wait:?}"
                );
            }
        };
    let id = u64::from(send.id());
    tracing::Span::current().record("stream_id", tracing::field::display(send.id()));
    let protocol = Protocol::of(&connection);
    if protocol == Protocol::Legacy {
        return refuse(
            (&mut send, &mut recv),
            &format!(
                "the server speaks {}, and UDP flows need quic-tun/2",
                protocol.describe()
            ),
        );
    }
    let frame = match protocol.token_frame(&token) {
        Ok(frame) => frame,
        Err(error) => {
            return refuse(
                (&mut send, &mut recv),
                &format!("the token source gave an unusable token: {error}"),
            );
        }
    };
    if let Err(error) = send.write_all(&frame).await {
        return warn!("flow closed: cannot send the token: {error}");
    }
    let registered = core.registry.register(Tunnel::new(TunnelSpec {
        stream_id: id,
        side: Side::Client,
        client_app: Some(source.to_string()),
        server_app: None,
        remote_endpoint: connection.remote_address(),
        connection: connection.stable_id(),
        service: Some(service.name.clone()),
        transport: service.transport,
    }));
    let tunnel = registered.tunnel();
    let table = tables.table_for(&connection);
    let Some(datagrams) = table.insert(id, tunnel.clone()) else {
        return refuse(
            (&mut send, &mut recv),
            &format!("{MAX_FLOWS} UDP flows open on the connection"),
        );
    };
    let answer = handshake::read_answer(&mut recv, protocol);
    let answer = udp::before_answer(&mut app, &mut send, tunnel, answer).await;
    let refused = match answer {
        Ok(Ok(answer)) if answer.status == crate::wire::Status::Ok => None,
        Ok(Ok(answer)) => {
            core.registry
                .count_refused(answer.status, tunnel.service.as_ref());
            Some(format!(
                "flow refused: {}: {}",
                answer.status, answer.reason
            ))
        }
        Ok(Err(error)) => Some(format!("flow closed: no answer from the server: {error}")),
        Err(error) => Some(format!("flow closed: cannot send to the server: {error}")),
    };
    if let Some(why) = refused {
        table.remove(id);
        return warn!("{why}");
    }
    debug!("flow open");
    let flow = Flow {
        app,
        send,
        recv,
        datagrams,
        connection,
        side: Side::Client,
        idle_timeout: core.udp_idle_timeout,
    };
    let end = udp::relay(flow, tunnel).await;
    table.remove(id);
    info!("flow ended: {end}");
}

/// Gives up a flow whose stream is open: our side reset, theirs stopped.
fn refuse((send, recv): (&mut quinn::SendStream, &mut quinn::RecvStream), why: &str) {
    warn!("flow refused: {why}");
    let _ = recv.stop(ErrorCode::Done.varint());
    let _ = send.reset(ErrorCode::Done.varint());
}
