//! HTTP/1.1 over TLS for the DMP exchanges: one POST per connection (`Connection: close`),
//! bodies framed by Content-Length (ours) or chunked (Apache CXF's), bounded in size and time.
//! The message framing is pure (`request_bytes`, `read_message`) so the simulator's server and
//! the publisher's client share it.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

/// Largest body either side reads (a lot of a 10 000-image exam is ~2.5 MB).
pub const MAX_BODY: usize = 64 * 1024 * 1024;
const MAX_HEAD: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("bad URL {0} (https://host[:port]/path expected)")]
    Url(String),
    #[error("connecting to {0}: {1}")]
    Connect(String, io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("malformed HTTP message: {0}")]
    Malformed(String),
    #[error("body over {0} bytes")]
    TooLarge(usize),
}

/// An HTTP message as read: the start line, headers (names lowercased) and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub start: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Message {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The status code of a response.
    pub fn status(&self) -> u16 {
        self.start
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }
}

/// `https://host:port/path` → (host, port, path).
pub fn split_url(url: &str) -> Result<(String, u16, String), HttpError> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| HttpError::Url(url.into()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| HttpError::Url(url.into()))?),
        None => (authority, 443),
    };
    if host.is_empty() {
        return Err(HttpError::Url(url.into()));
    }
    Ok((host.to_string(), port, path.to_string()))
}

pub fn request_bytes(
    host: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
    extra: &[(&str, &str)],
) -> Vec<u8> {
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\nUser-Agent: drimbox/{}\r\n",
        body.len(),
        env!("CARGO_PKG_VERSION")
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

pub fn response_bytes(status: u16, reason: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// Reads one HTTP message (request or response) from `r`.
pub fn read_message(r: &mut impl BufRead) -> Result<Message, HttpError> {
    read_message_limited(r, MAX_BODY)
}

/// The same, with a body of at most `max` bytes.
pub fn read_message_limited(r: &mut impl BufRead, max: usize) -> Result<Message, HttpError> {
    let mut head_len = 0;
    let mut line = String::new();
    let mut read_line = |line: &mut String| -> Result<usize, HttpError> {
        line.clear();
        let n = r.by_ref().take(MAX_HEAD as u64).read_line(line)?;
        head_len += n;
        if head_len > MAX_HEAD {
            return Err(HttpError::Malformed("header too long".into()));
        }
        Ok(n)
    };
    if read_line(&mut line)? == 0 {
        return Err(HttpError::Malformed(
            "connection closed before a message".into(),
        ));
    }
    let start = line.trim_end().to_string();
    let mut headers = Vec::new();
    loop {
        if read_line(&mut line)? == 0 {
            return Err(HttpError::Malformed(
                "connection closed in the headers".into(),
            ));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| HttpError::Malformed(format!("header line {l:?}")))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size_line = String::new();
            r.read_line(&mut size_line)?;
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| HttpError::Malformed(format!("chunk size {size_line:?}")))?;
            if size == 0 {
                let mut trailer = String::new();
                while r.read_line(&mut trailer)? > 2 {
                    trailer.clear();
                }
                break;
            }
            if body.len() + size > max {
                return Err(HttpError::TooLarge(max));
            }
            let at = body.len();
            body.resize(at + size, 0);
            r.read_exact(&mut body[at..])?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)?;
        }
    } else if let Some(len) = get("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| HttpError::Malformed(format!("Content-Length {len:?}")))?;
        if len > max {
            return Err(HttpError::TooLarge(max));
        }
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else if start.starts_with("HTTP/") {
        // A response without length: the body runs to the end of the connection.
        r.take(max as u64 + 1).read_to_end(&mut body)?;
        if body.len() > max {
            return Err(HttpError::TooLarge(max));
        }
    }
    Ok(Message {
        start,
        headers,
        body,
    })
}

/// A TLS connection to the host of `url` (handshake not yet done) and the URL's path.
fn connect(
    url: &str,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<
    (
        rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
        String,
        String,
    ),
    HttpError,
> {
    let (host, port, path) = split_url(url)?;
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| HttpError::Connect(format!("{host}:{port}"), e))?
        .next()
        .ok_or_else(|| {
            HttpError::Connect(
                format!("{host}:{port}"),
                io::Error::new(io::ErrorKind::NotFound, "no address"),
            )
        })?;
    let tcp = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| HttpError::Connect(format!("{host}:{port}"), e))?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| HttpError::Tls(e.to_string()))?;
    let conn =
        rustls::ClientConnection::new(tls, name).map_err(|e| HttpError::Tls(e.to_string()))?;
    Ok((rustls::StreamOwned::new(conn, tcp), host, path))
}

