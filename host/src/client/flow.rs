//! The client's UDP listener (SPEC §11): each application source address is a flow, opened
//! by a stream that carries the flow's token as for TCP. The flow's first datagrams follow the
//! token on the stream without waiting; once the server has answered, the flow is relayed by
//! [`crate::tunnel::udp::relay`] and its replies go back to the source address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::Connection;
use tokio::net::UdpSocket;
use tracing::{Instrument, debug, info, info_span, warn};

use super::{ClientCore, ServiceCore, open_stream};
use crate::lock::lock;
use crate::tunnel::flow_queue::{self, Budget};
use crate::tunnel::udp::{self, Flow, FlowApp, FlowTable, MAX_FLOWS};
use crate::tunnel::{Side, TunnelRegistry};
use crate::wire::ErrorCode;
use crate::wire::handshake::{self, Protocol};
use crate::wire::udp::MAX_DATAGRAM;

/// The flows of the listener, by source address.
type Sources = Arc<Mutex<HashMap<SocketAddr, Slot>>>;

/// How often, at most, the listener says it drops datagrams of new sources.
const FULL_WARNING_EVERY: Duration = Duration::from_secs(10);
/// How long the datagrams of a source whose flow was refused are dropped, so a refused
/// application retrying at once asks neither the token source nor the server each time.
const REFUSED_HOLD: Duration = Duration::from_secs(5);

/// A source as the listener sees it.
enum Slot {
    /// Its flow, and the queue its datagrams wait in.
    Open(flow_queue::Sender),
    /// Its last flow was refused: its datagrams are dropped until then.
    Refused(Instant),
}

/// Receives the application's datagrams until the task is dropped.
pub(super) async fn run(socket: Arc<UdpSocket>, service: Arc<ServiceCore>, core: Arc<ClientCore>) {
    let sources: Sources = Arc::default();
    let budget = Arc::new(Budget::default());
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
        let queue = match dispatch(&sources, source, datagram, &budget) {
            Dispatched::Queued => continue,
            Dispatched::Held => {
                core.registry
                    .count_dropped_datagrams(Some(&service.name), 1);
                continue;
            }
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
            queue,
        };
        let (service, core) = (service.clone(), core.clone());
        let sources = sources.clone();
        tokio::spawn(
            async move {
                let served = serve_flow(app, source, (&service, &core)).await;
                ended(&sources, source, served, (&service, &core));
            }
            .instrument(span),
        );
    }
}

/// Where [`dispatch`] put a datagram.
enum Dispatched {
    /// In its flow's queue, or dropped and counted by the flow for a full queue.
    Queued,
    /// Dropped: its source's last flow was refused a moment ago.
    Held,
    /// Dropped: a new source, and [`MAX_FLOWS`] flows open.
    Full,
    /// In the queue of a new flow, to be served.
    New(flow_queue::Receiver),
}

/// Queues a datagram for its source's flow. A new flow's queue is returned for it to be
/// served; a full queue, a source held after a refusal, or a new source beyond
/// [`MAX_FLOWS`], drops the datagram.
fn dispatch(
    sources: &Sources,
    source: SocketAddr,
    datagram: Bytes,
    budget: &Arc<Budget>,
) -> Dispatched {
    let mut sources = lock(sources);
    let datagram = match sources.get(&source) {
        Some(Slot::Open(queue)) => match queue.push(datagram) {
            Ok(()) => return Dispatched::Queued,
            // The flow just ended: this datagram opens a new one.
            Err(datagram) => datagram,
        },
        Some(Slot::Refused(until)) if Instant::now() < *until => return Dispatched::Held,
        Some(Slot::Refused(_)) | None => datagram,
    };
    sources.remove(&source);
    if sources.len() >= MAX_FLOWS {
        // Holds that have passed make room; only when full, so a datagram costs no scan.
        let now = Instant::now();
        sources.retain(|_, slot| !matches!(slot, Slot::Refused(until) if *until <= now));
        if sources.len() >= MAX_FLOWS {
            return Dispatched::Full;
        }
    }
    let (queue, receiver) = flow_queue::channel(budget.clone());
    let _ = queue.push(datagram);
    sources.insert(source, Slot::Open(queue));
    Dispatched::New(receiver)
}

/// A flow has ended: what its queue dropped since the relay last looked is counted, and its
/// slot goes (the source's next datagram opens a new flow), or is held after a refusal.
fn ended(sources: &Sources, source: SocketAddr, served: Served, (service, core): Parts<'_>) {
    let mut sources = lock(sources);
    let Some(Slot::Open(queue)) = sources.get(&source) else {
        return;
    };
    // A datagram since may already have opened the source's next flow.
    if !queue.is_closed() {
        return;
    }
    let dropped = queue.take_dropped();
    core.registry
        .count_dropped_datagrams(Some(&service.name), dropped);
    match served {
        Served::Refused => {
            sources.insert(source, Slot::Refused(Instant::now() + REFUSED_HOLD));
        }
        Served::Ended => {
            sources.remove(&source);
        }
    }
}

/// How serving a flow ended.
enum Served {
    /// Relayed, or given up for a reason that may pass (no connection to the server).
    Ended,
    /// No token, or the server refused it: asking again at once would be refused again.
    Refused,
}

/// A flow's service and the client's core.
type Parts<'a> = (&'a ServiceCore, &'a ClientCore);

/// The datagrams of new sources dropped while the listener is full: counted each, said at
/// most every [`FULL_WARNING_EVERY`].
#[derive(Default)]
struct Full {
    since_warning: u64,
    warned_at: Option<Instant>,
}

