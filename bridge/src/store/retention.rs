//! Retention: removing what is older than the age limit or over the disk budget, a small
//! step at a time.

use super::chunks::*;
use super::layout::*;
use super::*;

impl Store {
    /// One small retention step, oldest first and up to about `policy.step` readings: removes
    /// the log blocks whose readings are all older than the age limit and, with a disk budget,
    /// the oldest blocks while live bytes are above their share of the budget, never the newest
    /// readings (the rule is in the `budget` module); then the sealed chunks holding only
    /// removed readings and the rollup pages whose whole span is older than the age limit.
    /// Never removes a reading applied after the step started. With a budget, the first steps
    /// after open count the live bytes instead, in pieces (`more` set), and remove nothing.
    /// Holds the write lock only to take a snapshot and to install the result, so ingest is
    /// delayed by at most one small batch.
    pub fn retain_step(
        &self,
        now_ms: i64,
        policy: &RetentionPolicy,
    ) -> Result<RetentionOutcome, StoreError> {
        let cutoff = policy.max_age_ms.map(|a| now_ms.saturating_sub(a));
        let budget = policy.disk_budget_bytes;
        if cutoff.is_none() && budget.is_none() {
            return Ok(RetentionOutcome::default());
        }
        let tree = &self.inner.tree;
        let mut account = self
            .inner
            .account
            .lock()
            .map_err(|_| StoreError::Poisoned)?;
        if budget.is_some() && !account.is_counted() && !self.count_live_bytes(&mut account)? {
            self.record_budget(budget, None, None, &RetentionOutcome::default())?;
            return Ok(RetentionOutcome {
                more: true,
                ..RetentionOutcome::default()
            });
        }
        let step = policy.step.max(1) as u64;
        // Find what to delete without holding the state lock: the writer's `apply` waits on
        // it, and a sweep over every series' rollup pages took long enough to show as a
        // periodic stall of live delivery (p99 ~200 ms every `retention_interval_s`). Only this
        // task deletes, so the snapshot stays valid; series created meanwhile have nothing
        // old to delete, and readings applied meanwhile (seq above `head`) are not touched.
        let snap = self.retention_snapshot()?;
        let hold = self.oldest_hold(now_ms)?;
        let plan = match (budget, account.live(&snap.marks)) {
            (Some(b), Some(live)) => budget::plan(b, &live, snap.readings, snap.head),
            _ => None,
        };
        let mut removal = Removal::new(snap.floor);
        removal.log_blocks(tree, (cutoff, hold), plan, snap.head, step)?;
        // Settled short of the budget: only kept readings (or none) were left to remove.
        let floor_reached = !removal.outcome.more
            && plan.is_some_and(|p| removal.freed_estimate < p.to_free as f64);
        // Look again soon: the next step sees what this one freed, exactly.
        removal.outcome.more |= removal.outcome.budget_deleted > 0;
        if removal.outcome.readings_deleted > 0 {
            removal.chunks(tree, &snap.sids)?;
        }
        if let Some(c) = cutoff {
            removal.rollup_pages(tree, c, &snap.sids, step)?;
        }
        let outcome = removal.outcome;
        if outcome.readings_deleted > 0 || outcome.rollups_deleted > 0 || removal.chunks_deleted > 0
        {
            self.install_removal(removal.batch, removal.floor, &removal.deleted)?;
            account.deleted(removal.freed);
            if hold.is_some() {
                let removed: Vec<u64> = removal.deleted.values().flatten().copied().collect();
                self.count_unforwarded(&removed)?;
            }
        }
        let live = account.live(&marks_of(&*self.state()?));
        self.record_budget(budget, live, plan.map(|p| (p, floor_reached)), &outcome)?;
        Ok(outcome)
    }

    /// One piece of counting the live bytes after open (a budget needs them): `true` once
    /// they are counted.
    fn count_live_bytes(&self, account: &mut budget::Account) -> Result<bool, StoreError> {
        if !account.is_scanning() {
            let st = self.state()?;
            let sealed = st
                .series
                .iter()
                .map(|(sid, s)| (*sid, s.rec.sealed_through))
                .collect();
            account.start_scan(marks_of(&st), st.next_seq, sealed);
        }
        account.scan_piece(&self.inner.tree)
    }

