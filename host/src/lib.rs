//! quic-tun: carries TCP and UNIX-socket application connections as streams of one encrypted
//! QUIC connection.
pub mod addr;
pub mod app;
pub mod wire;
