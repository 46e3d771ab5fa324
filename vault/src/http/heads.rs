//! hyper's own answers, completed. An HTTP/1 request whose head hyper
//! cannot parse (400), whose target is too long (414) or whose head is over
//! the limits (431) never reaches the service: hyper answers it itself, with
//! an empty body, and closes the connection. SPEC has every error carry a
//! JSON body with a code, so this filter on the connection's write side
//! recognises that answer and writes it with the body the vault's other
//! errors have.
//!
//! Invariant: only hyper's automatic answer is changed. It is the last
//! thing hyper writes on a connection, appended whole to what it flushes
//! next, and it is recognisable: a head alone with one of hyper's three
//! status lines, `content-length: 0`, and nothing but `connection` and
//! `date` besides. Every answer of the service carries `content-type`,
//! `cache-control` and a body, so none matches. Anything else passes
//! through untouched, and uncopied but for small head-only writes (a HEAD
//! answer, `100 Continue`), copied once to be looked at and wiped: an
//! answer's body stays where the body budget counts it
//! (`body::charge_answer`) and where it is wiped.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use prometheus_client::metrics::counter::Counter;
use zeroize::Zeroize;

use crate::api::ApiError;

/// Most bytes a write may hold for it to be looked at: hyper's answer is
/// about 130, and a write this small that is not it costs one copy.
const LOOKED_AT: usize = 4096;

/// The connection's I/O with hyper's automatic error answers completed.
pub struct JsonErrors<T> {
    inner: T,
    /// A completed answer (and whatever preceded it in the same write) not
    /// yet taken by `inner`, from `sent` on.
    pending: Vec<u8>,
    sent: usize,
    completed: bool,
    refused: Counter,
}

impl<T> JsonErrors<T> {
    pub fn new(inner: T, refused: Counter) -> JsonErrors<T> {
        JsonErrors {
            inner,
            pending: Vec::new(),
            sent: 0,
            completed: false,
            refused,
        }
    }
}

impl<T> Drop for JsonErrors<T> {
    fn drop(&mut self) {
        self.pending.zeroize();
    }
}

