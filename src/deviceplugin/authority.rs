//! `:authority` repair for the gRPC servers on Unix sockets (device plugin, control socket).
//!
//! tonic's HTTP/2 layer (h2) refuses a request whose `:authority` is not a valid URI authority
//! with `RST_STREAM(PROTOCOL_ERROR)`. Over a Unix socket there is no host to name, and clients
//! disagree on what to send: Go's gRPC sends `localhost`, gRPC's C core (Python `grpcio`, Ruby,
//! PHP) sends the socket path percent-encoded, Java the raw path. [`AuthorityFix`] sits between
//! the accepted socket and the server: it reads the client's frames, decodes every header block
//! with the connection's HPACK state, replaces an `:authority` that does not parse with
//! `localhost`, and hands the server each block re-encoded with literals only (never indexed),
//! so the server's HPACK table is never referenced and stays consistent. Every other frame, and
//! everything the server writes, passes through unchanged.
//!
//! A client that breaks HTTP/2 framing or HPACK gets an I/O error on its connection, which the
//! server answers by closing it, as it would have for the same bytes.

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use loona_hpack::Decoder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::server::{Connected, UdsConnectInfo};

/// What a client sends first on an HTTP/2 connection (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Largest frame every HTTP/2 peer accepts (SETTINGS_MAX_FRAME_SIZE's initial value).
const MAX_FRAME: usize = 16_384;
/// Largest header block collected across CONTINUATION frames; far above what the server
/// accepts (h2's default header list limit is 16 KiB), so only a runaway client meets it.
const MAX_BLOCK: usize = 1 << 20;
/// What replaces an `:authority` the server would refuse.
const LOCALHOST: &[u8] = b"localhost";

/// An accepted connection whose request headers reach the server with a valid `:authority`.
pub struct AuthorityFix<S> {
    inner: S,
    /// Bytes read from the client, not yet handed on.
    raw: Vec<u8>,
    /// Bytes ready for the server, from `out_pos` on.
    out: Vec<u8>,
    out_pos: usize,
    /// Preface bytes still expected.
    preface_left: usize,
    decoder: Decoder<'static>,
    /// A header block waiting for its CONTINUATION frames.
    pending: Option<Pending>,
    eof: bool,
}

struct Pending {
    stream: u32,
    end_stream: bool,
    fragment: Vec<u8>,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        let mut decoder = Decoder::new();
        // The client's encoder may use up to the size the server advertises; the server's
        // limit is what bounds it, not this copy of the table.
        decoder.set_max_allowed_table_size(1 << 16);
        Self {
            inner,
            raw: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            preface_left: PREFACE.len(),
            decoder,
            pending: None,
            eof: false,
        }
    }

    /// Moves every complete frame of `raw` to `out`, header blocks repaired.
    fn process(&mut self) -> io::Result<()> {
        if self.preface_left > 0 {
            let n = self.preface_left.min(self.raw.len());
            let at = PREFACE.len() - self.preface_left;
            if self.raw[..n] != PREFACE[at..at + n] {
                return Err(invalid(
                    "the connection does not start with the HTTP/2 preface",
                ));
            }
            self.out.extend(self.raw.drain(..n));
            self.preface_left -= n;
            if self.preface_left > 0 {
                return Ok(());
            }
        }
        let mut at = 0;
        while self.raw.len() - at >= FRAME_HEADER {
            let h = &self.raw[at..at + FRAME_HEADER];
            let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            if self.raw.len() - at < FRAME_HEADER + len {
                break;
            }
            let (kind, flags) = (h[3], h[4]);
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            let frame = at..at + FRAME_HEADER + len;
            at = frame.end;
            let payload = &self.raw[frame.start + FRAME_HEADER..frame.end];
            match (kind, &mut self.pending) {
                (HEADERS, None) => {
                    let fragment = headers_fragment(payload, flags)?.to_vec();
                    let block = Pending {
                        stream,
                        end_stream: flags & END_STREAM != 0,
                        fragment,
                    };
                    if flags & END_HEADERS != 0 {
                        self.emit(block)?;
                    } else {
                        self.pending = Some(block);
                    }
                }
                (CONTINUATION, Some(p)) if p.stream == stream => {
                    if p.fragment.len() + payload.len() > MAX_BLOCK {
                        return Err(invalid("a header block longer than 1 MiB"));
                    }
                    p.fragment.extend_from_slice(payload);
                    if flags & END_HEADERS != 0
                        && let Some(block) = self.pending.take()
                    {
                        self.emit(block)?;
                    }
                }
                (_, Some(_)) => {
                    return Err(invalid("a header block interrupted by another frame"));
                }
                (CONTINUATION, None) => {
                    return Err(invalid("a CONTINUATION frame without a header block"));
                }
                _ => self.out.extend_from_slice(&self.raw[frame]),
            }
        }
        self.raw.drain(..at);
        Ok(())
    }

    /// Decodes a whole header block, repairs `:authority`, and writes it as HEADERS plus
    /// CONTINUATION frames of at most [`MAX_FRAME`] bytes.
    fn emit(&mut self, block: Pending) -> io::Result<()> {
        let mut encoded = Vec::with_capacity(block.fragment.len() + 16);
        let mut failed = None;
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                let value = if name.as_ref() == b":authority"
                    && http::uri::Authority::try_from(value.as_ref()).is_err()
                {
                    Cow::Borrowed(LOCALHOST)
                } else {
                    value
                };
                if let Err(e) = literal_never_indexed(&name, &value, &mut encoded) {
                    failed = Some(e);
                }
            })
            .map_err(|e| invalid(&format!("a header block HPACK cannot decode: {e}")))?;
        if let Some(e) = failed {
            return Err(e);
        }
        let chunks: Vec<&[u8]> = if encoded.is_empty() {
            vec![&[]]
        } else {
            encoded.chunks(MAX_FRAME).collect()
        };
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let mut flags = 0;
            if i == 0 && block.end_stream {
                flags |= END_STREAM;
            }
            if i == last {
                flags |= END_HEADERS;
            }
            let kind = if i == 0 { HEADERS } else { CONTINUATION };
            let len = chunk.len();
            self.out.extend_from_slice(&[
                (len >> 16) as u8,
                (len >> 8) as u8,
                len as u8,
                kind,
                flags,
            ]);
            self.out.extend_from_slice(&block.stream.to_be_bytes());
            self.out.extend_from_slice(chunk);
        }
        Ok(())
    }
}

