//! `edgewatch backup --hub URL --out DIR`: a consistent online backup of a running hub
//! (`GET /v1/backup`, bridge/src/store/backup.rs) written into a new data directory, which
//! `edgewatch run --data-dir DIR` (or `export --data-dir`) then opens. An incomplete download
//! leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use edgewatch_bridge::store::backup::{restore_frames, RestoreError, Snapshot};

use super::http::get;
use super::hub::{base_url, refusal, Tool};
use super::{Stop, EXIT_USAGE};

/// Longest wait for the next bytes of the backup (the hub copies its store first).
const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// Options of `edgewatch backup`.
#[derive(Debug, Args)]
pub(crate) struct BackupArgs {
    /// The running hub, `http://HOST:PORT`.
    #[arg(long, value_name = "URL")]
    hub: String,
    /// A token that may read every topic (sent as `Authorization: Bearer`).
    #[arg(
        long,
        env = "EDGEWATCH_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// The new data directory (must not exist, or be empty).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

pub(crate) fn main(args: BackupArgs) -> ExitCode {
    let base = match base_url(&args.hub) {
        Ok(base) => base,
        Err(msg) => return usage(&msg),
    };
    let empty = std::fs::read_dir(&args.out).map(|mut d| d.next().is_none());
    match empty {
        Ok(false) => {
            return usage(&format!(
                "--out {}: exists and is not empty; give a new directory",
                args.out.display()
            ))
        }
        Ok(true) => {
            let _ = std::fs::remove_dir(&args.out);
        }
        Err(_) => {}
    }
    match fetch(&base, args.token.as_deref(), &args.out) {
        Ok(snap) => {
            println!(
                "backup of every reading up to seq {} ({} entries) in {}; run a hub on it with --data-dir {}",
                snap.head,
                snap.entries,
                args.out.display(),
                args.out.display()
            );
            ExitCode::SUCCESS
        }
        Err(msg) => {
            let _ = std::fs::remove_dir_all(&args.out);
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(EXIT_USAGE)
}

/// Downloads the backup and restores it into `out` as it arrives.
fn fetch(base: &url::Url, token: Option<&str>, out: &Path) -> Result<Snapshot, String> {
    let url = base.join("v1/backup").map_err(|e| e.to_string())?;
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("Authorization", b.as_str()))
        .collect();
    let mut response = get(&url, &headers, READ_TIMEOUT).map_err(|e| format!("GET {url}: {e}"))?;
    if response.status != 200 {
        return Err(match refusal(response, Tool::Backup) {
            Stop::Failed(msg) => msg,
            Stop::ReaderGone => "the hub refused the backup".to_owned(),
        });
    }
    restore_frames(&mut response, out).map_err(|err: RestoreError| err.to_string())
}
