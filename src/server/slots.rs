//! Admission slots (SPEC §7 "Bounded"). A connection holds a *pending* slot from accept
//! until its session starts or it ends (TLS handshake, CONNECT, decision, dial, CONNACK),
//! and a *session* slot from its CONNECT on. Pending connections have their own cap, so
//! silent or slow peers can fill it but never the session slots.
//!
//! **Shedding the idle.** A full pending cap must not lock real clients out, so when it is
//! full the oldest pending connection that has made no progress is closed (outcome
//! `shed_idle`) to admit the newcomer. A connection is *idle* while it waits for its peer
//! to start the next step: from its first read until mqttgate has answered a complete
//! ClientHello, and between the end of the handshake (or of the WebSocket upgrade) and the
//! first byte after it. A connection whose task has not run yet is not idle: in a
//! reconnect storm a busy server is behind, not its clients, and shedding those would only
//! reset clients that did nothing wrong. A real client sends its ClientHello with the last
//! packet of the TCP handshake and its CONNECT with its last handshake flight, so it is
//! idle for moments only, whatever its round trip. It is *progressing* once that step has
//! started (a ClientHello answered, a CONNECT or
//! upgrade request under way, the decision, the dial) and is then never shed (one chosen
//! while idle that progresses in the microseconds before it hears so still goes). The
//! connection reports its steps through [`progress`], a task-local hook the TLS, upgrade
//! and packet readers call; [`Pending::watch`] runs its phases with that hook and ends them
//! when it is shed.
//!
//! Whose idle connection goes first: the oldest of a source address holding at least its
//! share (`max_pending_per_source`) of pending slots, else the oldest of all. So a flood
//! from one address sheds itself before a slow client elsewhere. The share no longer
//! refuses anything: an address may be a NAT in front of a whole fleet (a Kubernetes
//! Service with SNAT), and refusing its newcomers locked out every device behind it.
//!
//! When the cap is full and every pending connection is progressing, the accept loop stops
//! accepting (as HAProxy's `maxconn` does) and new connections wait in the kernel's backlog
//! instead of being reset: in a reconnect storm they are served as slots free up. The
//! limits: a peer that completes a ClientHello (a full key exchange on both sides) and then
//! stalls, or sends one byte after the handshake and stalls, counts as progressing until
//! its connect deadline; and a client whose ClientHello reaches us after its task first
//! reads (a lossy link) is idle meanwhile, so a flood opening more than a pending cap of
//! connections in that time can shed it (it reconnects).
//!
//! When the session slots are full, a connection still gets its TLS handshake and a
//! "server busy" CONNACK while there are busy answers left; past those it is closed at
//! accept without TLS work.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
#[cfg(test)]
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::config::Limits;

pub struct Slots {
    sessions: Arc<Semaphore>,
    pending: Arc<Semaphore>,
    busy: Arc<Semaphore>,
    table: Mutex<Table>,
    /// Woken when a pending connection becomes idle: the accept loop waiting on a full cap
    /// may then shed it for the next newcomer.
    became_idle: Notify,
    share: usize,
    totals: (u32, u32, u32),
    /// `mqttgate_connections_pending{state}`: queued, idle and progressing.
    gauges: [Gauge; 3],
}

/// The pending connections in accept order (ids only grow), and how many each source
/// address holds; an address leaves the map when its last one ends, so both hold at most
/// `max_pending` entries.
#[derive(Default)]
struct Table {
    next_id: u64,
    entries: BTreeMap<u64, Entry>,
    per_source: HashMap<IpAddr, usize>,
}

struct Entry {
    source: IpAddr,
    stage: Stage,
    /// The slot itself: shedding hands it straight to the newcomer.
    permit: OwnedSemaphorePermit,
    shed: Arc<Notify>,
}

/// Why a connection was closed by the admission slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtAccept {
    /// Sessions full and no busy answer left: closed at accept, before any TLS work.
    OverLimit,
    /// Shed while idle to admit a newer connection past the pending cap.
    ShedIdle,
}

