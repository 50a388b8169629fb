//! The uplinks' collector: per uplink (label `uplink`), state, lag and counters.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::collect::{labelled_counter, labelled_gauge, Sources};
use crate::uplink::{UplinkState, UplinkStatus};

/// A family: name, help and how to read it from an uplink's status.
type Family<V> = (&'static str, &'static str, fn(&UplinkStatus) -> V);

/// The uplinks, once [`super::Metrics::with_uplinks`] added them.
#[derive(Debug)]
pub(super) struct Uplinks(pub(super) Arc<Sources>);

impl Collector for Uplinks {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let Some(up) = self.0.uplinks.get() else {
            return Ok(());
        };
        if up.is_empty() {
            return Ok(());
        }
        let all = up.status();
        let gauges: [Family<f64>; 4] = [
            ("edgewatch_uplink_connected", "1 while the uplink is connected to its broker.", |s| f64::from(u8::from(s.state == UplinkState::Connected))),
            ("edgewatch_uplink_lag_readings", "Readings stored after the uplink's cursor (not forwarded yet, or outside its filters).", |s| s.lag_readings as f64),
            ("edgewatch_uplink_lag_seconds", "Age of the oldest reading the uplink has not forwarded yet, by receive time (0 when caught up).", |s| s.lag_seconds),
            ("edgewatch_uplink_cursor", "The last seq the uplink forwarded and had acknowledged (contiguous).", |s| s.cursor as f64),
        ];
        for (name, help, read) in gauges {
            let items: Vec<(&str, f64)> = all.iter().map(|s| (s.name.as_str(), read(s))).collect();
            labelled_gauge(&mut enc, name, help, "uplink", &items)?;
        }
        let counters: [Family<u64>; 7] = [
            ("edgewatch_uplink_forwarded_total", "Readings the upstream broker acknowledged.", |s| s.forwarded),
            ("edgewatch_uplink_resent_total", "Readings sent again after a reconnect, before their acknowledgement (the receiver drops repeats by seq).", |s| s.resent),
            ("edgewatch_uplink_refused_total", "Messages an MQTT 5 PUBACK refused for good (not authorised, topic or payload format invalid; logged, not sent again).", |s| s.refused),
            ("edgewatch_uplink_dropped_total", "Readings retention removed before the uplink forwarded them (past uplink.hold_days, or for the disk budget).", |s| s.dropped),
            ("edgewatch_uplink_connects_total", "Connections the uplink made to its broker.", |s| s.connects),
            ("edgewatch_uplink_downlink_published_total", "Messages from the central broker published into the local broker (the uplink's downlink).", |s| s.downlink_published),
            ("edgewatch_uplink_downlink_dropped_total", "Messages from the central broker dropped: outside uplink.downlink_publish, over uplink.downlink_rate, too large, or the local publish failed.", |s| s.downlink_dropped),
        ];
        for (name, help, read) in counters {
            let items: Vec<(&str, u64)> = all.iter().map(|s| (s.name.as_str(), read(s))).collect();
            labelled_counter(&mut enc, name, help, "uplink", &items)?;
        }
        Ok(())
    }
}
