//! quic-tun: carries TCP and UNIX-socket application connections as streams of one encrypted
//! QUIC connection.
//!
//! The map of the crate, bottom up (a module uses only those above it in this list):
//!
//! - [`wire`]: the bytes on the wire. Addresses, the per-stream handshake of both protocols
//!   as pure encode/decode, and [`wire::handshake`], where the protocol is chosen from ALPN
//!   and every token and answer is read or written on a QUIC stream.
//! - [`plugins`]: loading token sources, token parsers and discriminators, and calling them
//!   safely.
//! - [`tls`]: who an endpoint is and whom it trusts: identities, fingerprints, known hosts,
//!   certificate checks.
//! - [`quic`]: QUIC endpoints and transport settings, and the registry of live connections.
//! - [`tunnel`]: one tunnel's life: the registry the API lists, the relay between an
//!   application socket and a QUIC stream, protocol sniffing, application sockets.
//! - [`client`] and [`server`]: the two endpoints, built on the above; the client's
//!   connection to the server and `--check` live with the client, the target policy with the
//!   server.
//! - [`api`]: the REST API, metrics and dashboard of either endpoint.
//! - [`shutdown`]: the signal and the drain, one type for both endpoints.
//! - [`cli`]: what the two binaries share: flags, `--config` files, logging, generated
//!   completions and man pages, one-line errors. It is the binaries' front end, and like them
//!   reports errors with `anyhow`; the modules above return typed errors.
//!
//! The adaptive congestion controller is a crate of its own, `quictun-congestion`.
pub mod api;
pub mod cli;
pub mod client;
mod lock;
pub mod plugins;
pub mod quic;
pub mod server;
pub mod shutdown;
pub mod tls;
pub mod tunnel;
pub mod wire;
