//! A small blocking HTTP/1.1 client for `export --hub` and `backup --hub`: one GET per
//! connection (`Connection: close`), plain HTTP, the body read as it arrives (Content-Length,
//! chunked, or until the hub closes). The hub's HTTP server is ours; a general-purpose client
//! library cost about a megabyte of the binary for these two commands.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use url::Url;

/// Time to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a head line (status, header) may be.
const LINE_MAX: usize = 16 * 1024;
/// Most header lines.
const HEADERS_MAX: usize = 100;

/// A response: status, headers, and the body to read ([`Read`]).
pub(super) struct Response {
    pub(super) status: u16,
    headers: Vec<(String, String)>,
    conn: BufReader<TcpStream>,
    body: Body,
}

enum Body {
    /// Bytes left.
    Length(u64),
    /// Bytes left in the current chunk; `None` before the first size line.
    Chunked {
        left: Option<u64>,
        done: bool,
    },
    UntilClose,
}

/// `GET url` with `headers`, waiting at most `read_timeout` for each read.
pub(super) fn get(
    url: &Url,
    headers: &[(&str, &str)],
    read_timeout: Duration,
) -> Result<Response, String> {
    let host = url.host_str().ok_or("the URL has no host")?;
    let port = url.port_or_known_default().unwrap_or(80);
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    let mut last = format!("{host}:{port} has no address");
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("cannot connect to {addr}: {e}"),
        }
    }
    let mut stream = stream.ok_or(last)?;
    stream
        .set_read_timeout(Some(read_timeout))
        .map_err(|e| e.to_string())?;
    let mut target = url.path().to_owned();
    if let Some(q) = url.query() {
        target.push('?');
        target.push_str(q);
    }
    let mut head = format!(
        "GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: edgewatch/{}\r\nConnection: close\r\n",
        env!("CARGO_PKG_VERSION")
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .map_err(|e| format!("sending the request: {e}"))?;
    read_head(BufReader::new(stream))
}

fn read_line(conn: &mut BufReader<TcpStream>) -> Result<String, String> {
    let mut line = Vec::new();
    let n = conn
        .by_ref()
        .take(LINE_MAX as u64)
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("reading the answer: {e}"))?;
    if n == 0 || line.last() != Some(&b'\n') {
        return Err("the hub closed the connection in the middle of its answer's head".into());
    }
    Ok(String::from_utf8_lossy(&line).trim_end().to_owned())
}

fn read_head(mut conn: BufReader<TcpStream>) -> Result<Response, String> {
    let status_line = read_line(&mut conn)?;
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP answer: {status_line:?}"))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(&mut conn)?;
        if line.is_empty() {
            break;
        }
        if headers.len() == HEADERS_MAX {
            return Err("the answer has too many headers".into());
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let body = if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        Body::Chunked {
            left: None,
            done: false,
        }
    } else if let Some(len) = find("content-length").and_then(|v| v.parse().ok()) {
        Body::Length(len)
    } else {
        Body::UntilClose
    };
    Ok(Response {
        status,
        headers,
        conn,
        body,
    })
}

impl Response {
    /// The value of header `name` (any case).
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// At most `max` bytes of the body (an error answer's).
    pub(super) fn text(&mut self, max: usize) -> String {
        let mut body = Vec::new();
        let _ = self.by_ref().take(max as u64).read_to_end(&mut body);
        String::from_utf8_lossy(&body).into_owned()
    }
}

impl Read for Response {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
        match &mut self.body {
            Body::UntilClose => self.conn.read(out),
            Body::Length(0) => Ok(0),
            Body::Length(left) => {
                let want = out.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                let n = self.conn.read(&mut out[..want])?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                *left -= n as u64;
                Ok(n)
            }
            Body::Chunked { done: true, .. } => Ok(0),
            Body::Chunked { left, done } => {
                if left.is_none() || *left == Some(0) {
                    if left.is_some() {
                        let mut crlf = [0u8; 2];
                        self.conn.read_exact(&mut crlf)?;
                    }
                    let line = read_line(&mut self.conn).map_err(|e| bad(&e))?;
                    let size = line.split(';').next().unwrap_or("").trim();
                    let size =
                        u64::from_str_radix(size, 16).map_err(|_| bad("a bad chunk size"))?;
                    if size == 0 {
                        while !read_line(&mut self.conn).map_err(|e| bad(&e))?.is_empty() {}
                        *done = true;
                        return Ok(0);
                    }
                    *left = Some(size);
                }
                let chunk_left = left.unwrap_or(0);
                let want = out
                    .len()
                    .min(usize::try_from(chunk_left).unwrap_or(usize::MAX));
                let n = self.conn.read(&mut out[..want])?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                *left = Some(chunk_left - n as u64);
                Ok(n)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Serves `answer` once on a local port; the URL of it.
    fn serve(answer: &'static [u8]) -> Url {
        serve_owned(answer.to_vec())
    }

    fn serve_owned(answer: Vec<u8>) -> Url {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(&answer);
        });
        Url::parse(&format!("http://127.0.0.1:{port}/v1/x?filter=a%23")).unwrap()
    }

    #[test]
    fn bodies_by_length_chunks_and_close() {
        let t = Duration::from_secs(5);
        let mut r = get(
            &serve(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Next-After: 42\r\n\r\nhelloEXTRA"),
            &[],
            t,
        )
        .unwrap();
        assert_eq!((r.status, r.header("x-next-after")), (200, Some("42")));
        assert_eq!(r.text(100), "hello");
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;x=1\r\n, world\r\n0\r\n\r\n";
        let mut r = get(&serve(chunked), &[], t).unwrap();
        assert_eq!(r.text(100), "hello, world");
        let mut r = get(&serve(b"HTTP/1.0 403 Forbidden\r\n\r\nno"), &[], t).unwrap();
        assert_eq!((r.status, r.text(100).as_str()), (403, "no"));
        let cut = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel";
        let mut r = get(&serve(cut), &[], t).unwrap();
        let mut all = Vec::new();
        assert!(
            r.read_to_end(&mut all).is_err(),
            "a cut body is an error, not an end"
        );
        assert!(get(&serve(b"SSH-2.0\r\n\r\n"), &[], t).is_err());
    }

    #[test]
    fn large_chunks_across_reads() {
        let mut answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let mut want = Vec::new();
        for i in 0..3u8 {
            let chunk = vec![b'a' + i; 70_000];
            answer.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            answer.extend_from_slice(&chunk);
            answer.extend_from_slice(b"\r\n");
            want.extend_from_slice(&chunk);
        }
        answer.extend_from_slice(b"0\r\n\r\n");
        let mut r = get(&serve_owned(answer), &[], Duration::from_secs(5)).unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), want.len());
        assert!(got == want);
    }
}
