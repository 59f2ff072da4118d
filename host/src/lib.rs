//! quic-tun: carries TCP and UNIX-socket application connections as streams of one encrypted
//! QUIC connection.
pub mod addr;
pub mod app;
pub mod cli;
pub mod client;
pub mod congestion;
pub mod connections;
pub mod plugins;
pub mod relay;
pub mod server;
pub mod sniff;
pub mod tls;
pub mod transport;
pub mod tunnel;
pub mod wire;
