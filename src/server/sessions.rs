//! SPEC §10, Azure's session model: how many sessions one authentication name may hold on
//! this instance, and how often one session may connect.
//!
//! A session is (authentication name, session name); the session name is the MQTT ClientId
//! (under `client_id = "authentication-name"` every connection of a name is the one
//! session the broker sees, so they all share the session name ""). A connection with a
//! session name its identity already holds takes that session over, as the broker will;
//! one with a new name needs a free place under `max_per_authentication_name`. The connect
//! rate is kept per session, so no identity can slow another down.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why a connection's session was refused; each is one metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionRefusal {
    /// The authentication name holds `max_per_authentication_name` other sessions.
    QuotaExceeded,
    /// This session connected less than one interval ago.
    RateExceeded,
}

/// The session names each authentication name holds, and each session's last admitted
/// connect.
pub struct Sessions {
    inner: Mutex<Inner>,
    max_per_name: usize,
    /// None: no connect rate.
    interval: Option<Duration>,
}

#[derive(Default)]
struct Inner {
    /// Per authentication name: its live sessions, each with the connections (claims)
    /// that hold it. A session is held while any connection of it is live (SPEC §13: a
    /// takeover the broker refuses never frees the earlier holder's place).
    live: HashMap<String, Vec<(String, Vec<u64>)>>,
    next_claim: u64,
    /// Per session: when it was last admitted. Entries older than one interval are
    /// forgotten, so the map holds at most the sessions admitted in the last interval plus
    /// what accumulated since the last sweep, which is bounded by doubling.
    admitted: HashMap<(String, String), Instant>,
    sweep_at: usize,
}

impl Sessions {
    pub fn new(max_per_name: usize, connects_per_second: f64) -> Arc<Sessions> {
        Arc::new(Sessions {
            inner: Mutex::new(Inner {
                sweep_at: 1024,
                ..Inner::default()
            }),
            max_per_name,
            // The configuration keeps the rate within 1/day..=1e6/s, so this is a Duration.
            interval: (connects_per_second > 0.0)
                .then(|| Duration::from_secs_f64(1.0 / connects_per_second)),
        })
    }

    /// Admits a connection of `session` for `name`, or says why not. The claim holds the
    /// session until it is dropped; a newer connection of the same session holds it too.
    /// `assigned`: mqttgate named the session for an empty ClientId; such sessions share
    /// one connect rate per identity. A refused attempt starts no rate interval.
    /// Without a limit on sessions per name there is nothing to hold: None, and no memory
    /// kept per session (only the connect rate's entry, when there is a rate).
    pub fn claim(
        self: &Arc<Self>,
        name: &str,
        session: &str,
        assigned: bool,
        now: Instant,
    ) -> Result<Option<SessionClaim>, SessionRefusal> {
        if self.max_per_name == usize::MAX && self.interval.is_none() {
            return Ok(None);
        }
        let mut inner = self.inner.lock().expect("not poisoned");
        let inner = &mut *inner;
        let rate_key = self.interval.map(|_| {
            let session = if assigned { "" } else { session };
            (name.to_string(), session.to_string())
        });
        if let (Some(interval), Some(key)) = (self.interval, &rate_key) {
            if let Some(last) = inner.admitted.get(key) {
                if now.saturating_duration_since(*last) < interval {
                    return Err(SessionRefusal::RateExceeded);
                }
            }
        }
        let claim = match self.max_per_name {
            usize::MAX => None,
            max => {
                inner.next_claim += 1;
                let id = inner.next_claim;
                let held = inner.live.entry(name.to_string()).or_default();
                let takeover = match held.iter().position(|(s, _)| s == session) {
                    Some(i) => {
                        held[i].1.push(id);
                        true
                    }
                    None if held.len() >= max => {
                        if held.is_empty() {
                            inner.live.remove(name);
                        }
                        return Err(SessionRefusal::QuotaExceeded);
                    }
                    None => {
                        held.push((session.to_string(), vec![id]));
                        false
                    }
                };
                Some(SessionClaim {
                    sessions: self.clone(),
                    name: name.to_string(),
                    session: session.to_string(),
                    id,
                    takeover,
                })
            }
        };
        if let (Some(interval), Some(key)) = (self.interval, rate_key) {
            if inner.admitted.len() >= inner.sweep_at {
                inner
                    .admitted
                    .retain(|_, t| now.saturating_duration_since(*t) < interval);
                inner.sweep_at = (inner.admitted.len() * 2).max(1024);
            }
            inner.admitted.insert(key, now);
        }
        Ok(claim)
    }

    /// Live sessions of `name` (for tests and `explain`).
    pub fn held(&self, name: &str) -> usize {
        let inner = self.inner.lock().expect("not poisoned");
        inner.live.get(name).map_or(0, Vec::len)
    }

    fn release(&self, name: &str, session: &str, id: u64) {
        let mut inner = self.inner.lock().expect("not poisoned");
        if let Some(held) = inner.live.get_mut(name) {
            if let Some(i) = held.iter().position(|(s, _)| s == session) {
                held[i].1.retain(|c| *c != id);
                if held[i].1.is_empty() {
                    held.swap_remove(i);
                }
            }
            if held.is_empty() {
                inner.live.remove(name);
            }
        }
    }
}

