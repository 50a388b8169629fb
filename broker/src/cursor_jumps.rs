//! Messages an MQTT subscriber never got because it fell behind rumqttd's router log.
//!
//! rumqttd keeps one in-memory log per subscribed filter (`broker.router.max_segment_size` x
//! `max_segment_count`) and drops its oldest segment when it is full, read or not. A
//! subscriber still reading that segment then jumps ahead to the oldest message left: the
//! messages in between are never delivered to it, at any QoS. rumqttd only logs this (a
//! warning, "Read cursor start jumped from (segment, offset) to (segment, offset) on
//! FILTER"). [`cursor_jump_tap`], a tracing layer installed by the hub whatever the log
//! level, counts each jump and the messages it skipped (the difference of the two offsets,
//! which count messages from the start of the filter's log), for `/metrics`
//! (`edgewatch_mqtt_subscriber_cursor_jumps_total`, `edgewatch_mqtt_subscriber_skipped_total`).
//!
//! The event names the filter, not the client: rumqttd's router spans, which carry the
//! connection id, are not recorded (they cost the router most of its time, see the hub's
//! logging). A test in `broker/tests/cursor_jumps.rs` fails if rumqttd stops logging jumps
//! this way.

use std::sync::atomic::{AtomicU64, Ordering};

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer};

/// The target of rumqttd's cursor-jump warning.
const JUMP_TARGET: &str = "rumqttd::router::routing";

static JUMPS: AtomicU64 = AtomicU64::new(0);
static SKIPPED: AtomicU64 = AtomicU64::new(0);

/// Cursor jumps counted so far, in this process.
pub fn cursor_jumps() -> u64 {
    JUMPS.load(Ordering::Relaxed)
}

/// Messages skipped by those jumps, in this process.
pub fn skipped_messages() -> u64 {
    SKIPPED.load(Ordering::Relaxed)
}

/// A tracing layer that counts rumqttd's cursor jumps. It filters for itself: add it to the
/// registry next to (not behind) the log filter.
pub fn cursor_jump_tap<S>() -> impl Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    JumpTap.with_filter(
        tracing_subscriber::filter::Targets::new().with_target(JUMP_TARGET, tracing::Level::WARN),
    )
}

struct JumpTap;

impl<S: tracing::Subscriber> Layer<S> for JumpTap {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != JUMP_TARGET {
            return;
        }
        let mut visit = JumpVisit::default();
        event.record(&mut visit);
        if let (Some(from), Some(to)) = (visit.from, visit.to) {
            JUMPS.fetch_add(1, Ordering::Relaxed);
            SKIPPED.fetch_add(to.saturating_sub(from), Ordering::Relaxed);
        }
    }
}

/// The offsets of a jump's `request_cursor` and `start_cursor` fields.
#[derive(Default)]
struct JumpVisit {
    from: Option<u64>,
    to: Option<u64>,
}

impl Visit for JumpVisit {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "request_cursor" => self.from = offset(&format!("{value:?}")),
            "start_cursor" => self.to = offset(&format!("{value:?}")),
            _ => {}
        }
    }
}

/// The offset of a cursor as rumqttd formats it: `(segment, offset)`.
fn offset(cursor: &str) -> Option<u64> {
    let inner = cursor.strip_prefix('(')?.strip_suffix(')')?;
    let (_segment, offset) = inner.split_once(',')?;
    offset.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jump_counts_the_messages_between_its_cursors() {
        use tracing_subscriber::layer::SubscriberExt;
        assert_eq!(offset("(1, 152521)"), Some(152_521));
        assert_eq!(offset("1, 2"), None);
        let subscriber = tracing_subscriber::registry().with(cursor_jump_tap());
        let (jumps, skipped) = (cursor_jumps(), skipped_messages());
        tracing::subscriber::with_default(subscriber, || {
            // What rumqttd 0.20's router logs (same target and fields).
            let (request, start) = ((0u64, 41_903u64), (1u64, 152_521u64));
            tracing::warn!(target: "rumqttd::router::routing", request_cursor = ?request,
                start_cursor = ?start, error = "Read cursor start jumped from (0, 41903) to (1, 152521) on sensors/#");
            tracing::warn!(target: "rumqttd::router::routing", "something else");
            tracing::warn!(target: "other", request_cursor = ?request, start_cursor = ?start);
        });
        assert_eq!(cursor_jumps() - jumps, 1);
        assert_eq!(skipped_messages() - skipped, 110_618);
    }
}
