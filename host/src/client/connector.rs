//! The client's one QUIC connection to the server: made at start, watched, and made again with
//! capped exponential back-off (with jitter) whenever it is lost, while the client's listener
//! stays up (SPEC §9).
//!
//! A supervisor task owns the connection and publishes its state; application connections
//! wait on that state (bounded by `--outage-wait` at the caller) instead of each trying to
//! connect on their own. A failure that retrying cannot fix (the server's certificate refused,
//! no common protocol) is logged once at ERROR with what to do; while it lasts, application
//! connections are refused at once, and it is retried every [`PERMANENT_RETRY`] or at once
//! when asked ([`Connector::retry_now`], SIGHUP in the binary).
//!
//! With several servers (`--server-endpoint` repeated, SPEC §9 and §12), a failure of any
//! kind, or the loss of the connection, sends the next attempt to the next server; the client
//! stays with the one that answers. Applications are refused, and attempts slowed, only when
//! every server has refused in a way retrying cannot fix.
//!
//! The connection can also move to a new local socket while it lives ([`Connector::rebind`],
//! SIGUSR1 in the binary), for when this host's network changed.

use std::sync::Arc;
use std::time::Duration;

use quinn::Connection;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

pub use super::dialer::{ConnectError, ConnectorConfig, Dialer};
use super::sockets::{Moved, Sockets};
use crate::quic::connections::ConnectionRegistry;

/// First pause after a failed attempt; it doubles up to the configured maximum.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// The pause after a failure that retrying cannot fix, unless a retry is asked for sooner.
pub const PERMANENT_RETRY: Duration = Duration::from_secs(60);

/// Where the connection stands.
#[derive(Debug, Clone)]
enum State {
    Connecting,
    Up(Connection),
    /// The last attempt failed, or the connection was lost; why.
    Down(String),
    /// The last attempt failed in a way retrying cannot fix; why, and what to do.
    Refused(String),
}

/// Hands out the live connection; owns the supervisor task.
pub struct Connector {
    state: watch::Receiver<State>,
    retry: Arc<Notify>,
    registry: Arc<ConnectionRegistry>,
    sockets: Arc<Sockets>,
    supervisor: JoinHandle<()>,
}

impl Connector {
    /// Starts the supervisor, which connects at once.
    pub fn start(config: ConnectorConfig) -> Connector {
        let (state_tx, state) = watch::channel(State::Connecting);
        let retry = Arc::new(Notify::new());
        let registry = Arc::new(ConnectionRegistry::default());
        let max_backoff = config.max_backoff.max(FIRST_BACKOFF);
        let dialer = Dialer::new(config, registry.clone());
        let sockets = dialer.sockets();
        let servers = dialer.server_count();
        let supervisor = Supervisor {
            dialer,
            state: state_tx,
            max_backoff,
            refused: vec![None; servers],
            logged: vec![None; servers],
        };
        let supervisor = tokio::spawn(supervisor.run(retry.clone()));
        Connector {
            state,
            retry,
            registry,
            sockets,
            supervisor,
        }
    }