impl<T: hyper::rt::Write + Unpin> JsonErrors<T> {
    /// Writes out what is pending.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let rest = self.pending.get(self.sent..).unwrap_or_default();
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        // What preceded the answer may be another answer's plaintext.
        self.pending.zeroize();
        self.pending = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Takes a write of `len` bytes whose last is `last`, gathered by
    /// `gather` only when it may be hyper's answer; `None` when it is not.
    fn take(
        &mut self,
        cx: &mut Context<'_>,
        len: usize,
        last: &[u8],
        gather: impl FnOnce() -> Vec<u8>,
    ) -> Option<Poll<io::Result<usize>>> {
        if self.completed || len > LOOKED_AT || !last.ends_with(b"\r\n\r\n") {
            return None;
        }
        let mut bytes = gather();
        let whole = complete(&bytes);
        bytes.zeroize();
        self.pending = whole?;
        self.completed = true;
        self.refused.inc();
        // Taken whole: what `inner` does not take now goes at the next
        // write, flush or shutdown.
        if let Poll::Ready(Err(e)) = self.drain(cx) {
            return Some(Poll::Ready(Err(e)));
        }
        Some(Poll::Ready(Ok(len)))
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for JsonErrors<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for JsonErrors<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        if let Some(taken) = this.take(cx, buf.len(), buf, || buf.to_vec()) {
            return taken;
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        let len = bufs.iter().map(|b| b.len()).sum();
        let last = bufs.iter().rev().find(|b| !b.is_empty());
        let last: &[u8] = last.map_or(&[], |b| b);
        let gather = || bufs.iter().flat_map(|b| b.iter().copied()).collect();
        if let Some(taken) = this.take(cx, len, last, gather) {
            return taken;
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }

    /// As the stream's: hyper then keeps answers in its queue, uncopied,
    /// as without this filter.
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The error hyper's answer with `status` (its status line past the
/// version) stands for: the three hyper writes, exactly as it writes them.
fn error_of(status: &[u8]) -> Option<ApiError> {
    match status {
        b"400 Bad Request" => Some(ApiError::HeadMalformed),
        b"414 URI Too Long" => Some(ApiError::UriTooLong),
        b"431 Request Header Fields Too Large" => Some(ApiError::HeadTooLarge),
        _ => None,
    }
}

/// `buf` with hyper's automatic error answer at its end completed with a
/// JSON body; `None` when `buf` does not end with one.
fn complete(buf: &[u8]) -> Option<Vec<u8>> {
    // The answer is a few lines: its start is near the end.
    let from = buf.len().saturating_sub(256);
    let tail = buf.get(from..)?;
    let at = from
        + tail
            .windows(9)
            .rposition(|w| w == b"HTTP/1.1 " || w == b"HTTP/1.0 ")?;
    let (before, head) = buf.split_at_checked(at)?;
    let head = head.strip_suffix(b"\r\n\r\n")?;
    let mut lines = Lines(head);
    let status_line = lines.next()?;
    let error = error_of(status_line.get(9..)?)?;
    let mut kept = Vec::new();
    let mut empty = false;
    for line in lines {
        if line.iter().any(|&b| b == b'\r' || b == b'\n') {
            return None;
        }
        let colon = line.iter().position(|&b| b == b':')?;
        let (name, value) = line.split_at_checked(colon)?;
        let value = value.get(1..)?.trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            if value != b"0" || empty {
                return None;
            }
            empty = true;
        } else if name.eq_ignore_ascii_case(b"connection") || name.eq_ignore_ascii_case(b"date") {
            kept.push(line);
        } else {
            return None;
        }
    }
    if !empty {
        return None;
    }
    let (_, body) = super::error_json(&error);
    // Room for all of it at once: what precedes the answer may be another
    // answer's plaintext, and a reallocation would leave a copy unwiped.
    // (The head written is the one read, less `content-length: 0`, plus
    // two header lines of 78 bytes at most.)
    let mut out = Vec::with_capacity(buf.len() + 128 + body.len());
    out.extend_from_slice(before);
    out.extend_from_slice(status_line);
    out.extend_from_slice(b"\r\n");
    for line in kept {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"content-type: application/json\r\ncache-control: no-store\r\n");
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(&body);
    Some(out)
}

/// The lines of a head, split at CRLF.
struct Lines<'a>(&'a [u8]);

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.0.is_empty() {
            return None;
        }
        let rest = self.0;
        let split = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .and_then(|i| rest.split_at_checked(i));
        match split {
            Some((line, after)) => {
                self.0 = after.get(2..).unwrap_or_default();
                Some(line)
            }
            None => {
                self.0 = &[];
                Some(rest)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const DATE: &str = "date: Mon, 07 Dec 2026 22:00:00 GMT\r\n";

    fn hyper_answer(status: &str) -> String {
        format!("HTTP/1.1 {status}\r\nconnection: close\r\ncontent-length: 0\r\n{DATE}\r\n")
    }

    fn body_of(out: &[u8]) -> serde_json::Value {
        let text = std::str::from_utf8(out).unwrap();
        let (head, body) = text.rsplit_once("\r\n\r\n").unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, body.len());
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn hyper_answers_get_the_error_body() {
        for (status, code) in [
            ("400 Bad Request", "malformed_request"),
            ("414 URI Too Long", "uri_too_long"),
            ("431 Request Header Fields Too Large", "headers_too_large"),
        ] {
            // Alone, and behind an answer of the service still unsent.
            let before =
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
            for prefix in ["", before] {
                let buf = format!("{prefix}{}", hyper_answer(status));
                let out = complete(buf.as_bytes()).expect(status);
                assert!(out.starts_with(format!("{prefix}HTTP/1.1 {status}\r\n").as_bytes()));
                let text = std::str::from_utf8(&out).unwrap();
                assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
                assert!(text.contains(&format!("\r\n{DATE}")), "{text}");
                assert!(text.contains("\r\ncontent-type: application/json\r\n"));
                assert!(!text.contains("content-length: 0"));
                let body = body_of(&out[prefix.len()..]);
                assert_eq!(body["error"]["code"], code, "{text}");
                assert!(body["error"]["message"].as_str().unwrap().len() > 10);
            }
        }
    }

    #[test]
    fn other_writes_pass_untouched() {
        let long_ago = format!(
            "{}\r\n{}: 1\r\n\r\n",
            hyper_answer("400 Bad Request").trim_end(),
            "x".repeat(300)
        );
        let json_error = "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n";
        for buf in [
            // The service's answers: bodies, or a content type.
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
            json_error,
            // A status hyper does not answer by itself.
            "HTTP/1.1 413 Payload Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            // A header it does not write, a length not zero, none at all.
            "HTTP/1.1 431 Request Header Fields Too Large\r\nx-other: 1\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 5\r\n\r\n",
            "HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\n\r\n",
            // A line without a colon, a bare line feed, not the end of the buffer.
            "HTTP/1.1 431 Request Header Fields Too Large\r\nnonsense\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 431 Request Header Fields Too Large\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\nmore",
            "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ncontent-length: 0\r\n\r\n",
            // Not hyper's status line, word for word.
            "HTTP/1.1 431 Too Large\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 400 Bad Request x\r\ncontent-length: 0\r\n\r\n",
            // hyper's answer, then more than the tail looked at.
            &format!("{}{}", hyper_answer("400 Bad Request"), "x".repeat(300)),
            // The start of an answer too far back to be looked at.
            &long_ago,
            &format!(
                "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: {}\r\n\r\n",
                "x".repeat(300)
            ),
            "",
            "\r\n\r\n",
        ] {
            assert!(complete(buf.as_bytes()).is_none(), "{buf:?}");
        }
    }

    /// A stream that takes at most `STEP` bytes a write, vectored or not as
    /// asked: hyper queues (vectored, as over TLS) or flattens, and every
    /// answer goes out in pieces.
    struct Trickle<T> {
        inner: T,
        vectored: bool,
        /// Every other write is not taken at once (Pending, woken).
        calls: usize,
        /// Vectored writes hyper made.
        vectored_writes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    const STEP: usize = 100;

    impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Trickle<T> {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: hyper::rt::ReadBufCursor<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
        }
    }

    impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Trickle<T> {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.calls += 1;
            if this.calls.is_multiple_of(2) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = buf.len().min(STEP);
            Pin::new(&mut this.inner).poll_write(cx, &buf[..n])
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            assert!(self.vectored, "a vectored write on a plain stream");
            self.vectored_writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let first = bufs.iter().find(|b| !b.is_empty());
            let first: &[u8] = first.map_or(&[], |b| b);
            self.poll_write(cx, first)
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
        }

        fn is_write_vectored(&self) -> bool {
            self.vectored
        }
    }

    /// hyper queues an answer's bytes, uncopied, only over a stream that
    /// takes vectored writes, as TLS does: the body budget's count of
    /// unsent answers and their wiping rely on it, so the filter must not
    /// make hyper flatten them into its own buffer.
    #[test]
    fn vectored_writes_stay_vectored() {
        for vectored in [true, false] {
            let (_, server) = tokio::io::duplex(64);
            let stream = Trickle {
                inner: hyper_util::rt::TokioIo::new(server),
                vectored,
                calls: 0,
                vectored_writes: Default::default(),
            };
            let io = JsonErrors::new(stream, Counter::default());
            assert_eq!(hyper::rt::Write::is_write_vectored(&io), vectored);
        }
    }

    /// What the service answers: a big body for `/big`, a small one else.
    fn body_for(path: &str) -> bytes::Bytes {
        if path == "/big" {
            bytes::Bytes::from(format!("{{\"big\":\"{}\"}}", "b".repeat(200 * 1024)))
        } else {
            bytes::Bytes::from_static(b"{\"ok\":1}")
        }
    }

    /// The real thing: hyper's server answering raw bytes over a narrow
    /// pipe, its refusals as a client sees them; with vectored writes or not.
    /// Also returns how many vectored writes hyper made.
    async fn answer_to(request: Vec<u8>, vectored: bool) -> (String, u64, usize) {
        let (client, server) = tokio::io::duplex(512);
        let refused = Counter::default();
        let vectored_writes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stream = Trickle {
            inner: hyper_util::rt::TokioIo::new(server),
            vectored,
            calls: 0,
            vectored_writes: vectored_writes.clone(),
        };
        let io = JsonErrors::new(stream, refused.clone());
        let serving = tokio::spawn(async move {
            // The API listener's own builder.
            let b = super::super::conn::http1(std::time::Duration::from_secs(5));
            let svc = hyper::service::service_fn(|req: http::Request<_>| async move {
                let resp = http::Response::builder()
                    .header("content-type", "application/json")
                    .header("cache-control", "no-store")
                    .body(http_body_util::Full::new(body_for(req.uri().path())))
                    .unwrap();
                Ok::<_, std::convert::Infallible>(resp)
            });
            let _ = b.serve_connection(io, svc).await;
        });
        let (mut r, mut w) = tokio::io::split(client);
        let writer = tokio::spawn(async move {
            let _ = w.write_all(&request).await;
            w
        });
        let mut out = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(10), r.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        serving.await.unwrap();
        drop(writer.await.unwrap());
        (
            String::from_utf8(out).unwrap(),
            refused.get(),
            vectored_writes.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    #[tokio::test]
    async fn hypers_own_refusals_carry_the_json_error() {
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(100 * 1024)
        );
        let many = format!(
            "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
            (0..200)
                .map(|i| format!("X-H{i}: v\r\n"))
                .collect::<String>()
        );
        let ok = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let ok10 = "GET / HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n";
        let big_answer = "GET /big HTTP/1.1\r\nHost: x\r\n\r\n";
        for vectored in [true, false] {
            for (what, request, line, code, answers) in [
                (
                    "a 100 KiB header",
                    big.clone(),
                    "HTTP/1.1 431 ",
                    "headers_too_large",
                    1,
                ),
                (
                    "200 headers",
                    many.clone(),
                    "HTTP/1.1 431 ",
                    "headers_too_large",
                    1,
                ),
                (
                    "a bad method",
                    "G\u{1}T / HTTP/1.1\r\n\r\n".into(),
                    "HTTP/1.1 400 ",
                    "malformed_request",
                    1,
                ),
                (
                    "a bad header name",
                    "GET / HTTP/1.1\r\nHo st: x\r\n\r\n".into(),
                    "HTTP/1.1 400 ",
                    "malformed_request",
                    1,
                ),
                (
                    "a control byte in the target",
                    "GET /\u{7f} HTTP/1.1\r\n\r\n".into(),
                    "HTTP/1.1 400 ",
                    "malformed_request",
                    1,
                ),
                // Behind requests served on the same connection, pipelined.
                (
                    "a bad second request",
                    format!("{ok}NOT HTTP\r\n\r\n"),
                    "HTTP/1.1 400 ",
                    "malformed_request",
                    2,
                ),
                (
                    "a bad request behind a 200 KiB answer",
                    format!("{big_answer}NOT HTTP\r\n\r\n"),
                    "HTTP/1.1 400 ",
                    "malformed_request",
                    2,
                ),
                (
                    "a bad request on an HTTP/1.0 keep-alive connection",
                    format!("{ok10}NOT HTTP\r\n\r\n"),
                    "HTTP/1.0 400 ",
                    "malformed_request",
                    2,
                ),
            ] {
                let what = format!("{what}, vectored {vectored}");
                let (out, refused, _) = answer_to(request.into_bytes(), vectored).await;
                let brief = || out.chars().take(400).collect::<String>();
                assert_eq!(refused, 1, "{what}: {}", brief());
                assert_eq!(
                    out.matches("HTTP/1.").count(),
                    answers,
                    "{what}: {}",
                    brief()
                );
                let last = out.rfind(line);
                assert!(last.is_some(), "{what}: {}", brief());
                let last = last.unwrap();
                let body = body_of(&out.as_bytes()[last..]);
                assert_eq!(body["error"]["code"], code, "{what}: {}", brief());
                if answers == 2 {
                    // The answer before is whole, byte for byte.
                    let path = if what.contains("200 KiB") {
                        "/big"
                    } else {
                        "/"
                    };
                    let served = &out[..last];
                    assert!(served.starts_with("HTTP/1."), "{what}");
                    assert!(served.ends_with(std::str::from_utf8(&body_for(path)).unwrap()));
                }
            }
            // Served requests pass untouched and count nothing; so does a
            // HEAD's answer, a head alone.
            let last = "GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
            let head = "HEAD / HTTP/1.1\r\nHost: x\r\n\r\n";
            let (out, refused, queued) =
                answer_to(format!("{ok}{head}{last}").into_bytes(), vectored).await;
            assert_eq!(refused, 0);
            // Over a vectored stream (TLS) the API listener's builder keeps
            // answers queued, uncopied, as the body budget counts them.
            assert_eq!(queued > 0, vectored, "{queued} vectored writes");
            assert_eq!(out.matches("HTTP/1.1 200 OK\r\n").count(), 3);
            assert_eq!(out.matches("{\"ok\":1}").count(), 1);
            assert!(out.ends_with(std::str::from_utf8(&body_for("/big")).unwrap()));
        }
    }
}
