//! The log on standard error: `EDGEWATCH_LOG` (else the configured level), text or JSON lines,
//! colour only on a terminal, and none of rumqttd's normal events at ERROR.

use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::{Context, Filter, Layer};

/// Logs to stderr, filtered by `EDGEWATCH_LOG` (else `level`), as text or as JSON lines.
///
/// rumqttd's spans are never recorded: its router opens an error-level span per publish with
/// the topic `Debug`-formatted into it, which cost the router thread most of its time (perf,
/// relay benchmark). Its events (warnings, errors) are still logged, except the normal ones
/// it logs at ERROR ([`NormalBrokerErrors`]).
///
/// Text has ANSI colours only when stderr is a terminal and `NO_COLOR` is unset or empty
/// (no-color.org): a log file, `journalctl` or `docker logs` gets plain text.
pub(crate) fn init(level: &str, json: bool) {
    use tracing_subscriber::filter::{filter_fn, FilterExt};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let env = std::env::var("EDGEWATCH_LOG")
        .ok()
        .and_then(|v| parse_filter(&quiet_broker(&v)).ok())
        .or_else(|| parse_filter(&quiet_broker(level)).ok())
        .unwrap_or_else(|| Targets::new().with_default(Level::INFO));
    // The level hint keeps the combined filter's maximum level equal to `env`'s, so disabled
    // levels stay free, also for the `log` records of dependencies (sled).
    let no_broker_spans =
        filter_fn(|meta| !(meta.is_span() && meta.target().starts_with("rumqttd")))
            .with_max_level_hint(tracing_subscriber::filter::LevelFilter::TRACE);
    // The level is reloadable (SIGHUP, `set_level`).
    let (env, handle) = tracing_subscriber::reload::Layer::new(env);
    let _ = RELOAD.set(Box::new(move |targets| {
        handle.reload(targets).map_err(|e| e.to_string())
    }));
    let filter = env.and(no_broker_spans).and(NormalBrokerErrors);
    // The per-address MQTT limits learn each connection's address from rumqttd's accept
    // event, whatever the log level (see `edgewatch_broker::peer`).
    // MQTT subscribers that fall behind rumqttd's log are counted from its warnings, whatever
    // the log level (see `edgewatch_broker::cursor_jumps`).
    let registry = tracing_subscriber::registry()
        .with(edgewatch_broker::peer::accept_tap())
        .with(edgewatch_broker::cursor_jumps::cursor_jump_tap());
    if json {
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .with_filter(filter);
        registry.with(layer).init();
    } else {
        let colour = colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        );
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(colour)
            .with_writer(std::io::stderr)
            .with_filter(filter);
        registry.with(layer).init();
    }
}

/// Replaces the level filter of the running log (set by [`init`]).
type Reload = Box<dyn Fn(Targets) -> Result<(), String> + Send + Sync>;
static RELOAD: std::sync::OnceLock<Reload> = std::sync::OnceLock::new();

/// Sets the log level of the running log to `level` (a filter as in `[log] level`), unless
/// `EDGEWATCH_LOG` is set (it wins, as at start). `Ok(false)` when it was left alone.
pub(crate) fn set_level(level: &str) -> Result<bool, String> {
    if std::env::var_os("EDGEWATCH_LOG").is_some() {
        return Ok(false);
    }
    let targets = parse_filter(&quiet_broker(level)).map_err(|e| e.to_string())?;
    match RELOAD.get() {
        Some(reload) => reload(targets).map(|()| true),
        None => Ok(false),
    }
}

/// A log filter: comma-separated `level` or `target=level` directives (`info`,
/// `info,edgewatch_bridge::ingest=debug`), the `RUST_LOG` syntax without span and field
/// directives. `tracing-subscriber`'s `Targets` rather than its `EnvFilter`, whose regular
/// expression engine was 0.3 MB of the binary (issue #20, binary size).
/// `Targets` takes anything as a target name, so the names are checked here: Rust module
/// paths (letters, digits, `_`, `-`, `::`).
pub(crate) fn parse_filter(filter: &str) -> Result<Targets, String> {
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let (target, level) = directive.split_once('=').unwrap_or((directive, ""));
        let named = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':');
        if level.is_empty() && directive.parse::<LevelFilter>().is_ok() {
            continue;
        }
        if target.is_empty() || !target.chars().all(named) {
            return Err(format!("{directive:?} is neither a level (error, warn, info, debug, trace, off) nor target=level"));
        }
        if !level.is_empty() && level.parse::<LevelFilter>().is_err() {
            return Err(format!(
                "{level:?} in {directive:?} is not a level (error, warn, info, debug, trace, off)"
            ));
        }
    }
    filter.parse::<Targets>().map_err(|err| err.to_string())
}

/// Colour codes in text logs: only on a terminal, and not when `NO_COLOR` is set to anything
/// but the empty string.
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && !no_color.is_some_and(|v| !v.is_empty())
}

