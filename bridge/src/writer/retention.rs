//! The writer's retention steps and the budget's log lines (the store decides what to
//! remove; see [`crate::store::Store::retain_step`]).

use super::*;

pub(super) async fn retention_step(
    store: &Store,
    policy: Option<RetentionPolicy>,
    budget_log: &mut BudgetLog,
) -> bool {
    let Some(policy) = policy else { return false };
    let s = store.clone();
    let now = edgewatch_protocol::timefmt::now_ms();
    match tokio::task::spawn_blocking(move || s.retain_step(now, &policy)).await {
        Ok(Ok(o)) => {
            if o.readings_deleted + o.rollups_deleted > 0 {
                debug!(
                    readings = o.readings_deleted,
                    for_budget = o.budget_deleted,
                    rollups = o.rollups_deleted,
                    "retention step"
                );
            }
            if !o.more {
                if let Ok(status) = store.budget_status() {
                    budget_log.settled(&status, std::time::Instant::now());
                }
            }
            o.more
        }
        Ok(Err(err)) => {
            warn!(%err, "retention step failed");
            false
        }
        Err(err) => {
            error!(%err, "retention step panicked");
            false
        }
    }
}

/// Least time between two log lines about the disk budget.
const BUDGET_LOG_EVERY: Duration = Duration::from_secs(60);
/// While the store stays over its disk budget, the warning is repeated this often.
const BUDGET_WARN_AGAIN: Duration = Duration::from_secs(600);

/// What the writer said about the disk budget, so it warns when the store goes over it, again
/// every [`BUDGET_WARN_AGAIN`] while it stays over, and says when it is back within it; never
/// more than one line per [`BUDGET_LOG_EVERY`].
#[derive(Debug, Default)]
pub(super) struct BudgetLog {
    /// Whether the last line said "over".
    said_over: bool,
    last_line: Option<std::time::Instant>,
}

impl BudgetLog {
    /// A retention step settled with `s`; logs what changed.
    fn settled(&mut self, s: &BudgetStatus, now: std::time::Instant) {
        let (Some(budget), Some(live_limit), Some(live)) =
            (s.budget_bytes, s.live_limit_bytes, s.live)
        else {
            return;
        };
        let since = self.last_line.map(|t| now.saturating_duration_since(t));
        if since.is_some_and(|d| d < BUDGET_LOG_EVERY) {
            return;
        }
        if !s.exceeded {
            if self.said_over {
                info!(
                    budget_bytes = budget,
                    live_bytes = live.total(),
                    file_bytes = s.file_bytes,
                    "disk budget: the store is within its budget again"
                );
                self.said_over = false;
                self.last_line = Some(now);
            }
            return;
        }
        if self.said_over && since.is_some_and(|d| d < BUDGET_WARN_AGAIN) {
            return;
        }
        if s.floor_reached {
            warn!(
                budget_bytes = budget,
                live_bytes = live.total(),
                live_limit,
                log_bytes = live.log,
                chunk_bytes = live.chunks,
                rollup_bytes = live.rollups,
                file_bytes = s.file_bytes,
                kept_readings = s.kept_readings,
                "disk budget: cannot get live data under its share of the budget; what is left \
                 to remove is the newest readings, which the budget keeps, and rollup pages, \
                 which only retention_days removes. Raise disk_budget_mb or lower retention_days"
            );
        } else {
            warn!(
                budget_bytes = budget,
                live_bytes = live.total(),
                live_limit,
                file_bytes = s.file_bytes,
                "disk budget: the database files are larger than the budget although live data \
                 fits its share; sled gives deleted space back lazily, so they may stay larger"
            );
        }
        self.said_over = true;
        self.last_line = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LiveBytes;

    /// The budget warning: once when the store goes over, again only after
    /// [`BUDGET_WARN_AGAIN`] while it stays over, a line when it is back within it, and never
    /// two lines within [`BUDGET_LOG_EVERY`].
    #[test]
    fn budget_lines_are_rate_limited() {
        let over = BudgetStatus {
            budget_bytes: Some(100),
            live_limit_bytes: Some(50),
            live: Some(LiveBytes {
                log: 40,
                ..LiveBytes::default()
            }),
            file_bytes: 150,
            exceeded: true,
            ..BudgetStatus::default()
        };
        let within = BudgetStatus {
            exceeded: false,
            file_bytes: 90,
            ..over
        };
        let t0 = std::time::Instant::now();
        let mut log = BudgetLog::default();
        log.settled(&within, t0);
        assert_eq!(log.last_line, None, "nothing to say");
        log.settled(&over, t0);
        assert_eq!((log.said_over, log.last_line), (true, Some(t0)));
        let later = t0 + BUDGET_LOG_EVERY * 2;
        log.settled(&over, later);
        assert_eq!(
            log.last_line,
            Some(t0),
            "not repeated before BUDGET_WARN_AGAIN"
        );
        let again = t0 + BUDGET_WARN_AGAIN;
        log.settled(&over, again);
        assert_eq!(log.last_line, Some(again));
        log.settled(&within, again + BUDGET_LOG_EVERY / 2);
        assert!(log.said_over, "too soon for another line");
        let back = again + BUDGET_LOG_EVERY;
        log.settled(&within, back);
        assert_eq!((log.said_over, log.last_line), (false, Some(back)));
        // No budget or live bytes not counted yet: nothing.
        let mut quiet = BudgetLog::default();
        quiet.settled(&BudgetStatus::default(), t0);
        quiet.settled(&BudgetStatus { live: None, ..over }, t0);
        assert_eq!(quiet.last_line, None);
    }
}
