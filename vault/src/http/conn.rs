//! One API connection after its TLS handshake: the protocol ALPN chose, the
//! HTTP limits, and the deadlines that free it. Invariant: every connection
//! ends within a bounded time of going quiet or of a shutdown: idle past
//! `idle-timeout-ms` or asked to stop, it is closed gracefully, and dropped
//! if it has not finished within the grace that follows: [`IDLE_GRACE`]
//! when it was closed for being idle and is still so, the request timeout
//! while a request is in flight.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::watch;

use crate::server::Limits;

/// Largest HTTP/1 read buffer: a head still incomplete at this size is
/// refused with 431 before more is buffered.
const H1_MAX_BUF: usize = 64 * 1024;
/// Largest complete HTTP/1 head, request line and headers (431 beyond):
/// one read can bring a whole head bigger than the buffer limit.
const H1_MAX_HEAD: usize = 32 * 1024;
/// Most header fields in an HTTP/1 request (hyper answers 431 beyond).
const H1_MAX_HEADERS: usize = 100;
/// Largest decoded HTTP/2 header list a client may send.
const H2_MAX_HEADER_LIST: u32 = 32 * 1024;
/// Streams a client may reset before the server has accepted them; beyond,
/// the connection gets GOAWAY (the rapid-reset flood, CVE-2023-44487).
const H2_MAX_PENDING_RESETS: usize = 20;
/// Streams the server may reset for a client's errors before it gives up on
/// the connection (RUSTSEC-2024-0003 and CVE-2025-8671).
const H2_MAX_LOCAL_RESETS: usize = 256;
/// How long an idle connection has to finish closing once told to. A
/// graceful HTTP/2 close waits for the client to answer a PING; a client
/// that stays silent would otherwise keep the connection for the whole
/// request timeout with nothing to finish.
const IDLE_GRACE: Duration = Duration::from_secs(1);

/// The builders of the two protocols: ALPN decides which one serves a
/// connection, so no time is spent sniffing the first bytes, and the
/// HTTP/1 header deadline runs from the first byte read.
pub struct Builders {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    /// Counts HTTP/1 heads refused by hyper itself (`heads.rs`).
    heads_refused: Counter,
}

impl Builders {
    pub fn new(limits: &Limits, heads_refused: Counter) -> Builders {
        let h1 = http1(limits.handshake_timeout);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_streams_per_connection)
            .max_header_list_size(H2_MAX_HEADER_LIST)
            .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
            .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS)
            .max_send_buf_size(1 << 20)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(10));
        Builders {
            h1,
            h2,
            heads_refused,
        }
    }
}

/// The HTTP/1 builder, its head read within `header_timeout`.
pub(super) fn http1(header_timeout: Duration) -> http1::Builder {
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(H1_MAX_BUF)
        .max_header_size(H1_MAX_HEAD)
        .max_headers(H1_MAX_HEADERS);
    h1
}

/// What a connection is doing, for its idle deadline: requests in flight,
/// and when the last one began or ended.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Marks a request in flight until the guard drops (also when the
    /// request is cancelled by the client).
    pub fn begin(&self) -> Busy<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        Busy(self)
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }

    /// Resolves once no request has been in flight for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let quiet = self.opened.elapsed().saturating_sub(last);
            let busy = self.busy();
            if !busy && quiet >= limit {
                return;
            }
            let wait = if busy { limit } else { limit - quiet };
            tokio::time::sleep(wait.max(Duration::from_millis(5))).await;
        }
    }
}

/// A request in flight on a connection.
pub struct Busy<'a>(&'a Activity);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What ends a connection besides its client and its idleness: the
/// server's shutdown, and the expiry of the certificate it was
/// authenticated with.
pub struct Until {
    pub stop: watch::Receiver<bool>,
    pub expires: Option<tokio::time::Instant>,
    /// The certificate, and the revocations to watch for it.
    pub revoked: Option<(crate::tls::CertId, watch::Receiver<crate::tls::Revoked>)>,
}

/// Resolves when `id` is among the revoked certificates (at once if it
/// already is); never without a certificate to watch.
async fn revoked(watched: Option<(crate::tls::CertId, watch::Receiver<crate::tls::Revoked>)>) {
    let Some((id, mut rx)) = watched else {
        return std::future::pending().await;
    };
    loop {
        if rx.borrow_and_update().contains(&id) {
            return;
        }
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Serves one connection until it ends, goes idle past the limit, its
/// certificate expires, or a shutdown is asked for; the last three close
/// it gracefully, then drop it if it has not finished within the grace
/// (see the module doc).
pub async fn serve<I, S, B>(
    builders: &Builders,
    h2: bool,
    io: I,
    svc: S,
    activity: &Activity,
    limits: &Limits,
    until: Until,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: Service<http::Request<Incoming>, Response = http::Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if h2 {
        let conn = builders.h2.serve_connection(io, svc);
        drive(
            conn,
            http2::Connection::graceful_shutdown,
            activity,
            limits,
            until,
        )
        .await;
    } else {
        let io = super::heads::JsonErrors::new(io, builders.heads_refused.clone());
        let conn = builders.h1.serve_connection(io, svc);
        drive(
            conn,
            http1::Connection::graceful_shutdown,
            activity,
            limits,
            until,
        )
        .await;
    }
}

async fn drive<C, E>(
    conn: C,
    graceful: impl FnOnce(std::pin::Pin<&mut C>),
    activity: &Activity,
    limits: &Limits,
    until: Until,
) where
    C: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let Until {
        mut stop,
        expires,
        revoked: watched,
    } = until;
    tokio::pin!(conn);
    let expired = async {
        match expires {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    let why = tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "Connection ended with an error");
            }
            return;
        }
        _ = stop.wait_for(|s| *s) => "shutdown",
        () = activity.idle_for(limits.idle_timeout) => "idle",
        () = expired => "certificate expired",
        () = revoked(watched) => "certificate revoked",
    };
    if why == "certificate revoked" {
        tracing::info!(reason = why, "Closing connection");
    } else {
        tracing::debug!(reason = why, "Closing connection");
    }
    graceful(conn.as_mut());
    let long = limits.request_timeout + Duration::from_secs(1);
    let started = Instant::now();
    if why == "idle" {
        // A request may still slip in before the client sees the GOAWAY; it
        // gets the long grace like any other.
        if tokio::time::timeout(IDLE_GRACE, conn.as_mut())
            .await
            .is_ok()
        {
            return;
        }
        if !activity.busy() {
            tracing::debug!(reason = why, "Connection dropped after the grace period");
            return;
        }
    }
    let rest = long.saturating_sub(started.elapsed());
    if tokio::time::timeout(rest, conn).await.is_err() {
        tracing::debug!(reason = why, "Connection dropped after the grace period");
    }
}
