//! quic-tun: carries TCP and UNIX-socket application connections as streams of one encrypted
//! QUIC connection.
pub mod addr;
pub mod api;
pub mod app;
pub mod check;
pub mod cli;
pub mod client;
pub mod config;
pub mod connections;
pub mod connector;
pub mod generate;
pub mod identity;
pub mod known_hosts;
mod lock;
pub mod plugins;
pub mod policy;
pub mod relay;
pub mod server;
pub mod sniff;
pub mod tls;
pub mod transport;
pub mod tunnel;
pub mod wire;
