//! What guards a control port (the node's, the manager's): a cap on
//! concurrent connections in all and per source address, the TLS
//! handshake, and the counters of what was refused.
//!
//! A connection over a cap is closed at once, before any thread or TLS
//! state is spent on it. A handshake that fails (no TLS, no certificate of
//! the cluster CA) or does not finish within
//! [`HANDSHAKE_TIMEOUT`](super::tls::HANDSHAKE_TIMEOUT) is closed and
//! counted.

use super::tls::{is_timeout, SecureStream, TlsIdentity};
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

/// Default cap on a port's concurrent control connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// Default cap on a port's concurrent control connections from one address.
pub const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: usize = 4;
/// A frame that has started must be complete within this, however its
/// sender paces its bytes; a sender that stalls mid-frame is cut off.
pub const FRAME_DEADLINE: Duration = Duration::from_secs(5);

/// The caps on a control port's concurrent connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// In all.
    pub total: usize,
    /// From one source address.
    pub per_source: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            total: DEFAULT_MAX_CONNECTIONS,
            per_source: DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
        }
    }
}

/// Counters of a control port, shown by `handoff stats`.
#[derive(Debug, Default)]
pub struct SessionCounters {
    /// Connections accepted past the caps and the handshake.
    pub sessions_accepted: AtomicU64,
    /// Connections closed unserved: over a cap.
    pub connections_refused: AtomicU64,
    /// TLS handshakes that failed: no TLS, no client certificate, a
    /// certificate of another CA.
    pub handshakes_refused: AtomicU64,
    /// Authenticated peers refused: the identity their first message claims
    /// is not their certificate's, or not a configured member.
    pub peers_refused: AtomicU64,
    /// Sessions closed because the peer stalled mid-handshake or mid-frame.
    pub sessions_timed_out: AtomicU64,
}

impl SessionCounters {
    /// The counters as a JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "sessions_accepted": get(&self.sessions_accepted),
            "connections_refused": get(&self.connections_refused),
            "handshakes_refused": get(&self.handshakes_refused),
            "peers_refused": get(&self.peers_refused),
            "sessions_timed_out": get(&self.sessions_timed_out),
        })
    }

    /// Counts one.
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// A control port's guard: caps, TLS, counters.
#[derive(Debug)]
pub struct Gate {
    limits: ConnectionLimits,
    open: Mutex<Open>,
    tls: TlsIdentity,
    /// What was accepted and refused.
    pub counters: Arc<SessionCounters>,
}

/// One admitted connection's place under the caps; freed when dropped.
#[derive(Debug)]
pub struct Permit {
    gate: Arc<Gate>,
    source: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.gate.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                open.by_source.remove(&self.source);
            }
        }
    }
}

impl Gate {
    /// A gate with `limits` that authenticates with `tls`.
    pub fn new(limits: ConnectionLimits, tls: TlsIdentity, counters: Arc<SessionCounters>) -> Arc<Self> {
        Arc::new(Self {
            limits,
            open: Mutex::default(),
            tls,
            counters,
        })
    }

    /// A place for a connection from `source`, or `None` (counted) when a
    /// cap is reached.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Option<Permit> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let from_source = open.by_source.get(&source).copied().unwrap_or(0);
        if open.total >= self.limits.total || from_source >= self.limits.per_source {
            drop(open);
            SessionCounters::count(&self.counters.connections_refused);
            tracing::warn!(%source, limits = ?self.limits, "control connection refused: over the cap");
            return None;
        }
        open.total += 1;
        *open.by_source.entry(source).or_default() += 1;
        Some(Permit {
            gate: Arc::clone(self),
            source,
        })
    }

    /// Runs the TLS handshake on an admitted connection; a failure or a
    /// timeout is counted and logged, and the connection closed.
    pub fn handshake(&self, socket: TcpStream, from: SocketAddr) -> Option<SecureStream> {
        if socket.set_nonblocking(false).is_err() {
            return None;
        }
        match self.tls.accept(socket) {
            Ok(stream) => {
                SessionCounters::count(&self.counters.sessions_accepted);
                Some(stream)
            }
            Err(e) if is_timeout(&e) => {
                SessionCounters::count(&self.counters.sessions_timed_out);
                tracing::warn!(%from, "control connection closed: the TLS handshake stalled");
                None
            }
            Err(e) => {
                SessionCounters::count(&self.counters.handshakes_refused);
                tracing::warn!(%from, error = %e, "control connection refused: TLS handshake failed");
                None
            }
        }
    }

    /// Counts and logs the refusal of an authenticated peer.
    pub fn refuse_peer(&self, from: &str, claimed: &str, why: &str) {
        SessionCounters::count(&self.counters.peers_refused);
        tracing::warn!(%from, claimed, why, "control peer refused");
    }

    /// Counts a session cut off because the peer stalled mid-frame.
    pub fn timed_out(&self, from: &str) {
        SessionCounters::count(&self.counters.sessions_timed_out);
        tracing::warn!(%from, "control session closed: the peer stalled mid-frame");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::keys::{tests::identities, Party};

    fn gate(limits: ConnectionLimits) -> Arc<Gate> {
        let tls = identities("gate", &[Party::Node(1)]).remove(0);
        Gate::new(limits, tls, Arc::default())
    }

    #[test]
    fn caps_hold_in_all_and_per_source_and_free_on_drop() {
        let gate = gate(ConnectionLimits {
            total: 3,
            per_source: 2,
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let first = gate.admit(a).expect("first from a");
        let _second = gate.admit(a).expect("second from a");
        assert!(gate.admit(a).is_none(), "a third from a is over the per-source cap");
        let _from_b = gate.admit(b).expect("b");
        assert!(gate.admit(c).is_none(), "a fourth in all is over the total cap");
        assert_eq!(gate.counters.connections_refused.load(Ordering::Relaxed), 2);
        drop(first);
        let _again = gate.admit(a).expect("a's place was freed");
        assert!(gate.admit(c).is_none());
        assert_eq!(gate.counters.connections_refused.load(Ordering::Relaxed), 3);
    }
}
