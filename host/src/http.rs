//! The HTTP/1.1 subset the daemon and its clients speak over Unix sockets,
//! on the VMM API server's model (`vmm/src/api/http.rs`, copied rather than
//! shared: the VMM is restructured on its own): one request at a time per
//! connection, bodies sized by `Content-Length`, head and body capped.
//! Requests are hostile input: anything malformed is an error that becomes
//! a 400, never a panic. Also the client side: one request per
//! connection, to the daemon or to a guest's VMM.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Longest request line plus headers.
pub const MAX_HEAD: usize = 8 << 10;
/// Largest request body.
pub const MAX_BODY: usize = 64 << 10;
/// Largest response body a client reads (a usage history, a trace).
pub const MAX_RESPONSE: usize = 256 << 20;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path, without query string.
    pub path: String,
    /// Query parameters in order (percent-decoded).
    pub query: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The client asked to close the connection after this request.
    pub close: bool,
    /// `Upgrade:` header (the console stream).
    pub upgrade: Option<String>,
}

impl Request {
    /// The value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    /// The client closed the connection between requests.
    #[error("connection closed")]
    Closed,
    #[error("I/O error: {0}")]
    Io(String),
    #[error("{0}")]
    Bad(String),
    #[error("request head longer than {MAX_HEAD} bytes")]
    HeadTooLong,
    #[error("request body larger than {MAX_BODY} bytes")]
    BodyTooLarge,
}

/// Reads one line (CRLF or LF), counting it against `budget`.
fn read_line(r: &mut impl BufRead, budget: &mut usize) -> Result<Option<String>, HttpError> {
    let mut line = Vec::new();
    loop {
        let buf = r.fill_buf().map_err(|e| HttpError::Io(e.to_string()))?;
        if buf.is_empty() {
            return if line.is_empty() {
                Ok(None)
            } else {
                Err(HttpError::Bad("truncated request".into()))
            };
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        if chunk.len() > *budget {
            return Err(HttpError::HeadTooLong);
        }
        *budget -= chunk.len();
        line.extend_from_slice(chunk);
        let n = chunk.len();
        r.consume(n);
        if done {
            break;
        }
    }
    while line.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| HttpError::Bad("request head is not UTF-8".into()))
}

/// Decodes `%XX` and `+` in a query component.
fn percent_decode(s: &str) -> Result<String, HttpError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| HttpError::Bad(format!("bad escape in {s:?}")))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| HttpError::Bad(format!("{s:?} is not UTF-8")))
}

fn parse_query(q: &str) -> Result<Vec<(String, String)>, HttpError> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Ok((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

/// Reads the next request from `r`.
pub fn read_request(r: &mut impl BufRead) -> Result<Request, HttpError> {
    let mut budget = MAX_HEAD;
    let line = loop {
        match read_line(r, &mut budget)? {
            None => return Err(HttpError::Closed),
            Some(l) if l.is_empty() => continue,
            Some(l) => break l,
        }
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Bad(format!("bad request line {line:?}")));
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(HttpError::Bad(format!("unsupported protocol {version:?}")));
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HttpError::Bad(format!("bad method {method:?}")));
    }
    let target = match target.strip_prefix("http://") {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if !path.starts_with('/') {
        return Err(HttpError::Bad(format!("bad request target {target:?}")));
    }
    let query = parse_query(query)?;
    let mut length = 0usize;
    let mut close = version == "HTTP/1.0";
    let mut upgrade = None;
    loop {
        let Some(h) = read_line(r, &mut budget)? else {
            return Err(HttpError::Bad("truncated request".into()));
        };
        if h.is_empty() {
            break;
        }
        let Some((name, value)) = h.split_once(':') else {
            return Err(HttpError::Bad(format!("bad header {h:?}")));
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => {
                length = value
                    .parse()
                    .map_err(|_| HttpError::Bad(format!("bad Content-Length {value:?}")))?;
                if length > MAX_BODY {
                    return Err(HttpError::BodyTooLarge);
                }
            }
            "transfer-encoding" => {
                return Err(HttpError::Bad("chunked bodies are not supported".into()))
            }
            "connection" => close = value.eq_ignore_ascii_case("close"),
            "upgrade" => upgrade = Some(value.to_owned()),
            _ => {}
        }
    }
    let mut body = vec![0u8; length];
    r.read_exact(&mut body)
        .map_err(|_| HttpError::Bad("truncated body".into()))?;
    Ok(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query,
        body,
        close,
        upgrade,
    })
}

/// A response: status and an optional body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Option<String>,
    pub content_type: &'static str,
}

impl Response {
    pub fn no_content() -> Self {
        Self {
            status: 204,
            body: None,
            content_type: "application/json",
        }
    }

    pub fn json(body: String) -> Self {
        Self::with_status(200, body)
    }

    pub fn with_status(status: u16, body: String) -> Self {
        Self {
            status,
            body: Some(body),
            content_type: "application/json",
        }
    }

    /// A 200 with another content type (Prometheus text, CSV).
    pub fn typed(body: String, content_type: &'static str) -> Self {
        Self {
            status: 200,
            body: Some(body),
            content_type,
        }
    }

    /// An error: `{"error": ...}`.
    pub fn error(status: u16, msg: impl std::fmt::Display) -> Self {
        Self::with_status(
            status,
            serde_json::json!({ "error": msg.to_string() }).to_string(),
        )
    }

