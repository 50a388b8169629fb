//! `edgewatch backup --hub URL --out DIR`: a consistent online backup of a running hub
//! (`GET /v1/backup`, bridge/src/store/backup.rs) written into a new data directory, which
//! `edgewatch run --data-dir DIR` (or `export --data-dir`) then opens. An incomplete download
//! leaves nothing behind.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use clap::Args;
use edgewatch_bridge::store::backup::{restore_frames, RestoreError, Snapshot};

use super::hub::{base_url, causes, refusal};
use super::{Stop, EXIT_USAGE};

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

/// Downloads the backup and restores it into `out` on a thread of its own, fed through a
/// bounded channel (8 chunks).
fn fetch(base: &reqwest::Url, token: Option<&str>, out: &Path) -> Result<Snapshot, String> {
    let url = base.join("v1/backup").map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start the async runtime: {err}"))?;
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(8);
    let dir = out.to_path_buf();
    let restore = std::thread::spawn(move || {
        let mut input = ChannelReader {
            rx,
            buf: Vec::new(),
            at: 0,
        };
        restore_frames(&mut input, &dir)
    });
    let downloaded = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .build()
            .map_err(|err| format!("cannot make an HTTP client: {err}"))?;
        let mut request = client.get(url.clone());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let mut response = request
            .send()
            .await
            .map_err(|err| format!("GET {url}: {}", causes(&err)))?;
        match response.status() {
            reqwest::StatusCode::OK => {}
            reqwest::StatusCode::FORBIDDEN => {
                return Err(
                    "the hub refused (403): a backup needs a token that may read every \
                     topic (`edgewatch token create --name backup --read '#'`)"
                        .to_owned(),
                )
            }
            reqwest::StatusCode::CONFLICT => {
                return Err(
                    "another backup of this hub is running; try again when it is done".to_owned(),
                )
            }
            _ => {
                return Err(match refusal(response).await {
                    Stop::Failed(msg) => msg,
                    Stop::ReaderGone => "the hub refused the backup".to_owned(),
                })
            }
        }
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|err| format!("the download broke off: {}", causes(&err)))?
        {
            if tx.send(chunk.to_vec()).is_err() {
                break; // the restore stopped: its error says why
            }
        }
        Ok(())
    });
    drop(tx);
    let restored = restore
        .join()
        .map_err(|_| "the restore thread failed".to_owned())?;
    downloaded?;
    restored.map_err(|err: RestoreError| err.to_string())
}

/// Reads the chunks a channel brings; ends when the sender is gone.
struct ChannelReader {
    rx: mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    at: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.buf.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.buf = chunk;
                    self.at = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
