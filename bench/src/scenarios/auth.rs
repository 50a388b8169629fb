//! `auth`: what authentication costs per request and per connection.
//!
//! One hub holds an app token, an HS256 JWT key and an account, with `auth.allow_anonymous`,
//! so the same process answers every kind of caller: anonymous, app token, JWT and a person's
//! session cookie. Each round measures every kind, in a rotating order, so drift on this
//! shared machine falls on all of them alike:
//!
//! * requests/s of `GET /v1/series` on an empty store from [`CLIENTS`] keep-alive clients: the
//!   smallest data request, so the credential check's share is the largest it can be;
//! * the time to open a Server-Sent Events stream and read its first frame (a new connection
//!   each time), credential in the query (`access_token`) or the cookie: the per-connection cost.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;

use super::Ctx;
use crate::procs::{self, EdgewatchTuning};
use crate::report::{Figure, Report};

/// Concurrent keep-alive clients of the request measurement.
const CLIENTS: usize = 8;
/// Stream opens per kind and round.
const OPENS: usize = 200;
/// The JWT key (HS256) of the hub under test.
const JWT_SECRET: &str = "bench-only-secret-of-at-least-32-bytes";

/// A caller: its name in the report and how it presents itself.
#[derive(Debug, Clone)]
enum Kind {
    Anonymous,
    Token(String),
    Jwt(String),
    Cookie(String),
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::Anonymous => "anonymous",
            Kind::Token(_) => "app token",
            Kind::Jwt(_) => "JWT (HS256)",
            Kind::Cookie(_) => "session cookie",
        }
    }

    /// `req` with this caller's credential as a header.
    fn sign(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Kind::Anonymous => req,
            Kind::Token(t) | Kind::Jwt(t) => req.bearer_auth(t),
            Kind::Cookie(c) => req.header("cookie", c),
        }
    }

    /// A stream URL with the credential as `access_token` (header-less clients' way).
    fn stream_url(&self, base: &str) -> String {
        match self {
            Kind::Token(t) | Kind::Jwt(t) => format!("{base}/v1/stream?access_token={t}"),
            _ => format!("{base}/v1/stream"),
        }
    }
}

pub(crate) async fn auth(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let dir = ctx.work.join("auth");
    std::fs::create_dir_all(&dir)?;
    let (token, token_entry) = token_create(ctx).await?;
    let users = passwd(ctx, "ops", "ops-password").await?;
    let tuning = EdgewatchTuning {
        extra: Some(format!(
            "[auth]\nallow_anonymous = true\n[auth.jwt]\nsecret = \"{JWT_SECRET}\"\n\
             {token_entry}\n{users}\n"
        )),
        ..EdgewatchTuning::default()
    };
    let server = procs::start_edgewatch(&ctx.edgewatch, &dir, &dir.join("data"), &tuning).await?;
    let base = server.http_base();
    let cookie = login(&ctx.http, &base, "ops", "ops-password").await?;
    let kinds = [
        Kind::Anonymous,
        Kind::Token(token),
        Kind::Jwt(jwt()?),
        Kind::Cookie(cookie),
    ];
    let mut rates = vec![Vec::new(); kinds.len()];
    let mut opens = vec![Vec::new(); kinds.len()];
    for round in 0..ctx.p.runs.max(1) {
        for k in 0..kinds.len() {
            let i = (k + round) % kinds.len();
            rates[i].push(request_rate(ctx, &base, &kinds[i]).await?);
            opens[i].push(stream_open_ms(&base, &kinds[i]).await?);
        }
    }
    server.stop(Duration::from_secs(10)).await?;
    for (i, kind) in kinds.iter().enumerate() {
        report.push(
            Figure::new(
                "auth",
                "edgewatch",
                &format!("GET /v1/series, {}", kind.name()),
                "req/s",
                rates[i].clone(),
            )
            .note(format!(
                "{CLIENTS} keep-alive clients, empty store; interleaved rounds"
            )),
        );
        report.push(
            Figure::new(
                "auth",
                "edgewatch",
                &format!("SSE open to first frame, {}", kind.name()),
                "ms",
                opens[i].clone(),
            )
            .note(format!(
                "median of {OPENS} sequential new connections per round"
            )),
        );
    }
    Ok(())
}