/// A session held by one connection; released when dropped.
pub struct SessionClaim {
    sessions: Arc<Sessions>,
    name: String,
    session: String,
    id: u64,
    /// The connection took over a session its identity already held.
    pub takeover: bool,
}

impl Drop for SessionClaim {
    fn drop(&mut self) {
        self.sessions.release(&self.name, &self.session, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_counts_session_names_and_the_same_name_takes_over() {
        let s = Sessions::new(2, 0.0);
        let now = Instant::now();
        let a = s
            .claim("dev", "one", false, now)
            .unwrap()
            .expect("held under a limit");
        let _b = s.claim("dev", "two", false, now).unwrap();
        assert_eq!(
            s.claim("dev", "three", false, now).err(),
            Some(SessionRefusal::QuotaExceeded)
        );
        // Another identity is unaffected by dev's sessions.
        let _c = s.claim("other", "one", false, now).unwrap();
        // "one" again: a takeover, not a third session.
        let a2 = s
            .claim("dev", "one", false, now)
            .unwrap()
            .expect("held under a limit");
        assert!(a2.takeover && !a.takeover);
        assert_eq!(s.held("dev"), 2);
        // The old connection ending does not free the session the new one holds.
        drop(a);
        assert_eq!(s.held("dev"), 2);
        drop(a2);
        assert_eq!(s.held("dev"), 1);
        assert!(s.claim("dev", "three", false, now).is_ok());
    }

    #[test]
    fn without_a_limit_nothing_is_held_and_the_rate_still_applies() {
        let now = Instant::now();
        // Neither limit: no claim, no entry, whatever the fleet shares one identity.
        let s = Sessions::new(usize::MAX, 0.0);
        let claims: Vec<_> = (0..1000)
            .map(|i| s.claim("fleet", &format!("c{i}"), false, now).unwrap())
            .collect();
        assert!(claims.iter().all(Option::is_none));
        assert_eq!(s.held("fleet"), 0);
        assert!(s.inner.lock().unwrap().admitted.is_empty());
        // A connect rate without a session limit: the rate is kept, no session is held.
        let s = Sessions::new(usize::MAX, 1.0);
        assert!(s.claim("fleet", "c1", false, now).unwrap().is_none());
        assert_eq!(
            s.claim("fleet", "c1", false, now).err(),
            Some(SessionRefusal::RateExceeded)
        );
        assert!(s.claim("fleet", "c2", false, now).is_ok());
        assert_eq!(s.held("fleet"), 0);
    }

    #[test]
    fn assigned_sessions_share_one_rate_per_identity() {
        let s = Sessions::new(10, 1.0);
        let now = Instant::now();
        let _a = s.claim("dev", "gen-1", true, now).unwrap();
        assert_eq!(
            s.claim("dev", "gen-2", true, now).err(),
            Some(SessionRefusal::RateExceeded)
        );
    }

    #[test]
    fn a_session_is_held_while_any_of_its_connections_is_live() {
        let s = Sessions::new(1, 0.0);
        let now = Instant::now();
        let holder = s.claim("dev", "alpha", false, now).unwrap();
        // A takeover whose connection the broker then refuses: its claim ends first.
        let refused = s.claim("dev", "alpha", false, now).unwrap();
        drop(refused);
        assert_eq!(s.held("dev"), 1, "the holder still holds alpha");
        assert_eq!(
            s.claim("dev", "beta", false, now).err(),
            Some(SessionRefusal::QuotaExceeded)
        );
        drop(holder);
        assert_eq!(s.held("dev"), 0);
    }

    #[test]
    fn a_quota_refusal_starts_no_rate_interval() {
        let s = Sessions::new(1, 0.1);
        let t0 = Instant::now();
        let holder = s.claim("dev", "alpha", false, t0).unwrap();
        assert_eq!(
            s.claim("dev", "beta", false, t0).err(),
            Some(SessionRefusal::QuotaExceeded)
        );
        drop(holder);
        assert!(s.claim("dev", "beta", false, t0).is_ok());
    }

    #[test]
    fn the_rate_is_per_session_and_refusals_do_not_extend_it() {
        let s = Sessions::new(10, 1.0);
        let t0 = Instant::now();
        drop(s.claim("dev", "one", false, t0).unwrap());
        assert_eq!(
            s.claim("dev", "one", false, t0 + Duration::from_millis(500))
                .err(),
            Some(SessionRefusal::RateExceeded)
        );
        // Other sessions, of this identity or another, are not slowed down.
        assert!(s.claim("dev", "two", false, t0).is_ok());
        assert!(s.claim("other", "one", false, t0).is_ok());
        // One interval after the last admitted attempt (not the refused one).
        assert!(s
            .claim("dev", "one", false, t0 + Duration::from_millis(1000))
            .is_ok());
    }

    #[test]
    fn forgotten_rates_keep_the_map_bounded() {
        let s = Sessions::new(1, 1.0);
        let t0 = Instant::now();
        for i in 0..5000 {
            let at = t0 + Duration::from_millis(i * 10);
            drop(s.claim(&format!("dev-{i}"), "x", false, at).unwrap());
        }
        let len = s.inner.lock().unwrap().admitted.len();
        // Only the last second's (100) plus what accumulated since the last sweep.
        assert!(len <= 2048, "{len}");
        assert_eq!(
            s.inner.lock().unwrap().live.len(),
            0,
            "released claims leave no entry"
        );
    }
}
