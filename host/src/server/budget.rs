//! The server-wide budget for data buffered for clients (`--max-buffered`, SPEC §7): receive
//! windows and send buffers.
//!
//! Flow-control windows are credit: a client that sends while its target never reads (or
//! that never reads what the server sends it) makes the server hold up to a window of data.
//! Each new connection's windows come out of what is left of the budget: a connection alone
//! gets [`Windows::FULL`], which a long fat link needs, and later ones less. A connection
//! always gets at least [`FLOOR`] per window, counted outside the budget, so stalled
//! connections can slow newcomers but never starve them; the worst case is the budget plus
//! connections × 2 × [`FLOOR`].

use std::sync::{Arc, Mutex};

use crate::lock::lock;
use crate::quic::Windows;

/// The least window a connection gets, whatever is left.
pub const FLOOR: u64 = 64 * 1024;

/// Bytes the server may commit to connections' windows.
#[derive(Debug)]
pub struct BufferBudget {
    total: u64,
    used: Mutex<u64>,
}

impl BufferBudget {
    pub fn new(total: u64) -> BufferBudget {
        BufferBudget {
            total,
            used: Mutex::new(0),
        }
    }

    /// Windows for a new connection, and the reservation that gives them back on drop.
    pub fn reserve(self: &Arc<Self>) -> (Windows, Reservation) {
        let full = Windows::FULL;
        let mut used = lock(&self.used);
        let left = self.total.saturating_sub(*used);
        // The receive window and the send buffer take equal shares.
        let window = full.connection.min(left / 2);
        if window < FLOOR {
            let floor = Windows {
                stream: FLOOR,
                connection: FLOOR,
                send: FLOOR,
            };
            return (floor, self.reservation(0));
        }
        *used += 2 * window;
        let windows = Windows {
            stream: full.stream.min(window),
            connection: window,
            send: window,
        };
        (windows, self.reservation(2 * window))
    }

    /// Bytes committed now.
    pub fn used(&self) -> u64 {
        *lock(&self.used)
    }

    fn reservation(self: &Arc<Self>, bytes: u64) -> Reservation {
        Reservation {
            budget: self.clone(),
            bytes,
        }
    }
}

/// One connection's share of the budget, given back on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<BufferBudget>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        *lock(&self.budget.used) -= self.bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn a_connection_alone_gets_full_windows() {
        let budget = Arc::new(BufferBudget::new(1024 * MIB));
        let (windows, _held) = budget.reserve();
        assert_eq!(windows, Windows::FULL);
        assert_eq!(budget.used(), 48 * MIB);
    }

    #[test]
    fn later_connections_share_what_is_left_and_never_get_less_than_the_floor() {
        let budget = Arc::new(BufferBudget::new(64 * MIB));
        let (first, a) = budget.reserve();
        assert_eq!(first.connection, 24 * MIB);
        let (second, b) = budget.reserve();
        assert_eq!(second.connection, 8 * MIB);
        assert_eq!(second.stream, 8 * MIB);
        assert_eq!(budget.used(), 64 * MIB);
        let (third, c) = budget.reserve();
        assert_eq!(third.connection, FLOOR);
        assert_eq!(budget.used(), 64 * MIB, "the floor is outside the budget");
        drop((a, b, c));
        assert_eq!(budget.used(), 0);
        assert_eq!(budget.reserve().0, Windows::FULL);
    }
}
