//! `edgewatch export --hub URL`: pages through a running hub's `GET /v1/readings` (its paging
//! cursor `after` and the `X-Next-After` header, docs/openapi.json), asking for CSV or NDJSON
//! and copying each answer as it arrives (the CSV header once).

use std::io::Read;
use std::time::Duration;

use url::Url;

use super::http::{get, Response};
use super::{Format, Selection, Sink, Stop};

/// Longest wait for the next bytes of an answer.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Most bytes of an error answer read (its JSON body is short).
const ERROR_BODY_MAX: usize = 64 * 1024;

/// The hub's base URL from `--hub`: `http://HOST:PORT`, optionally with a path prefix.
pub(super) fn base_url(given: &str) -> Result<Url, String> {
    let bad = |why: &str| format!("--hub {given:?}: {why}");
    let mut url = Url::parse(given).map_err(|err| {
        if given.contains("://") {
            bad(&err.to_string())
        } else {
            bad("expected a URL such as http://127.0.0.1:8080")
        }
    })?;
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err(bad(
                "export speaks plain HTTP only; give the hub's http:// address, or export from \
                 its data directory with --data-dir (hub stopped)",
            ))
        }
        other => return Err(bad(&format!("scheme {other:?}: expected http://HOST:PORT"))),
    }
    if url.host_str().unwrap_or("").is_empty() {
        return Err(bad("no host: expected http://HOST:PORT"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("give the hub's address without a query or fragment"));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

pub(super) fn export(
    base: &Url,
    token: Option<&str>,
    sel: &Selection,
    format: Format,
    sink: &mut Sink,
) -> Result<(), Stop> {
    let pages = Pages {
        base,
        token,
        sel,
        format,
    };
    pages.copy_all(sink)
}

/// One export from a hub.
struct Pages<'a> {
    base: &'a Url,
    token: Option<&'a str>,
    sel: &'a Selection,
    format: Format,
}

impl Pages<'_> {
    /// `GET /v1/readings` with the selection, after the cursor `after`.
    fn url(&self, after: u64) -> Result<Url, Stop> {
        let mut url = self
            .base
            .join("v1/readings")
            .map_err(|err| Stop::Failed(format!("bad hub URL {}: {err}", self.base)))?;
        {
            let mut q = url.query_pairs_mut();
            for (given, _) in &self.sel.filters {
                q.append_pair("filter", given);
            }
            if let Some(from) = self.sel.from_ms {
                q.append_pair("from", &from.to_string());
            }
            if let Some(to) = self.sel.to_ms {
                q.append_pair("to", &to.to_string());
            }
            if after > 0 {
                q.append_pair("after", &after.to_string());
            }
        }
        Ok(url)
    }

    fn media_type(&self) -> &'static str {
        match self.format {
            Format::Csv => "text/csv",
            Format::Ndjson => "application/x-ndjson",
        }
    }

    /// Every page, until the hub says there is no next one.
    fn copy_all(&self, sink: &mut Sink) -> Result<(), Stop> {
        let mut after = 0u64;
        let mut first = true;
        loop {
            let next = self.copy_page(after, first, sink)?;
            first = false;
            match next {
                Some(next) if next > after => after = next,
                Some(next) => {
                    return Err(Stop::Failed(format!(
                    "the hub's paging cursor did not advance (X-Next-After {next} after {after})"
                )))
                }
                None => return Ok(()),
            }
        }
    }

    /// Copies one page to `sink` (the CSV header only of the first); returns the cursor of
    /// the next page, if there is one.
    fn copy_page(&self, after: u64, first: bool, sink: &mut Sink) -> Result<Option<u64>, Stop> {
        let bearer = self.token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Accept", self.media_type())];
        if let Some(b) = &bearer {
            headers.push(("Authorization", b.as_str()));
        }
        let unreachable = |err: String| {
            Stop::Failed(format!(
                "cannot get readings from the hub at {}: {err}",
                self.base
            ))
        };
        let mut response = get(&self.url(after)?, &headers, READ_TIMEOUT).map_err(unreachable)?;
        if response.status != 200 {
            return Err(refusal(response, Tool::Export));
        }
        self.check_type(&response)?;
        let next = next_after(response.header("x-next-after"))?;
        let mut skip_header = self.format == Format::Csv && !first;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = response
                .read(&mut buf)
                .map_err(|e| unreachable(format!("the answer broke off: {e}")))?;
            if n == 0 {
                break;
            }
            let mut bytes = &buf[..n];
            if skip_header {
                match bytes.iter().position(|b| *b == b'\n') {
                    Some(end) => {
                        bytes = &bytes[end + 1..];
                        skip_header = false;
                    }
                    None => continue,
                }
            }
            sink.write(bytes)?;
        }
        Ok(next)
    }

    /// The answer is in the format asked for (not, say, the JSON page of an older hub).
    fn check_type(&self, response: &Response) -> Result<(), Stop> {
        let got = response.header("content-type").unwrap_or("");
        if got.starts_with(self.media_type()) {
            Ok(())
        } else {
            Err(Stop::Failed(format!(
                "the hub answered {got:?}, not {}: is {} an edgewatch hub?",
                self.media_type(),
                self.base
            )))
        }
    }
}

