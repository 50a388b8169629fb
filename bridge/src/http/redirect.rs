//! The plain-HTTP listener beside an HTTPS server (`bridge.http_redirect_listen`): every
//! request, whatever its method or path, gets `308 Permanent Redirect` to the same path and
//! query over HTTPS, on the host the request named (its `Host` header) and the HTTPS
//! server's port. 308 (not 301) keeps the method and body of a `POST`. It serves nothing
//! else, so it reveals nothing: a name that is not the hub's (DNS rebinding) is sent on to
//! the HTTPS server, whose `Host` check refuses it there.
//!
//! Its connections count under the same caps as the HTTPS server's (`bridge.http_max_*`,
//! one [`HttpGuard`]), and have the same head and idle timeout.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::Arc;

use axum::body::Body;
use axum::http::uri::Authority;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::guard::{HttpGuard, Permit};
use super::server::accept_failed;

/// Answers every request on `listener` with a redirect to HTTPS on `https_port`, until
/// `shutdown` completes; then stops accepting, lets requests in flight finish and waits for
/// the connections to close. A connection over `guard`'s caps is closed at once.
pub async fn serve(
    listener: TcpListener,
    https_port: u16,
    guard: Arc<HttpGuard>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let closing = CancellationToken::new();
    let connections = TaskTracker::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    accept_failed(err).await;
                    continue;
                }
            },
        };
        let Some(permit) = guard.admit(peer.ip()) else {
            continue;
        };
        connections.spawn(connection(tcp, permit, https_port, closing.clone()));
    }
    drop(listener);
    closing.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

/// One connection, through hyper (keep-alive, bounded heads), until it closes or `closing`.
async fn connection(tcp: TcpStream, permit: Permit, https_port: u16, closing: CancellationToken) {
    let guard = permit.guard();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(guard.header_timeout)
        .max_buf_size(guard.max_head_bytes);
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        std::future::ready(Ok::<_, Infallible>(redirect(&req, https_port)))
    });
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
    let mut conn = pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = closing.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        tracing::trace!(%err, "HTTP redirect connection ended with an error");
    }
    drop(permit);
}

/// `308` to `https://HOST[:PORT]/PATH?QUERY`; `400` when the request names no usable host.
fn redirect<B>(req: &Request<B>, https_port: u16) -> Response<Body> {
    let mut res = Response::new(Body::empty());
    match location(req, https_port).and_then(|l| HeaderValue::try_from(l).ok()) {
        Some(location) => {
            *res.status_mut() = StatusCode::PERMANENT_REDIRECT;
            res.headers_mut().insert(header::LOCATION, location);
        }
        None => *res.status_mut() = StatusCode::BAD_REQUEST,
    }
    res
}

/// Where a request goes over HTTPS: the host of its absolute URI or of its `Host` header
/// (without a port; an IPv6 literal keeps its brackets), `https_port` unless it is 443, the
/// path and query as sent.
fn location<B>(req: &Request<B>, https_port: u16) -> Option<String> {
    let authority = match req.uri().authority() {
        Some(authority) => authority.clone(),
        None => req
            .headers()
            .get(header::HOST)?
            .to_str()
            .ok()?
            .parse::<Authority>()
            .ok()?,
    };
    let host = authority.host();
    if host.is_empty() {
        return None;
    }
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    Some(format!("https://{host}{port}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(uri: &str, host: Option<&str>, port: u16) -> Response<Body> {
        let mut req = Request::get(uri);
        if let Some(host) = host {
            req = req.header(header::HOST, host);
        }
        redirect(&req.body(()).unwrap(), port)
    }

    fn location_of(res: &Response<Body>) -> &str {
        assert_eq!(res.status(), StatusCode::PERMANENT_REDIRECT);
        res.headers()[header::LOCATION].to_str().unwrap()
    }

    #[test]
    fn the_path_and_query_go_to_the_https_port_of_the_named_host() {
        let cases = [
            (
                "/v1/readings?filter=sensors/%23&limit=5",
                Some("hub.lan:80"),
                8443,
                "https://hub.lan:8443/v1/readings?filter=sensors/%23&limit=5",
            ),
            ("/", Some("hub.lan"), 443, "https://hub.lan/"),
            ("/x", Some("[::1]:8080"), 8443, "https://[::1]:8443/x"),
            (
                "/x",
                Some("user@10.0.0.2:80"),
                8443,
                "https://10.0.0.2:8443/x",
            ),
            (
                "http://other.lan:80/y?z",
                Some("hub.lan"),
                8443,
                "https://other.lan:8443/y?z",
            ),
        ];
        for (uri, host, port, want) in cases {
            assert_eq!(location_of(&to(uri, host, port)), want, "{uri} {host:?}");
        }
    }

    #[test]
    fn a_request_without_a_usable_host_is_400() {
        for host in [None, Some(""), Some("bad host"), Some("a:b:c")] {
            assert_eq!(
                to("/x", host, 8443).status(),
                StatusCode::BAD_REQUEST,
                "{host:?}"
            );
        }
    }
}