    /// What a retention step works from, taken under the state lock.
    fn retention_snapshot(&self) -> Result<Snapshot, StoreError> {
        let st = self.state()?;
        Ok(Snapshot {
            floor: st.floor,
            sids: st.series.keys().copied().collect(),
            head: st.next_seq - 1,
            readings: st.series.values().map(|s| s.count).sum(),
            marks: marks_of(&st),
        })
    }

    /// Applies a retention step's deletions and updates the series they touched.
    fn install_removal(
        &self,
        mut batch: Writes,
        floor: u64,
        deleted: &HashMap<u32, Vec<u64>>,
    ) -> Result<(), StoreError> {
        let tree = &self.inner.tree;
        let mut st = self.state()?;
        let mut updated = Vec::new();
        for (sid, seqs) in deleted {
            if let Some(s) = st.series.get(sid) {
                let sealed = seqs.iter().filter(|q| **q <= s.rec.sealed_through).count() as u64;
                let mut rec = s.rec.clone();
                rec.sealed_count = rec.sealed_count.saturating_sub(sealed);
                rec.unit.clone_from(&s.unit);
                rec.last = s.last;
                batch.insert(&series_key(*sid)[..], encode_rec(&rec, "series")?);
                updated.push((*sid, rec, seqs.len() as u64));
            }
        }
        if floor != st.floor {
            batch.insert(META_FLOOR, &floor.to_be_bytes()[..]);
        }
        batch.apply(tree)?;
        let st = &mut *st;
        st.floor = floor;
        for (sid, rec, n) in updated {
            if let Some(s) = st.series.get_mut(&sid) {
                s.rec = rec;
                s.count = s.count.saturating_sub(n);
                if let Some(first) = s.open.first() {
                    st.open_index.remove(&(first.seq, sid));
                }
                let rows = std::mem::take(&mut s.open);
                s.set_open(rows.into_iter().filter(|r| r.seq > floor).collect());
                if let Some(first) = s.open.first() {
                    st.open_index.insert((first.seq, sid));
                }
            }
        }
        Ok(())
    }

    /// Records a retention step in the [`BudgetStatus`]: what it removed, the live bytes after
    /// it and, when it settled (nothing more to remove now), whether it stopped at the floor.
    fn record_budget(
        &self,
        budget: Option<u64>,
        live: Option<LiveBytes>,
        plan: Option<(budget::Plan, bool)>,
        outcome: &RetentionOutcome,
    ) -> Result<(), StoreError> {
        let readings: u64 = self.state()?.series.values().map(|s| s.count).sum();
        let mut status = self.inner.budget.lock().map_err(|_| StoreError::Poisoned)?;
        status.removed_for_budget += outcome.budget_deleted;
        status.removed_for_age += outcome.readings_deleted - outcome.budget_deleted;
        status.budget_bytes = budget;
        status.live_limit_bytes = budget.map(budget::live_limit);
        status.live = live;
        let Some(b) = budget else {
            status.kept_readings = 0;
            status.floor_reached = false;
            return Ok(());
        };
        status.kept_readings = match (plan, live) {
            (Some((p, _)), _) => p.kept,
            (None, Some(l)) => budget::kept_readings(b, &l, readings),
            (None, None) => 0,
        };
        if live.is_some() && !outcome.more {
            status.floor_reached = plan.is_some_and(|(_, reached)| reached);
        }
        Ok(())
    }

    /// Where the store stands against its disk budget: what retention removed and found at
    /// its last step, with the files' size now.
    pub fn budget_status(&self) -> Result<BudgetStatus, StoreError> {
        let mut s = self
            .inner
            .budget
            .lock()
            .map(|s| *s)
            .map_err(|_| StoreError::Poisoned)?;
        s.file_bytes = self.inner.db.size_on_disk()?;
        s.exceeded = match (s.budget_bytes, s.live) {
            (Some(b), Some(_)) => s.floor_reached || s.file_bytes > b,
            _ => false,
        };
        Ok(s)
    }
}

/// The counters live bytes are derived from.
fn marks_of(st: &State) -> budget::Marks {
    budget::Marks {
        written: st.written,
        rollup_bytes_replaced: st.rollup_bytes_replaced,
    }
}

/// The state a retention step plans from (see [`Store::retain_step`]).
struct Snapshot {
    floor: u64,
    sids: Vec<u32>,
    /// The last seq applied when the step started: nothing after it is removed.
    head: u64,
    readings: u64,
    marks: budget::Marks,
}

