//! Applying a batch: seqs, duplicates, log blocks, seals, presence, in one sled batch.

use super::chunks::*;
use super::layout::*;
use super::*;

impl Store {
    /// Applies one batch atomically: assigns seqs to the readings that are not duplicates,
    /// writes log blocks and whatever chunks become due for sealing (with their rollups), and
    /// records presence changes. Returns, for each input reading in order, its seq or `None`
    /// when it was a duplicate of a stored reading.
    ///
    /// Every reading is taken to carry its device's own event time (so a reading with the
    /// same series, event time and value as a recent one is a duplicate); see
    /// [`Store::apply_from`] to say otherwise.
    ///
    /// Not flushed: call [`Store::flush_async`] (or [`Store::flush`]) before acknowledging.
    pub fn apply(
        &self,
        readings: &[Reading],
        presence: &[PresenceUpdate],
    ) -> Result<Vec<Option<u64>>, StoreError> {
        self.apply_from(readings, &[], presence, &AckedDeliveries::default())
    }

    /// As [`Store::apply`], with each reading's [`Origin`] (`origins[i]` for `readings[i]`;
    /// missing entries are [`Origin::DEVICE_TIME`]). A reading is a duplicate when
    /// * its origin is a delivery the broker marked as a resend (DUP) and the store took that
    ///   delivery (same packet id, topic and payload) lately: see [`DeliveryId`]; or
    /// * it carries its device's event time, and a reading of the same series with the same
    ///   event time and value was stored within the last
    ///   [`StoreOptions::dedupe_window`] readings.
    ///
    /// A reading whose event time is its receive time is never merged by content.
    ///
    /// `acked` lists the external deliveries whose acknowledgement the broker has: their
    /// records are removed in this commit.
    pub fn apply_from(
        &self,
        readings: &[Reading],
        origins: &[Origin],
        presence: &[PresenceUpdate],
        acked: &AckedDeliveries,
    ) -> Result<Vec<Option<u64>>, StoreError> {
        let mut guard = self.state()?;
        let st = &mut *guard;
        let tree = &self.inner.tree;
        let mut staging = Staging::new(tree, st, readings.len());
        st.deliveries
            .stage_acked(acked, &mut staging.taken, &mut staging.batch);
        let mut out = Vec::with_capacity(readings.len());
        let mut staged = Ok(());
        for (i, r) in readings.iter().enumerate() {
            let origin = origins.get(i).copied().unwrap_or(Origin::DEVICE_TIME);
            match staging.reading(st, r, origin) {
                Ok(seq) => out.push(seq),
                Err(e) => {
                    staged = Err(e);
                    break;
                }
            }
        }
        staging.close_block();
        let mut seals = Vec::new();
        let committed = staged.and_then(|()| {
            seals = stage_seals(
                tree,
                st,
                &staging.undo,
                staging.next_seq,
                &mut staging.batch,
            )?;
            staging.commit(st, presence, &seals)
        });
        if let Err(e) = committed {
            st.recent.unpush(staging.remembered);
            rollback(st, staging.undo, seals);
            return Err(e);
        }
        staging.publish(st, seals);
        Ok(out)
    }

    /// Applies the readings as one batch, flushes, and returns the stored ones with their seq
    /// (duplicates are left out).
    pub fn append_batch(&self, readings: &[Reading]) -> Result<Vec<(u64, Reading)>, StoreError> {
        let seqs = self.apply(readings, &[])?;
        self.flush()?;
        Ok(seqs
            .into_iter()
            .zip(readings)
            .filter_map(|(s, r)| s.map(|s| (s, r.clone())))
            .collect())
    }
}

fn stage_presence(
    tree: &sled::Tree,
    presence: &[PresenceUpdate],
    batch: &mut Writes,
) -> Result<(), StoreError> {
    let mut latest: HashMap<&str, bool> = HashMap::new();
    for p in presence {
        let key = device_key(&p.device_id);
        let current = match latest.get(p.device_id.as_str()) {
            Some(online) => Some(*online),
            None => match tree.get(&key)? {
                Some(v) => Some(decode_rec::<PresenceRecord>(&v, "presence")?.online),
                None => None,
            },
        };
        if current != Some(p.online) {
            batch.insert(
                key,
                encode_rec(
                    &PresenceRecord {
                        online: p.online,
                        since_ms: p.at_ms,
                    },
                    "presence",
                )?,
            );
            latest.insert(&p.device_id, p.online);
        }
    }
    Ok(())
}

/// One batch being staged by [`Store::apply_from`]: the sled writes, the state changes to
/// undo if the batch fails, and what the commit publishes.
struct Staging<'a> {
    tree: &'a sled::Tree,
    batch: Writes,
    undo: HashMap<u32, Undo>,
    /// The log block being filled (at most [`BLOCK_MAX`] rows).
    block: Vec<LogRow>,
    next_seq: u64,
    next_sid: u32,
    reserved: u64,
    /// Sealed chunks read to confirm duplicates, kept for the rest of the batch.
    decoded: DecodedChunks,
    log_blocks: u64,
    log_bytes: u64,
    /// Fingerprints pushed to the recent window (taken back on failure).
    remembered: usize,
    taken: deliveries::Staged,
    /// The last delivery found a resend: the other readings of that publish (a mapped payload
    /// gives several, staged one after the other) are resends too.
    last_resent: Option<super::DeliveryId>,
}

