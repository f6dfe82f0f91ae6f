//! A small HTTP/1.1 client for an admin listener, as `rac sp drain` and the bench use it: one
//! request a connection over plain TCP (the listener's loopback default), `Connection:
//! close`, and the reply read to its end. The API's callers with more to do use any HTTP
//! client.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The most of a reply read: the admin API's small JSON answers, with room.
const MAX_REPLY: usize = 1 << 20;

/// An answer: the status code and the body as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

/// Why a request got no readable answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing listens there (the process is gone, or it is another address).
    #[error("nothing listens at {0}")]
    Refused(SocketAddr),
    #[error("{addr}: {error}")]
    Io {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("{addr} did not answer within {after:?}")]
    TimedOut { addr: SocketAddr, after: Duration },
    #[error("{addr} answered something that is not HTTP: {what}")]
    NotHttp {
        addr: SocketAddr,
        what: &'static str,
    },
}

/// Sends `method path` with the bearer `token` (no body) and reads the answer, all within
/// `timeout` (connect to last byte).
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    timeout: Duration,
) -> Result<Reply, CallError> {
    let io = |error: std::io::Error| match error.kind() {
        std::io::ErrorKind::ConnectionRefused => CallError::Refused(addr),
        _ => CallError::Io { addr, error },
    };
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
        tcp.set_nodelay(true).map_err(io)?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.map_err(io)?;
        let mut reply = Vec::new();
        (&mut tcp)
            .take(MAX_REPLY as u64 + 1)
            .read_to_end(&mut reply)
            .await
            .map_err(io)?;
        if reply.len() > MAX_REPLY {
            return Err(CallError::NotHttp {
                addr,
                what: "a reply over 1 MiB",
            });
        }
        parse(&reply).map_err(|what| CallError::NotHttp { addr, what })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| CallError::TimedOut {
            addr,
            after: timeout,
        })?
}

/// A whole HTTP/1.1 reply (the connection closed after it): status line, headers, body
/// (plain, or `Transfer-Encoding: chunked`).
fn parse(reply: &[u8]) -> Result<Reply, &'static str> {
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&reply[..split]).map_err(|_| "headers not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("no status line")?;
    let mut words = status_line.split(' ');
    if !words.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err("no HTTP/1.x status line");
    }
    let status = words
        .next()
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or("no status code")?;
    let chunked = lines.any(|line| {
        let lower = line.to_ascii_lowercase();
        lower.starts_with("transfer-encoding:") && lower.contains("chunked")
    });
    let raw = &reply[split + 4..];
    let body = if chunked { dechunk(raw)? } else { raw.to_vec() };
    Ok(Reply {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut body = Vec::new();
    loop {
        let end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunk without its size line")?;
        let size = std::str::from_utf8(&raw[..end]).map_err(|_| "a chunk size not UTF-8")?;
        let size = size.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| "a chunk size not in hex")?;
        raw = &raw[end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if raw.len() < size + 2 {
            return Err("a chunk cut short");
        }
        body.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read_plain_and_chunked_and_garbage_is_refused() {
        let plain = b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(
            parse(plain),
            Ok(Reply {
                status: 202,
                body: "{}".into()
            })
        );
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(parse(chunked).map(|r| r.body), Ok("{\"a\":1}".to_string()));
        assert!(parse(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
    }
}