/// How far a pending connection has come, in order; each step is either waiting on the
/// peer (idle) or under way (progressing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Accepted; its task has not run yet (not idle: the server is behind).
    Queued,
    /// Its task is reading; no complete ClientHello answered yet.
    Accepted,
    /// mqttgate has answered a complete ClientHello: the handshake is under way.
    Hello,
    /// The handshake is done; nothing has arrived since.
    Handshaken,
    /// The first bytes of the WebSocket upgrade request arrived.
    Upgrading,
    /// The upgrade is answered; no CONNECT byte yet.
    Upgraded,
    /// The first CONNECT byte arrived: the CONNECT, decision, dial and CONNACK follow.
    Connecting,
}

impl Stage {
    pub fn is_idle(self) -> bool {
        matches!(self, Stage::Accepted | Stage::Handshaken | Stage::Upgraded)
    }
}

tokio::task_local! {
    /// The pending connection whose phases run on this task (set by [`Pending::watch`]).
    static PROGRESS: (Arc<Slots>, u64);
}

/// Records that the connection served on this task reached `stage`; a no-op outside
/// [`Pending::watch`] (the relay, the tests of the readers) and for a stage already passed.
/// Called from the readers so the phases need no handle passed through them.
pub fn progress(stage: Stage) {
    let _ = PROGRESS.try_with(|(slots, id)| slots.advance(*id, stage));
}

/// A pending connection's slot; freed on drop.
pub struct Pending {
    id: u64,
    _busy: Option<OwnedSemaphorePermit>,
    shed: Arc<Notify>,
    slots: Arc<Slots>,
}

impl Pending {
    /// Runs the connection's phases, reporting their [`progress`]; ends them with
    /// [`AtAccept::ShedIdle`] if the connection is shed first.
    pub async fn watch<T>(&self, phases: impl Future<Output = T>) -> Result<T, AtAccept> {
        let shed = self.shed.notified();
        let phases = async {
            // Running now: from here, a peer that sends nothing is idle.
            progress(Stage::Accepted);
            phases.await
        };
        tokio::select! {
            biased;
            _ = shed => Err(AtAccept::ShedIdle),
            out = PROGRESS.scope((self.slots.clone(), self.id), phases) => Ok(out),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Already gone if it was shed: its slot went to the newcomer then.
        let slots = &self.slots;
        let entry = slots.remove(&mut slots.table(), self.id);
        drop(entry);
    }
}

impl Table {
    /// Takes `id` out, with its source's count; returns its slot.
    fn remove(&mut self, id: u64) -> Option<OwnedSemaphorePermit> {
        let entry = self.entries.remove(&id)?;
        if let Some(n) = self.per_source.get_mut(&entry.source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&entry.source);
            }
        }
        Some(entry.permit)
    }

    /// The oldest idle connection of a source holding at least `share` pending slots, else
    /// the oldest idle one.
    fn victim(&self, share: usize) -> Option<u64> {
        let mut oldest = None;
        for (&id, e) in self.entries.iter().filter(|(_, e)| e.stage.is_idle()) {
            if self.per_source.get(&e.source).copied().unwrap_or(0) >= share {
                return Some(id);
            }
            oldest.get_or_insert(id);
        }
        oldest
    }
}

impl Slots {
    pub fn new(limits: &Limits) -> Arc<Slots> {
        Slots::with_gauges(limits, Default::default())
    }

