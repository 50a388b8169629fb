//! One subscription's bounded queue: in order while there is room, then conflated to the
//! latest event per topic, then closed (the policy is in [`super::fanout`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::event::{Delivery, EventKind, LiveEvent};

pub(super) enum PushOutcome {
    Queued,
    Conflated { superseded: bool },
    ClosedNow,
    Closed,
}

#[derive(Debug)]
pub(super) struct Queue {
    state: Mutex<QueueState>,
    pub(super) notify: Notify,
}

#[derive(Debug)]
struct QueueState {
    items: VecDeque<Arc<LiveEvent>>,
    capacity: usize,
    /// Seq of the last event queued in order (the resume cursor if a hole starts now).
    last_in_order: u64,
    conflation: Option<Conflation>,
    closed: bool,
}

#[derive(Debug)]
struct Conflation {
    since: Instant,
    resume_after: u64,
    latest: HashMap<Arc<str>, Arc<LiveEvent>>,
    dropped: u64,
}

impl Queue {
    /// Events waiting (in order and conflated), and whether the queue conflates; `None` if
    /// its lock is poisoned.
    pub(super) fn depth(&self) -> Option<(usize, bool)> {
        let st = self.state.lock().ok()?;
        let conflated = st.conflation.as_ref().map_or(0, |c| c.latest.len());
        Some((st.items.len() + conflated, st.conflation.is_some()))
    }

    pub(super) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(QueueState {
                items: VecDeque::with_capacity(capacity.min(64)),
                capacity: capacity.max(1),
                last_in_order: 0,
                conflation: None,
                closed: false,
            }),
            notify: Notify::new(),
        }
    }

    pub(super) fn push(
        &self,
        ev: &Arc<LiveEvent>,
        now: Instant,
        max_topics: usize,
        lag_timeout: Duration,
    ) -> PushOutcome {
        let Ok(mut st) = self.state.lock() else {
            return PushOutcome::Closed;
        };
        if st.closed {
            return PushOutcome::Closed;
        }
        let outcome = if st.conflation.is_none() && st.items.len() < st.capacity {
            st.items.push_back(ev.clone());
            if ev.kind == EventKind::Reading {
                st.last_in_order = ev.seq;
            }
            PushOutcome::Queued
        } else {
            let resume_after = st.last_in_order;
            let c = st.conflation.get_or_insert_with(|| Conflation {
                since: now,
                resume_after,
                latest: HashMap::new(),
                dropped: 0,
            });
            let superseded = c.latest.insert(ev.topic.clone(), ev.clone()).is_some()
                // Only readings count as lost data; a superseded status is just old news.
                && ev.kind == EventKind::Reading;
            if superseded {
                c.dropped += 1;
            }
            if c.latest.len() > max_topics || now.duration_since(c.since) > lag_timeout {
                st.closed = true;
                st.items.clear();
                st.conflation = None;
                drop(st);
                self.notify.notify_one();
                return PushOutcome::ClosedNow;
            }
            PushOutcome::Conflated { superseded }
        };
        drop(st);
        self.notify.notify_one();
        outcome
    }

    /// Starts conflation (whose end is a gap) unless already conflating; false when closed.
    pub(super) fn open_hole(&self, now: Instant) -> bool {
        let Ok(mut st) = self.state.lock() else {
            return false;
        };
        if st.closed {
            return false;
        }
        if st.conflation.is_none() {
            let resume_after = st.last_in_order;
            st.conflation = Some(Conflation {
                since: now,
                resume_after,
                latest: HashMap::new(),
                dropped: 0,
            });
        }
        drop(st);
        self.notify.notify_one();
        true
    }

    pub(super) fn pop(&self) -> Option<Delivery> {
        let Ok(mut st) = self.state.lock() else {
            return Some(Delivery::Closed);
        };
        if let Some(ev) = st.items.pop_front() {
            return Some(Delivery::Event(ev));
        }
        if st.closed {
            return Some(Delivery::Closed);
        }
        let c = st.conflation.take()?;
        // Everything conflated is a hole in the sequence, even when nothing was superseded:
        // the events kept are not contiguous with what came before.
        let mut latest: Vec<Arc<LiveEvent>> = c.latest.into_values().collect();
        latest.sort_by_key(|e| e.seq);
        if let Some(last) = latest.last() {
            st.last_in_order = last.seq;
        }
        st.items.extend(latest);
        Some(Delivery::Gap {
            resume_after: c.resume_after,
            dropped: c.dropped,
        })
    }
}