/// `X-Next-After`: the cursor of the next page, absent on the last.
fn next_after(value: Option<&str>) -> Result<Option<u64>, Stop> {
    let Some(value) = value else {
        return Ok(None);
    };
    value
        .trim()
        .parse::<u64>()
        .map(Some)
        .map_err(|_| Stop::Failed(format!("the hub sent a bad X-Next-After header: {value:?}")))
}

/// Which command asked (for the hints of a refusal).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Tool {
    Export,
    Backup,
}

/// A non-200 answer, in words: the hub's own message and what to do.
pub(super) fn refusal(mut response: Response, tool: Tool) -> Stop {
    let status = response.status;
    let location = response.header("location").map(str::to_owned);
    let body = response.text(ERROR_BODY_MAX);
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.trim().chars().take(200).collect());
    let hint = match (status, tool) {
        (401, _) => " (give a token that may read the readings with --token or EDGEWATCH_TOKEN; \
                     `edgewatch token create --read FILTER` makes one)"
            .to_owned(),
        (403, Tool::Export) => " (the token may not read every --filter given)".to_owned(),
        (403, Tool::Backup) => " (a backup needs a token that may read every topic: \
                               `edgewatch token create --name backup --read '#'`)"
            .to_owned(),
        (409, Tool::Backup) => {
            " (another backup of this hub is running; try again when it is done)".to_owned()
        }
        (300..=399, _) => {
            format!(
            " (it redirects to {}; this command speaks plain HTTP only: give the hub's http:// \
             address{})",
            location.as_deref().unwrap_or("another address"),
            if tool == Tool::Export { ", or use --data-dir with the hub stopped" } else { "" }
        )
        }
        _ => String::new(),
    };
    let message = if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    };
    Stop::Failed(format!(
        "the hub answered {status} {}{message}{hint}",
        reason(status)
    ))
}

/// The reason phrase of the statuses a hub answers with.
fn reason(status: u16) -> &'static str {
    match status {
        301 | 302 | 307 | 308 => "Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        421 => "Misdirected Request",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_urls_are_plain_http_bases() {
        let ok = |s: &str| base_url(s).map(|u| u.to_string());
        assert_eq!(
            ok("http://127.0.0.1:8080").as_deref(),
            Ok("http://127.0.0.1:8080/")
        );
        assert_eq!(
            ok("http://box:8080/edge").as_deref(),
            Ok("http://box:8080/edge/")
        );
        let err = |s: &str| base_url(s).err().unwrap_or_default();
        assert!(err("https://box:8443").contains("plain HTTP only"));
        assert!(err("box:8080").contains("http://"));
        assert!(err("127.0.0.1:8080").contains("http://"));
        assert!(err("http://box:8080/?x=1").contains("query"));
        assert!(err("").contains("http://"));
    }

    #[test]
    fn the_next_cursor_comes_from_its_header() {
        assert!(matches!(next_after(None), Ok(None)));
        assert!(matches!(next_after(Some("42")), Ok(Some(42))));
        assert!(matches!(next_after(Some("-1")), Err(Stop::Failed(_))));
    }
}