/// What a retention step removes, staged in one batch.
struct Removal {
    batch: Writes,
    outcome: RetentionOutcome,
    freed: LiveBytes,
    /// Live bytes the budget's removals free: each block with its readings' share of chunks.
    freed_estimate: f64,
    /// Removed seqs by series.
    deleted: HashMap<u32, Vec<u64>>,
    /// The highest seq removed.
    floor: u64,
    chunks_deleted: u64,
}

impl Removal {
    fn new(floor: u64) -> Self {
        Removal {
            batch: Writes::default(),
            outcome: RetentionOutcome::default(),
            freed: LiveBytes::default(),
            freed_estimate: 0.0,
            deleted: HashMap::new(),
            floor,
            chunks_deleted: 0,
        }
    }

    /// The oldest log blocks, while they are all older than `cutoff` or the budget's plan
    /// still has bytes to free, up to about `step` readings. An uplink's `hold` (its cursor
    /// and the receive time before which it lets go) keeps expired blocks it has not
    /// forwarded; the budget removes them all the same.
    fn log_blocks(
        &mut self,
        tree: &sled::Tree,
        (cutoff, hold): (Option<i64>, Option<(u64, i64)>),
        plan: Option<budget::Plan>,
        head: u64,
        step: u64,
    ) -> Result<(), StoreError> {
        for r in tree.range(log_key(0)..=log_key(u64::MAX)) {
            let (k, v) = r?;
            let rows = codec::decode_block(&v, u64_from(&k[1..]))?;
            let last = rows.last().map_or(0, |r| r.row.seq);
            if last > head {
                break;
            }
            let expired = cutoff.is_some_and(|c| rows.iter().all(|r| r.row.recv < c))
                && !hold.is_some_and(|(cursor, bound)| {
                    last > cursor && rows.iter().any(|r| r.row.recv >= bound)
                });
            let for_budget = !expired
                && plan.is_some_and(|p| {
                    self.freed_estimate < p.to_free as f64 && last <= p.keep_after
                });
            if !(expired || for_budget) {
                break;
            }
            let removed = &mut self.outcome;
            if removed.readings_deleted > 0 && removed.readings_deleted + rows.len() as u64 > step {
                removed.more = true;
                break;
            }
            self.batch.remove(k);
            removed.readings_deleted += rows.len() as u64;
            if for_budget {
                removed.budget_deleted += rows.len() as u64;
            }
            self.freed.log += v.len() as u64;
            self.freed_estimate += v.len() as f64 * plan.map_or(1.0, |p| p.per_log_byte);
            for lr in rows {
                self.floor = self.floor.max(lr.row.seq);
                self.deleted.entry(lr.sid).or_default().push(lr.row.seq);
            }
        }
        Ok(())
    }

    /// The sealed chunks holding only removed readings.
    fn chunks(&mut self, tree: &sled::Tree, sids: &[u32]) -> Result<(), StoreError> {
        for sid in sids {
            let mut prefix = [CHUNK; 5];
            prefix[1..].copy_from_slice(&sid.to_be_bytes());
            for r in tree.scan_prefix(prefix) {
                let (k, v) = r?;
                let rows = codec::decode_chunk(&v)?;
                if rows.iter().any(|r| r.seq > self.floor) {
                    break;
                }
                self.batch.remove(k);
                self.chunks_deleted += 1;
                self.freed.chunks += v.len() as u64;
            }
        }
        Ok(())
    }

    /// The rollup pages whose whole span is older than `cutoff`, up to `step` pages.
    fn rollup_pages(
        &mut self,
        tree: &sled::Tree,
        cutoff: i64,
        sids: &[u32],
        step: u64,
    ) -> Result<(), StoreError> {
        for res in Resolution::BOTH {
            let last_start = cutoff.saturating_sub(res.page_ms());
            for sid in sids {
                let lo = sid_time_key(res.tag(), *sid, i64::MIN);
                let hi = sid_time_key(res.tag(), *sid, last_start.saturating_add(1));
                for r in tree.range(lo..hi) {
                    let (k, v) = r?;
                    if self.outcome.rollups_deleted >= step {
                        self.outcome.more = true;
                        return Ok(());
                    }
                    self.batch.remove(k);
                    self.outcome.rollups_deleted += 1;
                    self.freed.rollups += v.len() as u64;
                }
            }
        }
        Ok(())
    }
}