    /// With the gauges of queued, idle and progressing pending connections to keep.
    pub fn with_gauges(limits: &Limits, gauges: [Gauge; 3]) -> Arc<Slots> {
        Arc::new(Slots {
            sessions: Arc::new(Semaphore::new(limits.max_connections)),
            pending: Arc::new(Semaphore::new(limits.max_pending)),
            busy: Arc::new(Semaphore::new(limits.busy_answers)),
            table: Mutex::new(Table::default()),
            became_idle: Notify::new(),
            share: limits.max_pending_per_source,
            totals: (
                limits.max_connections as u32,
                limits.max_pending as u32,
                limits.busy_answers as u32,
            ),
            gauges,
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().expect("not poisoned")
    }

    fn gauge(&self, stage: Stage) -> &Gauge {
        match stage {
            Stage::Queued => &self.gauges[0],
            _ if stage.is_idle() => &self.gauges[1],
            _ => &self.gauges[2],
        }
    }

    fn advance(&self, id: u64, stage: Stage) {
        let mut table = self.table();
        let Some(entry) = table.entries.get_mut(&id) else {
            return;
        };
        if stage > entry.stage {
            self.gauge(entry.stage).dec();
            self.gauge(stage).inc();
            entry.stage = stage;
            drop(table);
            if stage.is_idle() {
                self.became_idle.notify_waiters();
            }
        }
    }

    /// Takes `id` out of the table, with its gauge; returns its slot.
    fn remove(&self, table: &mut Table, id: u64) -> Option<OwnedSemaphorePermit> {
        let stage = table.entries.get(&id)?.stage;
        self.gauge(stage).dec();
        table.remove(id)
    }

    fn any_idle(&self) -> bool {
        self.table().entries.values().any(|e| e.stage.is_idle())
    }

    /// What the accept loop holds before each accept: a free pending slot, or `None` when
    /// the cap is full but an idle connection could be shed for the next newcomer (see
    /// [`Slots::make_room`]). While the cap is full and nothing is idle, it waits and new
    /// connections wait in the backlog.
    pub async fn pending_slot(&self) -> Option<OwnedSemaphorePermit> {
        loop {
            // Registered before looking, so an entry turning idle in between still wakes us.
            let became_idle = self.became_idle.notified();
            tokio::pin!(became_idle);
            became_idle.as_mut().enable();
            if let Ok(permit) = self.pending.clone().try_acquire_owned() {
                return Some(permit);
            }
            if self.any_idle() {
                return None;
            }
            tokio::select! {
                permit = self.pending.clone().acquire_owned() => {
                    return Some(permit.expect("the semaphore is never closed"));
                }
                _ = became_idle => {}
            }
        }
    }

    /// A slot for a connection accepted while the cap was full: a slot freed meanwhile, else
    /// the slot of the idle connection `Table::victim` picks, which is told to close; if
    /// nothing is idle any more, the next slot to free. Says whether one was shed.
    pub async fn make_room(&self) -> (OwnedSemaphorePermit, bool) {
        if let Ok(permit) = self.pending.clone().try_acquire_owned() {
            return (permit, false);
        }
        let shed = {
            let mut table = self.table();
            table.victim(self.share).map(|id| {
                let shed = table.entries[&id].shed.clone();
                let permit = self.remove(&mut table, id);
                (permit.expect("the victim is in the table"), shed)
            })
        };
        match shed {
            Some((permit, signal)) => {
                // Stored if the connection is not waiting yet: it sees it on its next poll.
                signal.notify_one();
                (permit, true)
            }
            None => {
                let permit = self.pending.clone().acquire_owned().await;
                (permit.expect("the semaphore is never closed"), false)
            }
        }
    }

    /// True when an accepted connection would be closed at once for want of a session slot
    /// and a busy answer; nothing is shed for such a connection.
    pub fn over_limit(&self) -> bool {
        self.sessions.available_permits() == 0 && self.busy.available_permits() == 0
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
        let shed = Arc::new(Notify::new());
        let mut table = self.table();
        let id = table.next_id;
        table.next_id += 1;
        *table.per_source.entry(source).or_default() += 1;
        self.gauge(Stage::Queued).inc();
        table.entries.insert(
            id,
            Entry {
                source,
                stage: Stage::Queued,
                permit,
                shed: shed.clone(),
            },
        );
        drop(table);
        Ok(Pending {
            id,
            _busy: busy,
            shed,
            slots: self.clone(),
        })
    }

    /// The stages of the pending connections, oldest first (for the readers' tests).
    #[cfg(test)]
    pub(crate) fn stages(&self) -> Vec<Stage> {
        self.table().entries.values().map(|e| e.stage).collect()
    }

    /// Slots holding one pending connection (from 192.0.2.1), for the readers' tests.
    #[cfg(test)]
    pub(crate) fn one_pending() -> (Arc<Slots>, Pending) {
        let second = Duration::from_secs(1);
        let slots = Slots::new(&Limits {
            connect_timeout: second,
            dial_timeout: second,
            max_connect_bytes: 1024,
            max_connections: 1,
            busy_answers: 0,
            max_pending: 1,
            max_pending_per_source: 1,
            drain_timeout: second,
            listen_backlog: 16,
            linger: second,
        });
        let permit = slots.pending.clone().try_acquire_owned().unwrap();
        let pending = slots.admit(permit, [192, 0, 2, 1].into()).unwrap();
        (slots, pending)
    }

    /// Waits (up to 10 s) until the only pending connection is at `stage`.
    #[cfg(test)]
    pub(crate) async fn reaches(&self, stage: Stage) {
        let waited = tokio::time::timeout(Duration::from_secs(10), async {
            while self.stages() != [stage] {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "stuck at {:?}, not {stage:?}",
            self.stages()
        );
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

    async fn slot(s: &Slots) -> OwnedSemaphorePermit {
        s.pending_slot().await.expect("a free slot")
    }

    /// Admitted, and its task has run: idle until it reports progress.
    async fn running(s: &Arc<Slots>, ip: IpAddr) -> Pending {
        let p = s.admit(slot(s).await, ip).unwrap();
        report(&p, Stage::Accepted).await;
        p
    }

    /// Runs `stage` as reported by the connection `p`.
    async fn report(p: &Pending, stage: Stage) {
        p.watch(async { progress(stage) }).await.unwrap();
    }

    fn is_shed(p: &Pending) -> bool {
        p.watch(std::future::pending::<()>())
            .now_or_never()
            .is_some()
    }

    use futures_now::NowOrNever;
    mod futures_now {
        /// Polls a future once (the tests' `now_or_never`, without the futures crate).
        pub trait NowOrNever: std::future::Future + Sized {
            fn now_or_never(self) -> Option<Self::Output> {
                let waker = std::task::Waker::noop();
                let mut cx = std::task::Context::from_waker(waker);
                let mut f = std::pin::pin!(self);
                match f.as_mut().poll(&mut cx) {
                    std::task::Poll::Ready(x) => Some(x),
                    std::task::Poll::Pending => None,
                }
            }
        }
        impl<F: std::future::Future> NowOrNever for F {}
    }

    #[tokio::test]
    async fn a_source_past_its_share_is_still_admitted() {
        let s = Slots::new(&limits(10, 10, 2, 0));
        let mut pending = Vec::new();
        for _ in 0..5 {
            pending.push(s.admit(slot(&s).await, A).expect("never refused by source"));
        }
        assert_eq!(s.table().per_source[&A], 5);
    }

    #[tokio::test]
    async fn the_source_map_forgets_addresses_with_nothing_pending() {
        let s = Slots::new(&limits(10, 10, 2, 0));
        for i in 0..100u32 {
            let p = s.admit(slot(&s).await, IpAddr::from(i.to_be_bytes()));
            drop(p);
        }
        let table = s.table();
        assert!(table.per_source.is_empty() && table.entries.is_empty());
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
        assert!(s.over_limit());
        let next = s.pending.clone().try_acquire_owned().unwrap();
        assert_eq!(s.admit(next, B).err(), Some(AtAccept::OverLimit));
        drop(session);
        assert!(s.session().is_some());
    }

    #[tokio::test]
    async fn a_full_cap_of_progressing_connections_makes_the_accept_loop_wait() {
        let s = Slots::new(&limits(10, 1, 1, 0));
        let held = s.admit(slot(&s).await, A).unwrap();
        report(&held, Stage::Hello).await;
        let waiting = tokio::time::timeout(Duration::from_millis(50), s.pending_slot()).await;
        assert!(waiting.is_err(), "a second pending slot was handed out");
        drop(held);
        let again = tokio::time::timeout(Duration::from_secs(1), s.pending_slot()).await;
        assert!(matches!(again, Ok(Some(_))), "the freed slot is handed out");
    }

    #[tokio::test]
    async fn the_oldest_idle_connection_is_shed_and_its_slot_handed_over() {
        let s = Slots::new(&limits(10, 3, 3, 0));
        let oldest = running(&s, A).await;
        let busy = running(&s, B).await;
        let newer = running(&s, B).await;
        // The oldest is progressing: the next oldest idle one goes.
        report(&oldest, Stage::Hello).await;
        assert!(s.pending_slot().await.is_none(), "something idle to shed");
        let (permit, shed) = s.make_room().await;
        assert!(shed);
        assert!(is_shed(&busy) && !is_shed(&oldest) && !is_shed(&newer));
        let newcomer = s.admit(permit, A).unwrap();
        report(&newcomer, Stage::Accepted).await;
        // Its Pending dropping later gives nothing back twice.
        drop(busy);
        assert_eq!(s.pending.available_permits(), 0);
        assert_eq!(s.table().entries.len(), 3);
        // Two idle (the newcomer and `newer`), one progressing.
        assert_eq!(s.gauges.each_ref().map(Gauge::get), [0, 2, 1]);
    }

    #[tokio::test]
    async fn a_progressing_connection_is_never_shed() {
        let s = Slots::new(&limits(10, 2, 2, 0));
        let a = s.admit(slot(&s).await, A).unwrap();
        let b = s.admit(slot(&s).await, A).unwrap();
        report(&a, Stage::Connecting).await;
        report(&b, Stage::Hello).await;
        // Idle again only between steps: after the handshake, until the next byte.
        report(&b, Stage::Handshaken).await;
        assert!(s.pending_slot().await.is_none());
        report(&b, Stage::Connecting).await;
        // Nothing idle: make_room waits for a slot to free, sheds nothing.
        let room = tokio::time::timeout(Duration::from_millis(50), s.make_room()).await;
        assert!(room.is_err());
        assert!(!is_shed(&a) && !is_shed(&b));
        // A stage already passed is not gone back to.
        report(&a, Stage::Handshaken).await;
        assert!(!s.any_idle());
    }

    #[tokio::test]
    async fn a_connection_turning_idle_wakes_the_waiting_accept_loop() {
        let s = Slots::new(&limits(10, 1, 1, 0));
        let held = s.admit(slot(&s).await, A).unwrap();
        report(&held, Stage::Hello).await;
        let s2 = s.clone();
        let waiting = tokio::spawn(async move { s2.pending_slot().await.is_none() });
        tokio::task::yield_now().await;
        report(&held, Stage::Handshaken).await;
        let woke = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert!(matches!(woke, Ok(Ok(true))), "{woke:?}");
    }

    #[tokio::test]
    async fn a_source_holding_its_share_is_shed_first() {
        let s = Slots::new(&limits(10, 4, 3, 0));
        let slow_elsewhere = running(&s, B).await;
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(running(&s, A).await);
        }
        let (_permit, shed) = s.make_room().await;
        assert!(shed);
        assert!(
            !is_shed(&slow_elsewhere),
            "the older idle one elsewhere stays"
        );
        assert!(is_shed(&held[0]));
        // Below its share, the oldest idle of all goes again.
        let (_permit, _) = s.make_room().await;
        assert!(is_shed(&slow_elsewhere));
    }

    #[tokio::test]
    async fn a_connection_whose_task_has_not_run_is_not_shed() {
        let s = Slots::new(&limits(10, 2, 2, 0));
        // Accepted by a server too busy to have run its task yet: not the client's fault.
        let queued = s.admit(slot(&s).await, A).unwrap();
        let _progressing = s.admit(slot(&s).await, B).unwrap();
        report(&_progressing, Stage::Hello).await;
        let waiting = tokio::time::timeout(Duration::from_millis(50), s.pending_slot()).await;
        assert!(waiting.is_err(), "nothing is idle yet");
        assert_eq!(s.gauges.each_ref().map(Gauge::get), [1, 0, 1]);
        // Once it runs and its client has sent nothing, it is idle.
        report(&queued, Stage::Accepted).await;
        assert!(s.pending_slot().await.is_none());
        let (_, shed) = s.make_room().await;
        assert!(shed && is_shed(&queued));
    }
}
