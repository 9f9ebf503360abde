//! A minimal HTTP/1.1 client over one keep-alive `TcpStream`: enough to
//! publish batches and read `/metrics`, with no per-request setup cost.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The server under test: where to connect and what to send as `Host`.
#[derive(Debug, Clone)]
pub struct Target {
    /// Resolved address.
    pub addr: SocketAddr,
    /// `host:port` as given.
    pub authority: String,
}

impl Target {
    /// Parses `http://host:port` (a trailing `/` is allowed) and resolves it.
    pub async fn parse(url: &str) -> Result<Target, String> {
        let authority = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?
            .trim_end_matches('/')
            .to_owned();
        if authority.contains('/') {
            return Err(format!("{url}: give the server root, without a path"));
        }
        let addr = tokio::net::lookup_host(&authority)
            .await
            .map_err(|e| format!("{authority}: {e}"))?
            .next()
            .ok_or_else(|| format!("{authority}: no address"))?;
        Ok(Target { addr, authority })
    }
}

/// One response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// A keep-alive connection.
pub struct HttpClient {
    target: Target,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl HttpClient {
    /// A client; it connects on first use (and again after an error).
    pub fn new(target: Target) -> Self {
        HttpClient {
            target,
            stream: None,
            buf: Vec::with_capacity(8192),
        }
    }

    /// Sends one request and reads its response.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, String> {
        let result = self.try_request(method, path, headers, body).await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, String> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.target.addr)
                .await
                .map_err(|e| format!("connect {}: {e}", self.target.addr))?;
            let _ = stream.set_nodelay(true);
            self.stream = Some(stream);
            self.buf.clear();
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err("not connected".to_owned());
        };
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\n",
            self.target.authority,
            body.len()
        );
        for (name, value) in headers {
            req.push_str(name);
            req.push_str(": ");
            req.push_str(value);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        let mut out = req.into_bytes();
        out.extend_from_slice(body);
        stream
            .write_all(&out)
            .await
            .map_err(|e| format!("write: {e}"))?;
        read_response(stream, &mut self.buf).await
    }
}

async fn fill<R: AsyncRead + Unpin>(stream: &mut R, buf: &mut Vec<u8>) -> Result<(), String> {
    buf.reserve(8192);
    match stream.read_buf(buf).await {
        Ok(0) => Err("connection closed by the server".to_owned()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("read: {e}")),
    }
}

/// Reads one response from `stream`; `buf` keeps what was read beyond it
/// (the next pipelined response's start).
pub async fn read_response<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Response, String> {
    let head_end = loop {
        if let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") {
            break end;
        }
        if buf.len() > 1 << 20 {
            return Err("response head too large".to_owned());
        }
        fill(stream, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end + 4);
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while buf.len() < len {
            fill(stream, buf).await?;
        }
        let body = buf.drain(..len).collect();
        return Ok(Response { status, body });
    }
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(end) = memchr::memmem::find(buf, b"\r\n") {
                    break end;
                }
                fill(stream, buf).await?;
            };
            let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size_text:?}"))?;
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                fill(stream, buf).await?;
            }
            body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
            if size == 0 {
                return Ok(Response { status, body });
            }
        }
    }
    Err("response without content-length or chunked body".to_owned())
}

/// Open connections according to the server's gauges: the sum of
/// `matric_ws_connections_active` and `matric_sse_connections_active` in
/// `/metrics`. `None` when the server exposes neither.
pub async fn connection_gauge(target: &Target) -> Result<Option<f64>, String> {
    let mut client = HttpClient::new(target.clone());
    let resp = client.request("GET", "/metrics", &[], b"").await?;
    if resp.status != 200 {
        return Ok(None);
    }
    let scrape = event_test_support::Scrape::parse(&String::from_utf8_lossy(&resp.body));
    let ws = scrape.sum("matric_ws_connections_active", &[]);
    let sse = scrape.sum("matric_sse_connections_active", &[]);
    Ok(match (ws, sse) {
        (None, None) => None,
        (ws, sse) => Some(ws.unwrap_or(0.0) + sse.unwrap_or(0.0)),
    })
}
