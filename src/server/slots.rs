//! Admission slots (SPEC §7 "Bounded"). A connection holds a *pending* slot from accept
//! until its session starts or it ends (TLS handshake, CONNECT, decision, dial, CONNACK),
//! and a *session* slot from its CONNECT on. Pending connections have their own cap, so
//! silent or slow peers can fill it but never the session slots; and one source address
//! may hold only a share of it, so one host can't fill it either.
//!
//! When the pending cap is full, the accept loop stops accepting (as HAProxy's `maxconn`
//! does) and new connections wait in the kernel's backlog instead of being reset: in a
//! reconnect storm they are served as slots free up. When the session slots are full, a
//! connection still gets its TLS handshake and a "server busy" CONNACK while there are busy
//! answers left; past those it is closed at accept without TLS work.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Limits;

pub struct Slots {
    sessions: Arc<Semaphore>,
    pending: Arc<Semaphore>,
    busy: Arc<Semaphore>,
    /// Pending connections per source address; an address leaves the map when its last
    /// one ends, so the map holds at most `max_pending` entries.
    per_source: Mutex<HashMap<IpAddr, usize>>,
    max_per_source: usize,
    totals: (u32, u32, u32),
}

/// Why a connection was closed at accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtAccept {
    /// Sessions full and no busy answer left.
    OverLimit,
    /// Its source address holds its share of pending slots.
    SourceOverLimit,
}

/// A pending connection's slot; freed on drop.
pub struct Pending {
    _permit: OwnedSemaphorePermit,
    _busy: Option<OwnedSemaphorePermit>,
    source: IpAddr,
    slots: Arc<Slots>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut map = self.slots.per_source.lock().expect("not poisoned");
        if let Some(n) = map.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.source);
            }
        }
    }
}

impl Slots {
    pub fn new(limits: &Limits) -> Arc<Slots> {
        Arc::new(Slots {
            sessions: Arc::new(Semaphore::new(limits.max_connections)),
            pending: Arc::new(Semaphore::new(limits.max_pending)),
            busy: Arc::new(Semaphore::new(limits.busy_answers)),
            per_source: Mutex::new(HashMap::new()),
            max_per_source: limits.max_pending_per_source,
            totals: (
                limits.max_connections as u32,
                limits.max_pending as u32,
                limits.busy_answers as u32,
            ),
        })
    }

    /// Waits for a free pending slot: the accept loop calls this before each accept.
    pub async fn pending_slot(&self) -> OwnedSemaphorePermit {
        self.pending
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// Admits an accepted connection from `source` into its pending slot, or says why it
    /// is closed at once.
    pub fn admit(
        self: &Arc<Self>,
        permit: OwnedSemaphorePermit,
        source: IpAddr,
    ) -> Result<Pending, AtAccept> {
        let busy = if self.sessions.available_permits() == 0 {
            Some(
                self.busy
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| AtAccept::OverLimit)?,
            )
        } else {
            None
        };
        let mut map = self.per_source.lock().expect("not poisoned");
        let n = map.entry(source).or_default();
        if *n >= self.max_per_source {
            if *n == 0 {
                map.remove(&source);
            }
            return Err(AtAccept::SourceOverLimit);
        }
        *n += 1;
        drop(map);
        Ok(Pending {
            _permit: permit,
            _busy: busy,
            source,
            slots: self.clone(),
        })
    }

    /// A session slot, taken once the CONNECT is read; None when all are in use.
    pub fn session(&self) -> Option<OwnedSemaphorePermit> {
        self.sessions.clone().try_acquire_owned().ok()
    }

    /// Resolves once no connection holds any slot.
    pub async fn idle(&self) {
        let (sessions, pending, busy) = self.totals;
        let _p = self.pending.acquire_many(pending).await;
        let _s = self.sessions.acquire_many(sessions).await;
        if busy > 0 {
            let _b = self.busy.acquire_many(busy).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(sessions: usize, pending: usize, per_source: usize, busy: usize) -> Limits {
        Limits {
            connect_timeout: Duration::from_secs(1),
            dial_timeout: Duration::from_secs(1),
            max_connect_bytes: 1024,
            max_connections: sessions,
            busy_answers: busy,
            max_pending: pending,
            max_pending_per_source: per_source,
            drain_timeout: Duration::from_secs(1),
            listen_backlog: 16,
            linger: Duration::from_secs(1),
        }
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[tokio::test]
    async fn a_source_holds_at_most_its_share_and_gets_it_back_when_one_ends() {
        let s = Slots::new(&limits(10, 10, 2, 0));
        let a1 = s.admit(s.pending_slot().await, A).unwrap();
        let _a2 = s.admit(s.pending_slot().await, A).unwrap();
        assert_eq!(
            s.admit(s.pending_slot().await, A).err(),
            Some(AtAccept::SourceOverLimit)
        );
        assert!(s.admit(s.pending_slot().await, B).is_ok());
        drop(a1);
        assert!(s.admit(s.pending_slot().await, A).is_ok());
    }

    #[tokio::test]
    async fn the_source_map_forgets_addresses_with_nothing_pending() {
        let s = Slots::new(&limits(10, 10, 2, 0));
        for i in 0..100u32 {
            let p = s.admit(s.pending_slot().await, IpAddr::from(i.to_be_bytes()));
            drop(p);
        }
        assert!(s.per_source.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn pending_connections_never_use_session_slots() {
        let s = Slots::new(&limits(1, 4, 4, 0));
        let pending: Vec<_> = [A, A, B]
            .into_iter()
            .map(|ip| s.admit(s.pending.clone().try_acquire_owned().unwrap(), ip))
            .collect();
        assert!(pending.iter().all(Result::is_ok));
        let session = s.session().expect("the session slot is free");
        // Sessions full: without busy answers, the next connection is closed at accept.
        let next = s.pending.clone().try_acquire_owned().unwrap();
        assert_eq!(s.admit(next, B).err(), Some(AtAccept::OverLimit));
        drop(session);
        assert!(s.session().is_some());
    }

    #[tokio::test]
    async fn the_pending_cap_makes_the_accept_loop_wait() {
        let s = Slots::new(&limits(10, 1, 1, 0));
        let held = s.admit(s.pending_slot().await, A).unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(50), s.pending_slot()).await;
        assert!(waiting.is_err(), "a second pending slot was handed out");
        drop(held);
        let again = tokio::time::timeout(Duration::from_secs(1), s.pending_slot()).await;
        assert!(again.is_ok(), "the freed slot is handed out");
    }
}
