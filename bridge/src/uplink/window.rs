//! The in-flight window of one uplink connection: which seqs each message covers, which are
//! acknowledged, and how far the cursor may move (over a contiguous prefix of acknowledged
//! messages only).

use std::collections::VecDeque;

/// One message handed to the MQTT client, or readings read and not forwarded (filtered out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// The highest seq this entry accounts for (`None`: presence, not part of the log).
    covers_to: Option<u64>,
    /// Readings it carries (0 for presence and skipped readings).
    readings: u64,
    /// Its packet id once the client has written it.
    packet_id: Option<u16>,
    /// A message (needs a PUBACK) or readings skipped by the filters (done at once).
    message: bool,
    acked: bool,
}

/// What one acknowledgement changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Advance {
    /// The new cursor, if it moved.
    pub(super) cursor: Option<u64>,
    /// Readings newly acknowledged (in messages, not skipped ones).
    pub(super) readings: u64,
}

/// The window. The cursor it starts from is the last seq acknowledged upstream.
#[derive(Debug)]
pub(super) struct Window {
    entries: VecDeque<Entry>,
    cursor: u64,
    /// The highest seq handed to the client or skipped: the next read starts after it.
    read_to: u64,
    /// Messages handed to the client and not acknowledged.
    inflight: usize,
}

impl Window {
    /// An empty window after `cursor`.
    pub(super) fn new(cursor: u64) -> Window {
        Window {
            entries: VecDeque::new(),
            cursor,
            read_to: cursor,
            inflight: 0,
        }
    }

    /// The last seq acknowledged over a contiguous prefix.
    #[cfg(test)]
    pub(super) fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Where the next read of the log starts (after this seq).
    pub(super) fn read_to(&self) -> u64 {
        self.read_to
    }

    /// Messages not acknowledged yet.
    pub(super) fn inflight(&self) -> usize {
        self.inflight
    }

    /// A message carrying `readings` readings up to seq `covers_to` (or presence: `None`) was
    /// handed to the client.
    pub(super) fn sent(&mut self, covers_to: Option<u64>, readings: u64) {
        if let Some(c) = covers_to {
            self.read_to = self.read_to.max(c);
        }
        self.inflight += 1;
        self.entries.push_back(Entry {
            covers_to,
            readings,
            packet_id: None,
            message: true,
            acked: false,
        });
    }

    /// Readings up to `to` were read and none of them is forwarded.
    pub(super) fn skipped(&mut self, to: u64) -> Advance {
        self.read_to = self.read_to.max(to);
        self.entries.push_back(Entry {
            covers_to: Some(to),
            readings: 0,
            packet_id: None,
            message: false,
            acked: true,
        });
        self.advance(0)
    }

    /// The client wrote the next message with `packet_id` (it writes them in order).
    pub(super) fn written(&mut self, packet_id: u16) {
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.message && e.packet_id.is_none())
        {
            e.packet_id = Some(packet_id);
        }
    }

    /// The broker acknowledged `packet_id`.
    pub(super) fn acked(&mut self, packet_id: u16) -> Advance {
        let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.message && !e.acked && e.packet_id == Some(packet_id))
        else {
            return Advance::default();
        };
        e.acked = true;
        self.inflight -= 1;
        let readings = e.readings;
        self.advance(readings)
    }

    fn advance(&mut self, readings: u64) -> Advance {
        let before = self.cursor;
        while self.entries.front().is_some_and(|e| e.acked) {
            if let Some(Entry {
                covers_to: Some(c), ..
            }) = self.entries.pop_front()
            {
                self.cursor = self.cursor.max(c);
            }
        }
        Advance {
            cursor: (self.cursor != before).then_some(self.cursor),
            readings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_moves_only_over_a_contiguous_acknowledged_prefix() {
        let mut w = Window::new(10);
        w.sent(Some(12), 2);
        w.sent(None, 0);
        w.sent(Some(15), 3);
        assert_eq!((w.read_to(), w.inflight()), (15, 3));
        w.written(1);
        w.written(2);
        w.written(3);
        // The third is acknowledged first: nothing moves.
        assert_eq!(
            w.acked(3),
            Advance {
                cursor: None,
                readings: 3
            }
        );
        assert_eq!(w.cursor(), 10);
        assert_eq!(w.acked(1).cursor, Some(12));
        // Presence, then the third: the cursor goes to 15.
        assert_eq!(w.acked(2).cursor, Some(15));
        assert_eq!(w.inflight(), 0);
        // An unknown or repeated acknowledgement changes nothing.
        assert_eq!(w.acked(3), Advance::default());
        // Skipped readings move the cursor at once when nothing is in flight.
        assert_eq!(w.skipped(20).cursor, Some(20));
        w.sent(Some(21), 1);
        assert_eq!(w.skipped(30).cursor, None);
        w.written(4);
        assert_eq!(w.acked(4).cursor, Some(30));
    }
}