impl<'a> Staging<'a> {
    fn new(tree: &'a sled::Tree, st: &State, readings: usize) -> Self {
        Staging {
            tree,
            batch: Writes::default(),
            undo: HashMap::new(),
            block: Vec::with_capacity(readings.min(BLOCK_MAX)),
            next_seq: st.next_seq,
            next_sid: st.next_sid,
            reserved: st.reserved,
            decoded: DecodedChunks::new(),
            log_blocks: 0,
            log_bytes: 0,
            remembered: 0,
            taken: deliveries::Staged::default(),
            last_resent: None,
        }
    }

    /// Stages one reading: its seq, or `None` when it is a resend of a stored reading.
    fn reading(
        &mut self,
        st: &mut State,
        r: &Reading,
        origin: Origin,
    ) -> Result<Option<u64>, StoreError> {
        if let Some(id) = &origin.delivery {
            if self.last_resent.as_ref() == Some(id) {
                return Ok(None);
            }
            if st.deliveries.take(id, &mut self.taken, &mut self.batch) {
                self.last_resent = Some(*id);
                return Ok(None);
            }
        }
        let sid = match st.sid(&r.device_id, &r.metric) {
            Some(sid) => sid,
            None => self.new_series(st, r)?,
        };
        let Some(s) = st.series.get_mut(&sid) else {
            return Err(StoreError::Corrupt { what: "series map" });
        };
        let fp = recent::fingerprint(sid, r.timestamp_ms, r.value.to_bits());
        // Newer than the series' newest: new. Else new unless recently stored (then the
        // stored rows confirm it).
        if origin.device_time
            && r.timestamp_ms <= s.max_ts
            && st.recent.may_hold(fp)
            && is_stored(self.tree, s, st.floor, sid, r, &mut self.decoded)?
        {
            return Ok(None);
        }
        self.undo.entry(sid).or_insert_with(|| Undo::of(s));
        let seq = self.next_seq;
        self.next_seq += 1;
        let row = Row {
            seq,
            ts: r.timestamp_ms,
            recv: r.received_at_ms,
            value: r.value,
            unit: s.unit_of(r),
        };
        if self.block.len() == BLOCK_MAX {
            self.close_block();
        }
        self.block.push(LogRow {
            sid,
            row: row.clone(),
        });
        s.push(row, &r.unit);
        st.recent.push(fp);
        self.remembered += 1;
        Ok(Some(seq))
    }

    /// A new series for `r`: its id, its catalogue record staged.
    fn new_series(&mut self, st: &mut State, r: &Reading) -> Result<u32, StoreError> {
        let sid = self.next_sid;
        self.next_sid = self.next_sid.saturating_add(1);
        let s = Series::new(r);
        self.batch
            .insert(&series_key(sid)[..], encode_rec(&s.rec, "series")?);
        st.sids
            .entry(r.device_id.clone())
            .or_default()
            .insert(r.metric.clone(), sid);
        st.series.insert(sid, s);
        self.undo.insert(sid, Undo::created());
        Ok(sid)
    }

    /// Writes the block being filled, if any.
    fn close_block(&mut self) {
        if !self.block.is_empty() {
            self.log_bytes += put_block(&mut self.batch, &self.block) as u64;
            self.log_blocks += 1;
            self.block.clear();
        }
    }

    /// Stages presence, the delivery records' cap, the replay checkpoint and the seq
    /// reservation, then applies the whole batch to sled.
    fn commit(
        &mut self,
        st: &mut State,
        presence: &[PresenceUpdate],
        seals: &[StagedSeal],
    ) -> Result<(), StoreError> {
        stage_presence(self.tree, presence, &mut self.batch)?;
        st.deliveries.stage_cap(&mut self.taken, &mut self.batch);
        let checkpoint = checkpoint_after(st, &self.undo, seals, self.next_seq);
        if checkpoint != st.replay_from {
            self.batch
                .insert(META_REPLAY, &checkpoint.to_be_bytes()[..]);
        }
        let reserve = (st.window / SEQ_RESERVE_FRACTION).max(1);
        if self.next_seq != st.next_seq && self.next_seq - 1 + reserve / 2 > st.reserved {
            self.reserved = self.next_seq - 1 + reserve;
            self.batch
                .insert(META_SEQ, &self.reserved.to_be_bytes()[..]);
        }
        std::mem::take(&mut self.batch).apply(self.tree)?;
        Ok(())
    }

    /// After a successful commit, durable in sled's write order: publishes the staged state.
    fn publish(self, st: &mut State, seals: Vec<StagedSeal>) {
        st.recent.trim();
        st.deliveries.commit(self.taken);
        st.next_seq = self.next_seq;
        st.next_sid = self.next_sid;
        st.reserved = self.reserved;
        let w = &mut st.written;
        w.log_blocks += self.log_blocks;
        w.log_bytes += self.log_bytes;
        for seal in &seals {
            w.chunks += seal.chunks;
            w.chunk_rows += seal.taken.len() as u64;
            w.chunk_bytes += seal.chunk_bytes;
            w.rollup_pages += seal.pages;
            w.rollup_bytes += seal.page_bytes;
        }
        let mut old_first: HashMap<u32, Option<u64>> = self
            .undo
            .iter()
            .map(|(sid, u)| (*sid, u.first_open))
            .collect();
        for seal in seals {
            old_first
                .entry(seal.sid)
                .or_insert(seal.taken.first().map(|r| r.seq));
            if let Some(s) = st.series.get_mut(&seal.sid) {
                s.rec = seal.rec;
            }
        }
        for (sid, first) in old_first {
            if let Some(first) = first {
                st.open_index.remove(&(first, sid));
            }
            if let Some(first) = st.series.get(&sid).and_then(|s| s.open.first()) {
                st.open_index.insert((first.seq, sid));
            }
        }
        st.replay_from = st.checkpoint();
    }
}
