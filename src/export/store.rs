//! `edgewatch export --data-dir DIR`: the store of a stopped hub, read with the store's own
//! query (what `GET /v1/readings` answers), page by page.

use std::path::Path;

use edgewatch_bridge::http::formats;
use edgewatch_bridge::store::{ReadingQuery, StoreOptions};
use edgewatch_bridge::Store;

use super::{Format, Selection, Sink, Stop};

/// Readings per query: one page in memory at a time.
const PAGE: usize = 1000;
/// sled's page cache for the export (the hub's default is 64 MiB; one pass needs little).
const CACHE_BYTES: u64 = 16 * 1024 * 1024;

pub(super) fn export(
    dir: &Path,
    sel: &Selection,
    format: Format,
    sink: &mut Sink,
) -> Result<(), Stop> {
    let store = open(dir)?;
    if format == Format::Csv {
        sink.write(formats::CSV_HEADER.as_bytes())?;
    }
    let mut query = ReadingQuery {
        filters: sel.filters.iter().map(|(_, f)| f.clone()).collect(),
        from_ms: sel.from_ms,
        to_ms: sel.to_ms,
        after: 0,
        limit: PAGE,
    };
    loop {
        let page = store.reading_rows(&query).map_err(|err| {
            Stop::Failed(format!("reading the store in {}: {err}", dir.display()))
        })?;
        match format {
            Format::Csv => sink.write(formats::csv_rows(&page).as_bytes())?,
            Format::Ndjson => {
                let lines =
                    formats::ndjson_lines(&page).map_err(|err| Stop::Failed(err.to_string()))?;
                sink.write(&lines)?;
            }
        }
        match page.next_after {
            Some(next) if next > query.after => query.after = next,
            Some(_) => {
                return Err(Stop::Failed(
                    "the store's paging cursor did not advance".to_owned(),
                ))
            }
            None => return Ok(()),
        }
    }
}

/// Opens the store in `dir` if there is one; a running hub's lock is said in words.
fn open(dir: &Path) -> Result<Store, Stop> {
    if !dir.is_dir() {
        return Err(Stop::Failed(format!(
            "{}: no such directory (give the hub's data directory: bridge.data_dir, --data-dir or \
             EDGEWATCH_DATA_DIR of `edgewatch run`)",
            dir.display()
        )));
    }
    // sled's files: without them, opening would create an empty store here.
    if !dir.join("conf").is_file() || !dir.join("db").is_file() {
        return Err(Stop::Failed(format!(
            "{} holds no edgewatch store (give the hub's data directory: bridge.data_dir, \
             --data-dir or EDGEWATCH_DATA_DIR of `edgewatch run`)",
            dir.display()
        )));
    }
    let opts = StoreOptions {
        cache_bytes: CACHE_BYTES,
        ..StoreOptions::default()
    };
    Store::open(dir, &opts).map_err(|err| {
        if err.is_locked() {
            Stop::Failed(format!(
                "a hub is running on {}: it locks its data directory while it runs. Export from \
                 the running hub with --hub http://ADDR (its HTTP address, bridge.http_listen) \
                 instead, or stop it first",
                dir.display()
            ))
        } else {
            Stop::Failed(err.to_string())
        }
    })
}
