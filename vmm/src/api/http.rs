//! The HTTP/1.1 subset Firecracker's API clients speak: one request at a
//! time per connection (keep-alive), bodies sized by `Content-Length`.
//! Requests are hostile input: the head and the body are capped, anything
//! malformed is an error that becomes a 400, never a panic.

use std::io::{BufRead, Write};

/// Longest request line plus headers.
pub const MAX_HEAD: usize = 8 << 10;
/// Largest body.
pub const MAX_BODY: usize = 64 << 10;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path, without query string.
    pub path: String,
    pub body: Vec<u8>,
    /// The client asked to close the connection after this request.
    pub close: bool,
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

/// Reads the next request from `r`.
pub fn read_request(r: &mut impl BufRead) -> Result<Request, HttpError> {
    let mut budget = MAX_HEAD;
    let line = loop {
        match read_line(r, &mut budget)? {
            None => return Err(HttpError::Closed),
            // Tolerate blank lines between requests (RFC 9112 2.2).
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
    let path = target.split('?').next().unwrap_or_default();
    // Absolute form (`http://localhost/path`) as some clients send it.
    let path = match path.strip_prefix("http://") {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => path,
    };
    if !path.starts_with('/') {
        return Err(HttpError::Bad(format!("bad request target {target:?}")));
    }
    let mut length = 0usize;
    let mut close = version == "HTTP/1.0";
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
            _ => {}
        }
    }
    let mut body = vec![0u8; length];
    r.read_exact(&mut body)
        .map_err(|_| HttpError::Bad("truncated body".into()))?;
    Ok(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        body,
        close,
    })
}

/// A response: status and an optional JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Option<String>,
    pub content_type: &'static str,
}

impl Response {
    /// `204 No Content`.
    pub fn no_content() -> Self {
        Self {
            status: 204,
            body: None,
            content_type: "application/json",
        }
    }

    /// A 200 with a JSON body.
    pub fn json(body: String) -> Self {
        Self {
            status: 200,
            body: Some(body),
            content_type: "application/json",
        }
    }

    /// A 200 with a plain-text body.
    pub fn text(body: String) -> Self {
        Self {
            status: 200,
            body: Some(body),
            content_type: "text/plain; version=0.0.4",
        }
    }

    /// An error in Firecracker's shape: `{"fault_message": ...}`.
    pub fn fault(status: u16, msg: impl std::fmt::Display) -> Self {
        Self {
            status,
            body: Some(serde_json::json!({ "fault_message": msg.to_string() }).to_string()),
            content_type: "application/json",
        }
    }

    /// Writes the response.
    pub fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        let reason = match self.status {
            200 => "OK",
            204 => "No Content",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            _ => "",
        };
        let body = self.body.as_deref().unwrap_or("");
        let mut out = format!("HTTP/1.1 {} {reason}\r\nServer: condo\r\n", self.status);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Request, HttpError> {
        read_request(&mut std::io::BufReader::new(s.as_bytes()))
    }

    #[test]
    fn parses_requests_with_and_without_body() {
        let r =
            parse("PUT /machine-config HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}")
                .unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), r.body.as_slice()),
            ("PUT", "/machine-config", &b"{}"[..])
        );
        let r = parse("GET http://localhost/vm/config?x=1 HTTP/1.1\n\n").unwrap();
        assert_eq!(r.path, "/vm/config");
        assert!(!r.close);
        assert!(
            parse("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                .unwrap()
                .close
        );
    }

    #[test]
    fn keep_alive_reads_requests_in_turn() {
        let mut r = std::io::BufReader::new(
            &b"GET / HTTP/1.1\r\n\r\nPUT /a HTTP/1.1\r\nContent-Length: 1\r\n\r\nxGET /b HTTP/1.1\r\n\r\n"[..],
        );
        assert_eq!(read_request(&mut r).unwrap().path, "/");
        assert_eq!(read_request(&mut r).unwrap().body, b"x");
        assert_eq!(read_request(&mut r).unwrap().path, "/b");
        assert_eq!(read_request(&mut r), Err(HttpError::Closed));
    }

    #[test]
    fn malformed_requests_are_errors() {
        for bad in [
            "GET\r\n\r\n",
            "GET / HTTP/2\r\n\r\n",
            "get / HTTP/1.1\r\n\r\n",
            "GET relative HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1 extra\r\n\r\n",
            "GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            "PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "PUT / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort",
            "PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let not_utf8 = read_request(&mut std::io::BufReader::new(
            &b"GET /\xff HTTP/1.1\r\n\r\n"[..],
        ));
        assert!(not_utf8.is_err());
        let big = format!("PUT / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        assert_eq!(parse(&big), Err(HttpError::BodyTooLarge));
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(parse(&long), Err(HttpError::HeadTooLong));
    }

    #[test]
    fn responses_have_firecrackers_shape() {
        let mut out = Vec::new();
        Response::fault(400, "bad \"thing\"")
            .write_to(&mut out)
            .unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(s.ends_with(r#"{"fault_message":"bad \"thing\""}"#));
        let mut out = Vec::new();
        Response::no_content().write_to(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 204 No Content\r\nServer: condo\r\n\r\n"
        );
    }
}