impl Full {
    fn dropped(&mut self, service: &ServiceCore, core: &ClientCore) {
        core.registry
            .count_dropped_datagrams(Some(&service.name), 1);
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

/// The flow table of the live connection, whose DATAGRAM frames one task reads into it: one
/// for all the client's UDP services, since each frame is read once.
#[derive(Default)]
pub(super) struct Tables {
    current: Mutex<Option<(usize, Arc<FlowTable>)>>,
}

impl Tables {
    fn table_for(&self, connection: &Connection, registry: &Arc<TunnelRegistry>) -> Arc<FlowTable> {
        let mut current = lock(&self.current);
        if let Some((id, table)) = current.as_ref()
            && *id == connection.stable_id()
        {
            return table.clone();
        }
        let table = Arc::new(FlowTable::default());
        let reading = udp::read_datagrams(connection.clone(), table.clone(), registry.clone());
        tokio::spawn(reading);
        *current = Some((connection.stable_id(), table.clone()));
        table
    }
}

/// Opens the flow, sends its first datagrams with the token, and relays it once the server
/// has answered.
async fn serve_flow(mut app: FlowApp, source: SocketAddr, (service, core): Parts<'_>) -> Served {
    let token = match service.source.token(&source.to_string()).await {
        Ok(token) => token,
        Err(error) => {
            warn!("flow refused: no token: {error}");
            return Served::Refused;
        }
    };
    let wait = core.outage_wait;
    let ((mut send, mut recv), connection) =
        match tokio::time::timeout(wait, open_stream(&core.connector)).await {
            Ok(Ok(opened)) => opened,
            Ok(Err(refused)) => {
                debug!("flow refused: {refused}");
                return Served::Ended;
            }
            Err(_) => {
                warn!("flow closed: no connection or free stream to the server within {wait:?}");
                return Served::Ended;
            }
        };
    let id = u64::from(send.id());
    tracing::Span::current().record("stream_id", tracing::field::display(send.id()));
    let protocol = Protocol::of(&connection);
    if protocol == Protocol::Legacy {
        let why = format!(
            "the server speaks {}, and UDP flows need quic-tun/2",
            protocol.describe()
        );
        return refuse((&mut send, &mut recv), &why);
    }
    let frame = match protocol.token_frame(&token) {
        Ok(frame) => frame,
        Err(error) => {
            let why = format!("the token source gave an unusable token: {error}");
            return refuse((&mut send, &mut recv), &why);
        }
    };
    if let Err(error) = send.write_all(&frame).await {
        warn!("flow closed: cannot send the token: {error}");
        return Served::Ended;
    }
    let registered = service.register(&core.registry, id, source.to_string(), &connection);
    let tunnel = registered.tunnel();
    let table = core.flow_tables.table_for(&connection, &core.registry);
    let Some(datagrams) = table.insert(id, tunnel.clone()) else {
        refuse(
            (&mut send, &mut recv),
            &format!("{MAX_FLOWS} UDP flows open on the connection"),
        );
        return Served::Ended;
    };
    // The server answers once it has a socket for the flow: no dialling to wait for, but
    // a server that never answers must not hold the flow.
    let answer = tokio::time::timeout(wait, handshake::read_answer(&mut recv, protocol));
    let answer = udp::before_answer(&mut app, &mut send, tunnel, answer).await;
    let (served, why) = match answer {
        Ok(Ok(Ok(answer))) if answer.status == crate::wire::Status::Ok => (Served::Ended, None),
        Ok(Ok(Ok(answer))) => {
            core.registry
                .count_refused(answer.status, tunnel.service.as_ref());
            let why = format!("flow refused: {}: {}", answer.status, answer.reason);
            (Served::Refused, Some(why))
        }
        Ok(Ok(Err(error))) => {
            let why = format!("flow closed: no answer from the server: {error}");
            (Served::Ended, Some(why))
        }
        Ok(Err(_)) => {
            let why = format!("flow closed: no answer from the server within {wait:?}");
            let _ = send.reset(ErrorCode::Done.varint());
            let _ = recv.stop(ErrorCode::Done.varint());
            (Served::Ended, Some(why))
        }
        Err(error) => {
            let why = format!("flow closed: cannot send to the server: {error}");
            (Served::Ended, Some(why))
        }
    };
    if let Some(why) = why {
        table.remove(id);
        warn!("{why}");
        return served;
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
    Served::Ended
}

/// Gives up a flow whose stream is open: our side reset, theirs stopped.
fn refuse((send, recv): (&mut quinn::SendStream, &mut quinn::RecvStream), why: &str) -> Served {
    warn!("flow refused: {why}");
    let _ = recv.stop(ErrorCode::Done.varint());
    let _ = send.reset(ErrorCode::Done.varint());
    Served::Refused
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn holds_that_have_passed_make_room_for_new_sources() {
        let sources: Sources = Arc::default();
        let budget = Arc::new(Budget::default());
        let passed = Instant::now() - Duration::from_secs(1);
        let later = Instant::now() + REFUSED_HOLD;
        for port in 0..MAX_FLOWS as u16 {
            lock(&sources).insert(source(port), Slot::Refused(later));
        }
        let new = source(60_000);
        let datagram = Bytes::from_static(b"x");
        assert!(matches!(
            dispatch(&sources, new, datagram.clone(), &budget),
            Dispatched::Full
        ));
        assert!(matches!(
            dispatch(&sources, source(7), datagram.clone(), &budget),
            Dispatched::Held
        ));
        lock(&sources).insert(source(7), Slot::Refused(passed));
        lock(&sources).insert(source(8), Slot::Refused(passed));
        assert!(matches!(
            dispatch(&sources, new, datagram.clone(), &budget),
            Dispatched::New(_)
        ));
        // Both passed holds went; the new source took one place.
        assert_eq!(lock(&sources).len(), MAX_FLOWS - 1);
    }
}