    /// The live connection, waiting for one if there is none (the caller bounds the wait);
    /// at once the reason when the last attempt failed in a way retrying cannot fix.
    pub async fn connection(&self) -> Result<Connection, String> {
        let mut state = self.state.clone();
        loop {
            match &*state.borrow_and_update() {
                State::Up(connection) if connection.close_reason().is_none() => {
                    return Ok(connection.clone());
                }
                State::Refused(reason) => return Err(reason.clone()),
                _ => {}
            }
            if state.changed().await.is_err() {
                // The supervisor is gone: only at shutdown. Wait for the caller's bound.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Why there is no connection, for the message when an application gives up waiting.
    pub fn last_error(&self) -> Option<String> {
        match &*self.state.borrow() {
            State::Down(reason) | State::Refused(reason) => Some(reason.clone()),
            _ => None,
        }
    }

    /// Ends the pause after a failure that retrying cannot fix: the next attempt starts now.
    pub fn retry_now(&self) {
        self.retry.notify_one();
    }

    /// Moves the client to new local UDP sockets, for when this host's network changed
    /// (SIGUSR1 in the binary): the connection stays and reaches the server from the new
    /// port (QUIC connection migration). Logged as a path change, and counted on the
    /// connection (`/connections`).
    pub fn rebind(&self) -> std::io::Result<()> {
        let moved = self.sockets.rebind()?;
        if moved.is_empty() {
            info!("path change: no UDP socket is open yet, nothing to move");
            return Ok(());
        }
        for Moved { from, to } in &moved {
            info!(%from, %to, "path change: the connection moves to a new local UDP socket");
        }
        if let Some(connection) = self.current() {
            self.registry.moved_locally(&connection);
        }
        Ok(())
    }

    pub fn registry(&self) -> Arc<ConnectionRegistry> {
        self.registry.clone()
    }

    /// The current connection, if it is up.
    pub fn current(&self) -> Option<Connection> {
        match &*self.state.borrow() {
            State::Up(connection) => Some(connection.clone()),
            _ => None,
        }
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

/// Owns the connection: makes it, watches it, and makes it again, going through the servers
/// in turn (see [`Dialer`]).
struct Supervisor {
    dialer: Dialer,
    state: watch::Sender<State>,
    max_backoff: Duration,
    /// Per server: why it refused us in a way retrying cannot fix, since the last long pause.
    /// When every server has, applications are refused and attempts slow down.
    refused: Vec<Option<String>>,
    /// Per server: the refusal last logged at ERROR, so that each is logged once.
    logged: Vec<Option<String>>,
}

impl Supervisor {
    async fn run(mut self, retry: Arc<Notify>) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            // While refused, applications stay refused during the next attempts too.
            if !self.is_refused() {
                self.state.send_replace(State::Connecting);
            }
            let index = self.dialer.current_index();
            match self.dialer.connect().await {
                Ok(connection) => {
                    backoff = FIRST_BACKOFF;
                    (self.refused[index], self.logged[index]) = (None, None);
                    self.serve(connection).await;
                }
                Err(failure) if failure.is_permanent() => {
                    let reason = match failure.fix() {
                        Some(fix) => format!("{failure}; {fix}"),
                        None => failure.to_string(),
                    };
                    self.refused[index] = Some(reason.clone());
                    if self.refused.iter().all(Option::is_some) {
                        self.refuse_all(&retry).await;
                        backoff = FIRST_BACKOFF;
                        continue;
                    }
                    let pause = jitter(backoff);
                    self.log_refusal(index, &reason, pause);
                    if !self.is_refused() {
                        self.state.send_replace(State::Down(reason));
                    }
                    tokio::time::sleep(pause).await;
                    backoff = (backoff * 2).min(self.max_backoff);
                }
                Err(failure) => {
                    (self.refused[index], self.logged[index]) = (None, None);
                    let pause = jitter(backoff);
                    warn!("{}", self.after(&failure, Some(pause)));
                    self.state.send_replace(State::Down(failure.to_string()));
                    tokio::time::sleep(pause).await;
                    backoff = (backoff * 2).min(self.max_backoff);
                }
            }
        }
    }

    /// Publishes the connection until it is lost; the next attempt goes to the next server.
    async fn serve(&mut self, connection: Connection) {
        let server = self.dialer.current().clone();
        self.dialer.registry().watch(&connection);
        self.state.send_replace(State::Up(connection.clone()));
        let reason = connection.closed().await;
        self.dialer.switch();
        let lost = format!("connection to server {server} lost: {reason}");
        match self.dialer.server_count() {
            1 => warn!(%server, "connection to the server lost: {reason}; reconnecting"),
            _ => warn!(%server, "{}", self.after(&lost, None)),
        }
        self.state
            .send_replace(State::Down(format!("connection lost: {reason}")));
    }

    /// Every server refused us in a way retrying cannot fix: applications are refused, said
    /// once at ERROR, until the next attempt, in [`PERMANENT_RETRY`] or when asked.
    async fn refuse_all(&mut self, retry: &Notify) {
        let reasons: Vec<&str> = self.refused.iter().flatten().map(String::as_str).collect();
        let reason = match reasons[..] {
            [one] => one.to_owned(),
            _ => format!("every server refused: {}", reasons.join("; ")),
        };
        // Logged once: the same refusal again is only a debug line.
        let again = matches!(&*self.state.borrow(), State::Refused(last) if *last == reason);
        if !again {
            error!(
                "{reason} (application connections are refused meanwhile; next attempt in \
                 {PERMANENT_RETRY:?}, or at once on SIGHUP)"
            );
        } else {
            debug!("still refused: {reason}");
        }
        self.logged.clone_from(&self.refused);
        self.state.send_replace(State::Refused(reason));
        tokio::select! {
            () = tokio::time::sleep(PERMANENT_RETRY) => {}
            () = retry.notified() => info!("retrying the connection to the server now"),
        }
        // Each server gets an attempt again before the next long pause.
        self.refused.fill(None);
    }

    /// One server of several refused us: said once at ERROR, with the server tried next.
    fn log_refusal(&mut self, index: usize, reason: &str, pause: Duration) {
        if self.logged[index].as_deref() == Some(reason) {
            return debug!("still refused: {reason}");
        }
        error!("{}", self.after(&reason, Some(pause)));
        self.logged[index] = Some(reason.to_owned());
    }

    /// What a failure leads to, for its log line: with several servers, the switch to the
    /// next one.
    fn after(&self, failure: &dyn std::fmt::Display, pause: Option<Duration>) -> String {
        let next = pause.map(|p| format!("next attempt in {p:?}"));
        match (self.dialer.server_count(), next) {
            (1, Some(next)) => format!("{failure}; {next}"),
            (1, None) => failure.to_string(),
            (_, Some(next)) => format!(
                "switching to server {} after: {failure} ({next})",
                self.dialer.current()
            ),
            (_, None) => format!(
                "switching to server {} after: {failure}",
                self.dialer.current()
            ),
        }
    }

    fn is_refused(&self) -> bool {
        matches!(*self.state.borrow(), State::Refused(_))
    }
}

/// `pause` ± 20 %, so many clients cut off together do not come back in lockstep.
fn jitter(pause: Duration) -> Duration {
    use std::hash::{BuildHasher, RandomState};
    let random = RandomState::new().hash_one(std::time::Instant::now());
    let factor = 0.8 + (random % 1000) as f64 / 2500.0;
    pause.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_fifth() {
        for _ in 0..100 {
            let pause = jitter(Duration::from_secs(10));
            assert!(
                pause >= Duration::from_secs(8) && pause <= Duration::from_secs(12),
                "{pause:?}"
            );
        }
    }
}
