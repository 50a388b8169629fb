//! `edgewatch export --hub URL`: pages through a running hub's `GET /v1/readings` (its paging
//! cursor `after` and the `X-Next-After` header, docs/openapi.json), asking for CSV or NDJSON
//! and copying each answer as it arrives (the CSV header once).

use std::time::Duration;

use reqwest::header::{HeaderMap, ACCEPT, LOCATION};
use reqwest::{StatusCode, Url};

use super::{Format, Selection, Sink, Stop};

/// Time to connect to the hub.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| Stop::Failed(format!("cannot start the async runtime: {err}")))?;
    let client = reqwest::Client::builder()
        // A redirect is said, not followed (a hub with HTTPS redirects plain HTTP to it).
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .build()
        .map_err(|err| Stop::Failed(format!("cannot make an HTTP client: {err}")))?;
    let pages = Pages {
        client,
        base,
        token,
        sel,
        format,
    };
    runtime.block_on(pages.copy_all(sink))
}

/// One export from a hub.
struct Pages<'a> {
    client: reqwest::Client,
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
    async fn copy_all(&self, sink: &mut Sink) -> Result<(), Stop> {
        let mut after = 0u64;
        let mut first = true;
        loop {
            let next = self.copy_page(after, first, sink).await?;
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
    async fn copy_page(
        &self,
        after: u64,
        first: bool,
        sink: &mut Sink,
    ) -> Result<Option<u64>, Stop> {
        let mut request = self
            .client
            .get(self.url(after)?)
            .header(ACCEPT, self.media_type());
        if let Some(token) = self.token {
            request = request.bearer_auth(token);
        }
        let unreachable = |err: reqwest::Error| {
            Stop::Failed(format!(
                "cannot get readings from the hub at {}: {}",
                self.base,
                causes(&err)
            ))
        };
        let mut response = request.send().await.map_err(unreachable)?;
        if response.status() != StatusCode::OK {
            return Err(refusal(response).await);
        }
        self.check_type(response.headers())?;
        let next = next_after(response.headers())?;
        let mut skip_header = self.format == Format::Csv && !first;
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            let mut bytes = &chunk[..];
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
    fn check_type(&self, headers: &HeaderMap) -> Result<(), Stop> {
        let got = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
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

/// `err` and its sources: reqwest's own words ("error sending request") leave out why.
pub(super) fn causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `X-Next-After`: the cursor of the next page, absent on the last.
fn next_after(headers: &HeaderMap) -> Result<Option<u64>, Stop> {
    let Some(value) = headers.get("x-next-after") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| Stop::Failed(format!("the hub sent a bad X-Next-After header: {value:?}")))
}

/// A non-200 answer, in words: the hub's own message and what to do.
pub(super) async fn refusal(mut response: reqwest::Response) -> Stop {
    let status = response.status();
    let location = response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() >= ERROR_BODY_MAX {
            break;
        }
    }
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&body);
            text.trim().chars().take(200).collect()
        });
    let hint = match status {
        StatusCode::UNAUTHORIZED => {
            " (give a token that may read the filter with --token or EDGEWATCH_TOKEN; `edgewatch \
             token create --read FILTER` makes one)"
                .to_owned()
        }
        StatusCode::FORBIDDEN => " (the token may not read every --filter given)".to_owned(),
        s if s.is_redirection() => format!(
            " (it redirects to {}; export speaks plain HTTP only: give the hub's http:// \
             address, or use --data-dir with the hub stopped)",
            location.as_deref().unwrap_or("another address")
        ),
        _ => String::new(),
    };
    let message = if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    };
    Stop::Failed(format!("the hub answered {status}{message}{hint}"))
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
        let mut h = HeaderMap::new();
        assert!(matches!(next_after(&h), Ok(None)));
        h.insert(
            "x-next-after",
            reqwest::header::HeaderValue::from_static("42"),
        );
        assert!(matches!(next_after(&h), Ok(Some(42))));
        h.insert(
            "x-next-after",
            reqwest::header::HeaderValue::from_static("-1"),
        );
        assert!(matches!(next_after(&h), Err(Stop::Failed(_))));
    }
}