    pub fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        let body = self.body.as_deref().unwrap_or("");
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nServer: condo-daemon\r\n",
            self.status,
            reason(self.status)
        );
        if self.status != 204 {
            out.push_str(&format!(
                "Content-Type: {}\r\nContent-Length: {}\r\n",
                self.content_type,
                body.len()
            ));
        }
        out.push_str("\r\n");
        out.push_str(body);
        w.write_all(out.as_bytes())?;
        w.flush()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "",
    }
}

/// A response read by a client.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

/// Why a client request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {err}")]
    Connect { path: String, err: std::io::Error },
    #[error("{0}")]
    Io(std::io::Error),
    #[error("bad response: {0}")]
    Bad(String),
}

/// Connects to a Unix socket with a deadline for each read and write.
pub fn connect(sock: &Path, timeout: Duration) -> Result<UnixStream, ClientError> {
    let s = UnixStream::connect(sock).map_err(|err| ClientError::Connect {
        path: sock.display().to_string(),
        err,
    })?;
    s.set_read_timeout(Some(timeout)).map_err(ClientError::Io)?;
    s.set_write_timeout(Some(timeout))
        .map_err(ClientError::Io)?;
    Ok(s)
}

/// Writes one request (closing the connection after it).
pub fn write_request(
    s: &mut impl Write,
    method: &str,
    path: &str,
    body: Option<&str>,
    upgrade: Option<&str>,
) -> std::io::Result<()> {
    let body = body.unwrap_or("");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    match upgrade {
        Some(u) => head.push_str(&format!("Connection: Upgrade\r\nUpgrade: {u}\r\n")),
        None => head.push_str("Connection: close\r\n"),
    }
    head.push_str("\r\n");
    head.push_str(body);
    s.write_all(head.as_bytes())?;
    s.flush()
}

/// Reads a response's status line and headers; returns the status and the
/// Content-Length, if any.
pub fn read_response_head(r: &mut impl BufRead) -> Result<(u16, Option<usize>), ClientError> {
    let mut budget = MAX_HEAD;
    let bad = |e: HttpError| ClientError::Bad(e.to_string());
    let line = read_line(r, &mut budget)
        .map_err(bad)?
        .ok_or_else(|| ClientError::Bad("connection closed before a response".into()))?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ClientError::Bad(format!("status line {line:?}")))?;
    let mut length = None;
    loop {
        let h = read_line(r, &mut budget)
            .map_err(bad)?
            .ok_or_else(|| ClientError::Bad("truncated response head".into()))?;
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            if n.eq_ignore_ascii_case("content-length") {
                length = Some(
                    v.trim()
                        .parse()
                        .map_err(|_| ClientError::Bad(format!("Content-Length {v:?}")))?,
                );
            }
        }
    }
    Ok((status, length))
}

/// One request on a fresh connection to `sock`; reads the whole response.
pub fn request(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Reply, ClientError> {
    let mut s = connect(sock, timeout)?;
    write_request(&mut s, method, path, body, None).map_err(ClientError::Io)?;
    let mut r = BufReader::new(s);
    let (status, length) = read_response_head(&mut r)?;
    let mut body = Vec::new();
    match length {
        Some(n) if n > MAX_RESPONSE => {
            return Err(ClientError::Bad(format!("response of {n} bytes")))
        }
        Some(n) => {
            body.resize(n, 0);
            r.read_exact(&mut body).map_err(ClientError::Io)?;
        }
        None if status == 204 => {}
        None => {
            r.take(MAX_RESPONSE as u64)
                .read_to_end(&mut body)
                .map_err(ClientError::Io)?;
        }
    }
    Ok(Reply {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Request, HttpError> {
        read_request(&mut BufReader::new(s.as_bytes()))
    }

    #[test]
    fn parses_paths_queries_and_bodies() {
        let r = parse("POST /guests?x=1&since=a%20b+c HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
            .unwrap();
        assert_eq!(r.path, "/guests");
        assert_eq!(r.param("since"), Some("a b c"));
        assert_eq!(r.param("x"), Some("1"));
        assert_eq!(r.body, b"{}");
        let r = parse("GET /g/a/console HTTP/1.1\r\nUpgrade: console\r\n\r\n").unwrap();
        assert_eq!(r.upgrade.as_deref(), Some("console"));
    }

    #[test]
    fn malformed_requests_are_errors() {
        for bad in [
            "GET\r\n\r\n",
            "GET / HTTP/2\r\n\r\n",
            "get / HTTP/1.1\r\n\r\n",
            "GET relative HTTP/1.1\r\n\r\n",
            "GET /?a=%zz HTTP/1.1\r\n\r\n",
            "GET /?a=%ff HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            "PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "PUT / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort",
            "PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let big = format!("PUT / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        assert_eq!(parse(&big), Err(HttpError::BodyTooLarge));
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(parse(&long), Err(HttpError::HeadTooLong));
    }

    #[test]
    fn responses_round_trip() {
        let mut out = Vec::new();
        Response::error(400, "bad \"x\"")
            .write_to(&mut out)
            .unwrap();
        let mut r = BufReader::new(&out[..]);
        let (status, len) = read_response_head(&mut r).unwrap();
        assert_eq!(status, 400);
        let mut body = String::new();
        r.read_to_string(&mut body).unwrap();
        assert_eq!(Some(body.len()), len);
        assert_eq!(body, r#"{"error":"bad \"x\""}"#);
    }
}
