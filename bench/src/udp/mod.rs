//! The UDP suite's application side: the target that echoes or sinks datagrams ([`target`]),
//! the windowed and paced senders ([`senders`]), the pinger ([`ping`]), summaries of delays
//! ([`delay`]) and the kernel's UDP counters ([`snmp`]).

pub mod delay;
pub mod ping;
pub mod senders;
pub mod snmp;
pub mod target;