/// POSTs `body` to `url` over TLS with `tls` (the client certificate inside), waits at most
/// `timeout` for each read/write. The answer, whatever its status.
pub fn post(
    url: &str,
    content_type: &str,
    body: &[u8],
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<Message, HttpError> {
    post_with_headers(url, content_type, body, &[], tls, timeout)
}

/// [`post`] with extra request headers (e.g. `Authorization`).
pub fn post_with_headers(
    url: &str,
    content_type: &str,
    body: &[u8],
    headers: &[(&str, &str)],
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<Message, HttpError> {
    let (mut stream, host, path) = connect(url, tls, timeout)?;
    stream
        .write_all(&request_bytes(&host, &path, content_type, body, headers))
        .map_err(tls_or_io)?;
    stream.flush().map_err(tls_or_io)?;
    let mut reader = BufReader::new(stream);
    read_message(&mut reader).map_err(|e| match e {
        HttpError::Io(io) => tls_or_io(io),
        other => other,
    })
}

/// A TLS stream whose every read and write waits at most until one instant: a server that
/// trickles a byte a second cannot stretch a download past its deadline.
struct Deadline {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    until: std::time::Instant,
}

impl Deadline {
    fn left(&self) -> io::Result<Duration> {
        let left = self
            .until
            .saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
        }
        Ok(left)
    }
}

impl Read for Deadline {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left()?;
        self.stream.sock.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

impl Write for Deadline {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.left()?;
        self.stream.sock.set_write_timeout(Some(left))?;
        self.stream.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// GETs `url` over TLS with `tls`, the whole exchange within `deadline` and the body within
/// `max` bytes (read no further). The answer, whatever its status.
pub fn get(
    url: &str,
    accept: &str,
    tls: Arc<rustls::ClientConfig>,
    deadline: Duration,
    max: usize,
) -> Result<Message, HttpError> {
    let until = std::time::Instant::now() + deadline;
    let (stream, host, path) = connect(url, tls, deadline)?;
    let mut stream = Deadline { stream, until };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: {accept}\r\nConnection: close\r\n\
         User-Agent: drimbox/{}\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    stream.write_all(request.as_bytes()).map_err(tls_or_io)?;
    stream.flush().map_err(tls_or_io)?;
    let mut reader = BufReader::new(stream);
    read_message_limited(&mut reader, max).map_err(|e| match e {
        HttpError::Io(io) => tls_or_io(io),
        other => other,
    })
}

/// Whether the DMP can be reached without sending it anything: a TCP connection and a full
/// TLS handshake with the practice's certificate (so a refused or expired certificate shows
/// here too, as the server's alert), then a clean close. The DMP has no ping transaction.
pub fn probe(
    url: &str,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<(), HttpError> {
    let (mut stream, _, _) = connect(url, tls, timeout)?;
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(tls_or_io)?;
    }
    // TLS 1.3 servers check the client certificate after the client's Finished: a refusal
    // arrives as an alert on the first read. Wait briefly for it.
    let _ = stream
        .sock
        .set_read_timeout(Some(Duration::from_millis(300)));
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {}
        Err(e) => return Err(tls_or_io(e)),
        Ok(_) => {}
    }
    stream.conn.send_close_notify();
    let _ = stream.conn.complete_io(&mut stream.sock);
    Ok(())
}

/// rustls reports handshake failures as I/O errors carrying its error: say they are TLS.
fn tls_or_io(e: io::Error) -> HttpError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(t) => HttpError::Tls(t.to_string()),
        None => HttpError::Io(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            split_url("https://dmp.example:8443/si-dmp-server/v2/services/repository").unwrap(),
            (
                "dmp.example".to_string(),
                8443,
                "/si-dmp-server/v2/services/repository".to_string()
            )
        );
        assert_eq!(split_url("https://h").unwrap().1, 443);
        assert!(split_url("http://h/x").is_err());
    }

    #[test]
    fn framing_round_trips_with_length_and_chunks() {
        let req = request_bytes("h", "/repository", "application/soap+xml", b"<x/>", &[]);
        let m = read_message(&mut &req[..]).unwrap();
        assert_eq!(m.start, "POST /repository HTTP/1.1");
        assert_eq!(m.body, b"<x/>");
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n<so\r\n3\r\nap>\r\n0\r\n\r\n";
        let m = read_message(&mut &chunked[..]).unwrap();
        assert_eq!((m.status(), m.body.as_slice()), (200, &b"<soap>"[..]));
        let bad = b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n";
        assert!(read_message(&mut &bad[..]).is_err());
    }
}