/// `filter` with rumqttd's events at `warn` unless it names rumqttd itself: at `info` rumqttd
/// logs four lines per device connection (accept, registered, disconnecting, disconnected),
/// 96 of a 10-second demo's 109 lines. `EDGEWATCH_LOG=info,rumqttd=info` shows them again.
fn quiet_broker(filter: &str) -> String {
    if filter.contains("rumqttd") {
        filter.to_owned()
    } else {
        format!("{filter},rumqttd=warn")
    }
}

/// rumqttd 0.20.0's callsites (file, line) that log normal events at ERROR:
///
/// * `server/broker.rs:581`, `router-drop error=Recv(Disconnected)`: a connection's task ends
///   because the router already dropped the connection, which is what happens on every
///   DISCONNECT from a client (and to every connection at a stop). Only this error value is
///   normal: another `router-drop` error (a full or closed router channel) is still logged.
/// * `server/broker.rs:592`, `disconnected error=Network(Io(... ConnectionReset ...))`: a
///   client's connection reset or cut (a device losing power or its network); only these I/O
///   errors (reset, broken pipe, unexpected end of file) are normal, others are still logged.
/// * `router/routing.rs:416, 436, 539`, `no-connection id N is already gone`: the router gets
///   a second disconnect (or a last payload) for a connection it already removed: a client's
///   DISCONNECT then its socket's close, and every connection at a stop (about 20 lines when
///   the demo stops).
///
/// rumqttd is pinned to 0.20.0 in Cargo.lock (a test below checks it), so these lines are
/// stable; after an upgrade the list must be checked against the new source. They are named
/// by callsite rather than by level and target, so every other rumqttd error still reaches
/// the log. They are left out rather than logged at a lower level: an event's level is part
/// of its callsite's static metadata, and the codec logs each connection's start and end at
/// DEBUG itself (`edgewatch_broker::connect_policy`).
const NORMAL_AT_ERROR: [(&str, u32); 5] = [
    ("src/server/broker.rs", 581),
    ("src/server/broker.rs", 592),
    ("src/router/routing.rs", 416),
    ("src/router/routing.rs", 436),
    ("src/router/routing.rs", 539),
];

/// I/O errors of a connection the client cut (`server/broker.rs:592`).
const CUT: [&str; 3] = ["ConnectionReset", "BrokenPipe", "UnexpectedEof"];

/// The log's filter part that leaves out the events of [`NORMAL_AT_ERROR`]: a per-layer
/// filter of the log's layer (as a layer of its own in the registry it made the JSON log lose
/// its events' spans).
struct NormalBrokerErrors;

impl<S: Subscriber> Filter<S> for NormalBrokerErrors {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        let meta = event.metadata();
        if !normal_error_callsite(meta) {
            return true;
        }
        if meta
            .file()
            .is_some_and(|f| f.ends_with(NORMAL_AT_ERROR[0].0))
        {
            let mut error = ErrorField(String::new());
            event.record(&mut error);
            return if meta.line() == Some(NORMAL_AT_ERROR[0].1) {
                // router-drop: normal only for the router's closed channel.
                error.0 != "Recv(Disconnected)"
            } else {
                // disconnected: normal only when the client's connection was cut.
                !CUT.iter().any(|kind| error.0.contains(kind))
            };
        }
        false
    }
}

fn normal_error_callsite(meta: &Metadata<'_>) -> bool {
    *meta.level() == Level::ERROR
        && meta.target().starts_with("rumqttd::")
        && meta.file().zip(meta.line()).is_some_and(|(file, line)| {
            NORMAL_AT_ERROR
                .iter()
                .any(|&(f, l)| l == line && file.ends_with(f))
        })
}

/// The `Debug` text of an event's `error` field.
struct ErrorField(String);

impl Visit for ErrorField {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "error" {
            self.0 = format!("{value:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        let set = Some(std::ffi::OsStr::new("1"));
        let empty = Some(std::ffi::OsStr::new(""));
        assert!(colour(true, None));
        assert!(colour(true, empty));
        assert!(!colour(true, set));
        assert!(!colour(false, None));
    }

    #[test]
    fn rumqttd_is_the_version_whose_callsites_are_named() {
        let lock = include_str!("../Cargo.lock");
        assert!(
            lock.contains("name = \"rumqttd\"\nversion = \"0.20.0\"\n"),
            "rumqttd is no longer 0.20.0: check NORMAL_AT_ERROR against its source"
        );
    }

    #[test]
    fn filters_are_levels_or_target_levels() {
        for ok in [
            "info",
            "debug,rumqttd=warn",
            "info,edgewatch_bridge::ingest=debug",
            " warn , x-y ",
        ] {
            assert!(parse_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["[[[", "info,=debug", "edgewatch=loud", "a b=info"] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quiet_broker_keeps_a_filter_naming_rumqttd() {
        assert_eq!(quiet_broker("info"), "info,rumqttd=warn");
        assert_eq!(quiet_broker("info,rumqttd=info"), "info,rumqttd=info");
    }
}