/// `edgewatch token create`: the token and its config entry.
async fn token_create(ctx: &Ctx) -> Result<(String, String)> {
    let out = tokio::process::Command::new(&ctx.edgewatch)
        .args([
            "token",
            "create",
            "--name",
            "bench",
            "--read",
            "#",
            "--metrics",
        ])
        .output()
        .await?;
    let text = String::from_utf8(out.stdout)?;
    let (token, entry) = text
        .split_once('\n')
        .context("token create printed a token")?;
    Ok((token.trim().to_owned(), entry.to_owned()))
}

/// `edgewatch passwd NAME`: a `[[broker.users]]` entry.
async fn passwd(ctx: &Ctx, name: &str, password: &str) -> Result<String> {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new(&ctx.edgewatch)
        .args(["passwd", name])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    stdin.write_all(format!("{password}\n").as_bytes()).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    Ok(String::from_utf8(out.stdout)?)
}

/// Logs in; the `Cookie` header value.
async fn login(http: &reqwest::Client, base: &str, user: &str, password: &str) -> Result<String> {
    let res = http
        .post(format!("{base}/v1/login"))
        .header("content-type", "application/json")
        .body(serde_json::json!({"username": user, "password": password}).to_string())
        .send()
        .await?;
    if !res.status().is_success() {
        bail!("login as {user}: {}", res.status());
    }
    let cookie = res
        .headers()
        .get("set-cookie")
        .context("a session cookie")?
        .to_str()?;
    Ok(cookie.split(';').next().unwrap_or_default().to_owned())
}

/// An HS256 JWT reading everything, valid for an hour.
fn jwt() -> Result<String> {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    let claims = serde_json::json!({"sub": "bench", "exp": exp, "edgewatch": {"read": ["#"]}});
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )?)
}

/// Requests/s of `GET /v1/series` by `kind` from [`CLIENTS`] clients over the measure window
/// (after the warm-up); any answer but 200 is an error.
async fn request_rate(ctx: &Ctx, base: &str, kind: &Kind) -> Result<f64> {
    let url = format!("{base}/v1/series");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()?;
    let (warmup, measure) = (ctx.p.warmup, ctx.p.measure);
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (client, url, kind) = (client.clone(), url.clone(), kind.clone());
            tokio::spawn(async move {
                let start = Instant::now();
                let mut counted = 0u64;
                while start.elapsed() < warmup + measure {
                    let res = kind.sign(client.get(&url)).send().await?;
                    if res.status() != reqwest::StatusCode::OK {
                        bail!("GET /v1/series as {}: {}", kind.name(), res.status());
                    }
                    res.bytes().await?;
                    if start.elapsed() >= warmup {
                        counted += 1;
                    }
                }
                Ok::<_, anyhow::Error>(counted)
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / measure.as_secs_f64())
}

/// Median milliseconds from sending a stream request on a new connection to its first frame.
async fn stream_open_ms(base: &str, kind: &Kind) -> Result<f64> {
    let url = kind.stream_url(base);
    let mut times = Vec::with_capacity(OPENS);
    for _ in 0..OPENS {
        // A client per open: every open is a new connection.
        let client = reqwest::Client::new();
        let started = Instant::now();
        let req = client.get(&url).header("accept", "text/event-stream");
        let req = match kind {
            Kind::Cookie(_) => kind.sign(req),
            _ => req,
        };
        let res = tokio::time::timeout(Duration::from_secs(10), req.send()).await??;
        if res.status() != reqwest::StatusCode::OK {
            bail!("stream as {}: {}", kind.name(), res.status());
        }
        let mut body = res.bytes_stream();
        tokio::time::timeout(Duration::from_secs(10), body.next())
            .await?
            .context("the stream ended before its first frame")??;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}