/// The header block fragment of a HEADERS frame's payload, without padding and priority.
fn headers_fragment(payload: &[u8], flags: u8) -> io::Result<&[u8]> {
    let mut start = 0;
    let mut end = payload.len();
    if flags & PADDED != 0 {
        let pad = usize::from(
            *payload
                .first()
                .ok_or_else(|| invalid("a HEADERS frame too short for its padding"))?,
        );
        start = 1;
        end = end
            .checked_sub(pad)
            .ok_or_else(|| invalid("a HEADERS frame with more padding than payload"))?;
    }
    if flags & PRIORITY != 0 {
        start += 5;
    }
    payload
        .get(start..end)
        .ok_or_else(|| invalid("a HEADERS frame too short for its flags"))
}

/// One header as a literal the receiver must not index (RFC 7541 §6.2.3), name and value as
/// plain strings: nothing refers to or changes the receiver's dynamic table.
fn literal_never_indexed(name: &[u8], value: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    out.push(0x10);
    for s in [name, value] {
        loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, out)?;
        out.extend_from_slice(s);
    }
    Ok(())
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("gRPC client on a Unix socket: {what}"),
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // A frame cut short by the client's close reaches the server as it was.
                if !this.raw.is_empty() {
                    this.out.append(&mut this.raw);
                    continue;
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => this.eof = true,
                Poll::Ready(Ok(())) => {
                    this.raw.extend_from_slice(rb.filled());
                    if let Err(e) = this.process() {
                        return Poll::Ready(Err(e));
                    }
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The peer's credentials stay visible to the services (the control socket's authorisation).
impl Connected for AuthorityFix<UnixStream> {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loona_hpack::Encoder;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    type Headers = Vec<(Vec<u8>, Vec<u8>)>;
    /// A header block as the server sees it: stream, flags, decoded headers.
    type Block = (u32, u8, Headers);

    /// Header blocks as the server sees them, and the other frames' (type, payload).
    fn parse(bytes: &[u8]) -> (Vec<Block>, Vec<(u8, Vec<u8>)>) {
        assert_eq!(&bytes[..PREFACE.len()], PREFACE);
        let mut rest = &bytes[PREFACE.len()..];
        let mut decoder = Decoder::new();
        let (mut blocks, mut others) = (Vec::new(), Vec::new());
        let mut block: Option<(u32, u8, Vec<u8>)> = None;
        while !rest.is_empty() {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let (kind, flags) = (rest[3], rest[4]);
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            let payload = &rest[9..9 + len];
            assert!(len <= MAX_FRAME);
            match kind {
                HEADERS => {
                    assert_eq!(flags & (PADDED | PRIORITY), 0);
                    block = Some((stream, flags, payload.to_vec()));
                }
                CONTINUATION => block.as_mut().expect("headers first").2.extend(payload),
                _ => others.push((kind, payload.to_vec())),
            }
            if matches!(kind, HEADERS | CONTINUATION)
                && flags & END_HEADERS != 0
                && let Some((s, f, b)) = block.take()
            {
                // The block's flags: its HEADERS frame's, and END_HEADERS from the frame that ended it.
                blocks.push((s, f | END_HEADERS, decoder.decode(&b).expect("decodes")));
            }
            rest = &rest[9 + len..];
        }
        (blocks, others)
    }

    async fn through_fix(input: Vec<u8>) -> io::Result<Vec<u8>> {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut fix = AuthorityFix::new(server);
        let writer = tokio::spawn(async move {
            // Small writes: frames cut at every boundary reach the fix.
            for piece in input.chunks(7) {
                client.write_all(piece).await?;
            }
            client.shutdown().await
        });
        let mut out = Vec::new();
        let read = fix.read_to_end(&mut out).await;
        writer.await.expect("writer")?;
        read.map(|_| out)
    }

    fn request(authority: &[u8], path: &[u8]) -> Headers {
        [
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", path),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ]
        .iter()
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect()
    }

    #[tokio::test]
    async fn a_socket_path_authority_becomes_localhost_and_the_rest_is_kept() {
        let mut enc = Encoder::new();
        let sock = b"%2Fvar%2Flib%2Fkubelet%2Fdevice-plugins%2Feali.sock";
        let first = request(sock, b"/v1beta1.DevicePlugin/GetDevicePluginOptions");
        let second = request(sock, b"/v1beta1.DevicePlugin/ListAndWatch");
        let third = request(b"localhost:50051", b"/v1beta1.DevicePlugin/Allocate");
        let block = |enc: &mut Encoder, h: &Headers| {
            enc.encode(h.iter().map(|(n, v)| (n.as_slice(), v.as_slice())))
        };
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])); // SETTINGS
        // Padded, with priority.
        let b1 = block(&mut enc, &first);
        let mut p = vec![3, 0, 0, 0, 0, 16];
        p.extend(&b1);
        p.extend([0, 0, 0]);
        input.extend(frame(HEADERS, END_HEADERS | PADDED | PRIORITY, 1, &p));
        input.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0"));
        // The second block refers to the dynamic table the first filled; split in two.
        let b2 = block(&mut enc, &second);
        assert!(
            b2.len() < b1.len(),
            "the second block indexes the first's entries"
        );
        let (a, b) = b2.split_at(b2.len() / 2);
        input.extend(frame(HEADERS, END_STREAM, 3, a));
        input.extend(frame(CONTINUATION, END_HEADERS, 3, b));
        input.extend(frame(HEADERS, END_HEADERS, 5, &block(&mut enc, &third)));

        let out = through_fix(input).await.expect("passes");
        let (blocks, others) = parse(&out);
        assert_eq!(others.len(), 2, "SETTINGS and DATA pass through");
        assert_eq!(others[1], (0x0, b"\0\0\0\0\0".to_vec()));
        let mut want1 = first.clone();
        want1[3].1 = b"localhost".to_vec();
        let mut want2 = second.clone();
        want2[3].1 = b"localhost".to_vec();
        assert_eq!(blocks[0], (1, END_HEADERS, want1));
        assert_eq!(blocks[1], (3, END_HEADERS | END_STREAM, want2));
        assert_eq!(
            blocks[2],
            (5, END_HEADERS, third),
            "a valid authority is kept"
        );
    }

    #[tokio::test]
    async fn a_block_longer_than_a_frame_is_split() {
        let mut headers = request(b"/tmp/x.sock", b"/p");
        headers.push((b"x-big".to_vec(), vec![b'a'; 40_000]));
        let block =
            Encoder::new().encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let mut input = PREFACE.to_vec();
        for (i, c) in block.chunks(MAX_FRAME).enumerate() {
            let last = (i + 1) * MAX_FRAME >= block.len();
            let kind = if i == 0 { HEADERS } else { CONTINUATION };
            input.extend(frame(kind, if last { END_HEADERS } else { 0 }, 1, c));
        }
        let (blocks, _) = parse(&through_fix(input).await.expect("passes"));
        headers[3].1 = b"localhost".to_vec();
        assert_eq!(blocks.len(), 1, "one block");
        // Compared without printing 40 kB on a failure.
        assert!(
            blocks[0] == (1, END_HEADERS, headers),
            "the block as sent, authority repaired"
        );
    }

    #[tokio::test]
    async fn broken_framing_or_hpack_is_an_error_on_the_connection() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("no preface", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
            (
                "bad hpack",
                [
                    PREFACE.to_vec(),
                    frame(
                        HEADERS,
                        END_HEADERS,
                        1,
                        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                    ),
                ]
                .concat(),
            ),
            (
                "continuation without headers",
                [
                    PREFACE.to_vec(),
                    frame(CONTINUATION, END_HEADERS, 1, &[0x82]),
                ]
                .concat(),
            ),
            (
                "interrupted block",
                [
                    PREFACE.to_vec(),
                    frame(HEADERS, 0, 1, &[0x82]),
                    frame(0x0, 0, 1, b"x"),
                ]
                .concat(),
            ),
            (
                "padding past the payload",
                [
                    PREFACE.to_vec(),
                    frame(HEADERS, END_HEADERS | PADDED, 1, &[9, 0x82]),
                ]
                .concat(),
            ),
        ];
        for (what, input) in cases {
            let err = through_fix(input).await.expect_err(what);
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{what}: {err}");
        }
    }
}
