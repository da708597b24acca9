//! The HTTP/1.1 client `eali load --expect-continue` sends REST infer requests with: each
//! request announces its body with `Expect: 100-continue` and sends it only once the server
//! answers `100 Continue` (RFC 9110 §10.1.1), as curl does for large bodies. A server that
//! refuses a request from its headers then costs the client, the network and itself a header,
//! not the body: under overload most requests are refused, and ResNet-50's 600 kB inputs at five
//! times capacity are 2 GB/s that a client sending every body pushes for nothing. hyper's client
//! sends the body at once, so this one is written here; it speaks only what `eali load` needs
//! (one request at a time per keep-alive connection, responses with a `Content-Length`).

use std::sync::Mutex;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long to wait for `100 Continue` before sending the body anyway (curl's default), for
/// servers that ignore the expectation.
const CONTINUE_WAIT: Duration = Duration::from_secs(1);

/// Largest response head read.
const MAX_HEAD: usize = 64 << 10;

/// Keep-alive connections to one server, and the request head every infer request shares.
pub struct ContinueClient {
    authority: String,
    idle: Mutex<Vec<TcpStream>>,
}

/// A final response: its status and whether its connection can carry another request.
struct Final {
    status: u16,
    reusable: bool,
}

impl ContinueClient {
    /// A client for `authority` (`host:port`).
    pub fn new(authority: &str) -> Self {
        Self {
            authority: authority.to_string(),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// POSTs `body` to `path` with `headers` (name, value); the final status, or what failed.
    pub async fn post(
        &self,
        path: &str,
        headers: &[(&str, String)],
        body: &Bytes,
    ) -> Result<u16, String> {
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nExpect: 100-continue\r\n",
            self.authority,
            body.len()
        );
        for (k, v) in headers {
            head.push_str(k);
            head.push_str(": ");
            head.push_str(v);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        // A kept-alive connection the server has since closed fails before any answer; that is
        // retried once on a new one.
        let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
        if let Some(conn) = idle {
            match exchange(conn, head.as_bytes(), body).await {
                Ok(r) => return Ok(self.finish(r)),
                Err(Failure::Stale) => {}
                Err(Failure::Broken(e)) => return Err(e),
            }
        }
        let conn = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        conn.set_nodelay(true)
            .map_err(|e| format!("TCP_NODELAY: {e}"))?;
        match exchange(conn, head.as_bytes(), body).await {
            Ok(r) => Ok(self.finish(r)),
            Err(Failure::Stale) => Err("connection closed before a response".into()),
            Err(Failure::Broken(e)) => Err(e),
        }
    }

    fn finish(&self, (fin, conn): (Final, TcpStream)) -> u16 {
        if fin.reusable
            && let Ok(mut idle) = self.idle.lock()
        {
            idle.push(conn);
        }
        fin.status
    }
}

enum Failure {
    /// Closed before a byte of a response came back.
    Stale,
    Broken(String),
}

fn broken(what: &str) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |e| Failure::Broken(format!("{what}: {e}"))
}

/// One request on `conn`: the head, the body once the server asks for it, the final response.
async fn exchange(
    mut conn: TcpStream,
    head: &[u8],
    body: &Bytes,
) -> Result<(Final, TcpStream), Failure> {
    if conn.write_all(head).await.is_err() {
        return Err(Failure::Stale);
    }
    let mut buf = BytesMut::with_capacity(4096);
    let mut body_sent = false;
    let first = match tokio::time::timeout(CONTINUE_WAIT, read_head(&mut conn, &mut buf)).await {
        Ok(Ok(Some(h))) => Some(h),
        Ok(Ok(None)) => return Err(Failure::Stale),
        Ok(Err(e)) => return Err(Failure::Broken(e)),
        // No interim answer: send the body anyway.
        Err(_) => None,
    };
    let response = match first {
        Some(h) if h.status != 100 => h,
        _ => {
            conn.write_all(body).await.map_err(broken("send body"))?;
            body_sent = true;
            loop {
                match read_head(&mut conn, &mut buf).await {
                    Ok(Some(h)) if h.status == 100 => continue,
                    Ok(Some(h)) => break h,
                    Ok(None) => return Err(Failure::Broken("closed before a response".into())),
                    Err(e) => return Err(Failure::Broken(e)),
                }
            }
        }
    };
    // The response body, of which part may already be in `buf`.
    let mut left = response.content_length;
    let have = left.min(buf.len());
    buf.advance(have);
    left -= have;
    let mut sink = vec![0u8; 64 << 10];
    while left > 0 {
        let n = conn
            .read(&mut sink[..left.min(64 << 10)])
            .await
            .map_err(broken("read response"))?;
        if n == 0 {
            return Err(Failure::Broken("closed in the response body".into()));
        }
        left -= n;
    }
    // A request whose body was never sent leaves the connection mid-request: not reused.
    let reusable = body_sent && response.keep_alive && buf.is_empty();
    Ok((
        Final {
            status: response.status,
            reusable,
        },
        conn,
    ))
}

struct Head {
    status: u16,
    content_length: usize,
    keep_alive: bool,
}

/// Reads one response head from `conn` (what follows it stays in `buf`); `None` when the
/// connection closed before any byte of it.
async fn read_head(conn: &mut TcpStream, buf: &mut BytesMut) -> Result<Option<Head>, String> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                let status = resp.code.unwrap_or(0);
                let mut content_length = 0usize;
                let mut keep_alive = resp.version == Some(1);
                for h in resp.headers.iter() {
                    let value = std::str::from_utf8(h.value).unwrap_or("").trim();
                    if h.name.eq_ignore_ascii_case("content-length") {
                        content_length = value
                            .parse()
                            .map_err(|_| format!("bad Content-Length {value:?}"))?;
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        return Err(format!("Transfer-Encoding {value} is not supported"));
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        keep_alive = !value.eq_ignore_ascii_case("close");
                    }
                }
                buf.advance(len);
                return Ok(Some(Head {
                    status,
                    content_length,
                    keep_alive,
                }));
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(format!("bad response: {e}")),
        }
        if buf.len() > MAX_HEAD {
            return Err("response head too large".into());
        }
        let before = buf.len();
        let n = conn
            .read_buf(buf)
            .await
            .map_err(|e| format!("read response: {e}"))?;
        if n == 0 {
            return if before == 0 {
                Ok(None)
            } else {
                Err("closed in the response head".into())
            };
        }
    }
}
