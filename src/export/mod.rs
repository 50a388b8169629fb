//! `edgewatch export`: stored readings as CSV or NDJSON, for a topic filter and an event-time
//! range, from a stopped hub's data directory (`store`) or from a running hub's
//! `GET /v1/readings` (`hub`). Both write the bytes the hub's API answers for `text/csv` and
//! `application/x-ndjson` (one CSV header), page by page: memory stays at one page.

pub(crate) mod backup;
mod http;
mod hub;
mod store;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Args, ValueEnum};
use edgewatch_protocol::timefmt::parse_time;
use edgewatch_protocol::TopicFilter;

/// Exit status for bad arguments (like clap's usage errors).
const EXIT_USAGE: u8 = 2;

/// Options of `edgewatch export`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["data_dir", "hub"])))]
pub(crate) struct ExportArgs {
    /// Read the store in this data directory (the hub's `bridge.data_dir`). The hub must be
    /// stopped: a running hub locks it (use --hub then).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Page through `GET /v1/readings` of a running hub, e.g. http://127.0.0.1:8080 (plain
    /// HTTP).
    #[arg(long, value_name = "URL")]
    hub: Option<String>,
    /// With --hub: a token sent as `Authorization: Bearer TOKEN` (an app token from `edgewatch
    /// token create`, or a JWT).
    #[arg(
        long,
        env = "EDGEWATCH_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
    /// MQTT topic filter of the readings (`+` one level, `#` the rest), e.g. 'sensors/d1/#';
    /// repeat for several.
    #[arg(long = "filter", value_name = "FILTER", default_value = "sensors/#")]
    filters: Vec<String>,
    /// Earliest event time, inclusive: RFC 3339 (2026-11-28T10:00:00Z) or epoch milliseconds.
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    from: Option<String>,
    /// Latest event time, exclusive: RFC 3339 or epoch milliseconds.
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    to: Option<String>,
    /// Output format: CSV (header `seq,topic,deviceId,metric,value,unit,timestamp,receivedAt`)
    /// or NDJSON (one JSON object per reading, as in `GET /v1/readings`).
    #[arg(long, value_enum, default_value_t = Format::Csv)]
    format: Format,
    /// Write to this file (created or truncated) instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// What `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// Comma-separated values with a header line.
    Csv,
    /// One JSON object per line.
    Ndjson,
}

/// The readings to export, checked.
#[derive(Debug)]
struct Selection {
    /// The filters as given (sent to a hub) and parsed (for the store).
    filters: Vec<(String, TopicFilter)>,
    /// Event time, inclusive, epoch ms.
    from_ms: Option<i64>,
    /// Event time, exclusive, epoch ms.
    to_ms: Option<i64>,
}

impl Selection {
    fn parse(args: &ExportArgs) -> Result<Selection, String> {
        let mut filters = Vec::with_capacity(args.filters.len());
        for f in &args.filters {
            let parsed = TopicFilter::parse_bounded(f).map_err(|err| format!("--filter: {err}"))?;
            filters.push((f.clone(), parsed));
        }
        let time = |flag: &str, value: &Option<String>| {
            value
                .as_deref()
                .map(parse_time)
                .transpose()
                .map_err(|err| format!("--{flag}: {err}"))
        };
        let from_ms = time("from", &args.from)?;
        let to_ms = time("to", &args.to)?;
        if let (Some(from), Some(to)) = (from_ms, to_ms) {
            if from >= to {
                return Err(
                    "--from must be before --to (--from is inclusive, --to exclusive)".to_owned(),
                );
            }
        }
        Ok(Selection {
            filters,
            from_ms,
            to_ms,
        })
    }
}

/// Why an export stopped before the end.
#[derive(Debug)]
enum Stop {
    /// The reader of standard output went away (`edgewatch export ... | head`): a quiet end.
    ReaderGone,
    /// An error, in words.
    Failed(String),
}

/// Where the rows go: standard output or a file, buffered. The file is created at the first
/// write (or at the end when there is nothing to write), so an export that fails before its
/// first row leaves no file behind and truncates none.
struct Sink {
    out: Option<Box<dyn Write>>,
    /// `None`: standard output.
    file: Option<PathBuf>,
}

impl Sink {
    fn new(file: Option<PathBuf>) -> Sink {
        Sink { out: None, file }
    }

    fn name(&self) -> String {
        match &self.file {
            None => "standard output".to_owned(),
            Some(path) => path.display().to_string(),
        }
    }

    fn failed(&self, err: &std::io::Error) -> Stop {
        if self.file.is_none() && err.kind() == std::io::ErrorKind::BrokenPipe {
            Stop::ReaderGone
        } else {
            Stop::Failed(format!("cannot write to {}: {err}", self.name()))
        }
    }

    fn writer(&mut self) -> Result<&mut Box<dyn Write>, Stop> {
        if self.out.is_none() {
            let out: Box<dyn Write> = match &self.file {
                None => Box::new(std::io::BufWriter::new(std::io::stdout())),
                Some(path) => {
                    let f = std::fs::File::create(path).map_err(|err| {
                        Stop::Failed(format!("cannot create {}: {err}", path.display()))
                    })?;
                    Box::new(std::io::BufWriter::new(f))
                }
            };
            self.out = Some(out);
        }
        self.out
            .as_mut()
            .ok_or_else(|| Stop::Failed("the output is not open".to_owned()))
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), Stop> {
        let result = self.writer()?.write_all(bytes);
        result.map_err(|err| self.failed(&err))
    }

    fn finish(&mut self) -> Result<(), Stop> {
        let result = self.writer()?.flush();
        result.map_err(|err| self.failed(&err))
    }

    /// Whether a file was created (and so may hold part of the rows).
    fn created_file(&self) -> bool {
        self.file.is_some() && self.out.is_some()
    }
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").field("file", &self.file).finish()
    }
}

/// Where the readings come from, checked.
enum Source {
    Dir(PathBuf),
    Hub(url::Url),
}

pub(crate) fn main(args: ExportArgs) -> ExitCode {
    let checked = Selection::parse(&args).and_then(|sel| {
        let source = match (&args.data_dir, &args.hub) {
            (Some(dir), None) => Source::Dir(dir.clone()),
            (None, Some(url)) => Source::Hub(hub::base_url(url)?),
            _ => return Err("give one of --data-dir DIR or --hub URL".to_owned()),
        };
        Ok((sel, source))
    });
    let (sel, source) = match checked {
        Ok(v) => v,
        Err(msg) => {
            eprintln!("error: {msg}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut sink = Sink::new(args.out.clone());
    let result = match source {
        Source::Dir(dir) => store::export(&dir, &sel, args.format, &mut sink),
        Source::Hub(url) => hub::export(&url, args.token.as_deref(), &sel, args.format, &mut sink),
    }
    .and_then(|()| sink.finish());
    match result {
        Ok(()) | Err(Stop::ReaderGone) => ExitCode::SUCCESS,
        Err(Stop::Failed(msg)) => {
            eprintln!("error: {msg}");
            if sink.created_file() {
                eprintln!(
                    "note: {} holds only what was written before the error",
                    sink.name()
                );
            }
            ExitCode::FAILURE
        }
    }
}
