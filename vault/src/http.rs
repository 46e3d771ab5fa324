//! The HTTP layer: both listeners, the request stack, routing, and the one
//! place where an error becomes a status and a code. The stack, outermost
//! first: connection limit, TLS handshake under a deadline with the client
//! certificate required, the connection's protocol, deadlines and stream
//! limit (`http/conn.rs`), request id, metrics, request deadline, caller
//! identity, the whole body read under the body deadline, the body limit and
//! the body budget (`http/body.rs`), concurrency limit with load shedding,
//! router, handler.
//!
//! Invariant: a request holds one of `max-concurrent-requests` handling
//! places only once its body is in, so a client slow to send bodies holds
//! no more than its own connection's `max-streams-per-connection` requests,
//! each for at most `body-timeout-ms`. Memory for bodies is bounded all the
//! same: in total by the body budget, `2 × max-concurrent-requests ×
//! max-body-bytes` bytes, charged as they arrive (a withheld body costs
//! nothing), besides what HTTP/2 flow control lets a connection buffer; one
//! caller holds at most half the budget, so it cannot take the room of the
//! others. What a handler builds from a body and keeps while it waits
//! (the pointers of `/v1/records`) is charged to the same budget.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use vault_sdk::wire::{ErrorBody, ErrorDetail};

use crate::api::{self, admin, ApiError, Ctx};
use crate::server::Vault;

mod admit;
mod body;
pub use body::Held;
mod conn;
mod heads;
mod places;
mod unwind;

type Body = Full<Bytes>;

/// The status and code of every error: the only such mapping.
pub fn error_parts(e: &ApiError) -> (StatusCode, &'static str) {
    use ApiError as E;
    match e {
        E::MalformedJson { .. } => (StatusCode::BAD_REQUEST, "malformed_json"),
        E::InvalidRequest { .. } | E::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
        E::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
        E::TooManyItems(_) | E::WalkTooLarge(_) => {
            (StatusCode::PAYLOAD_TOO_LARGE, "too_many_items")
        }
        E::UnknownCaller => (StatusCode::FORBIDDEN, "unknown_caller"),
        E::OfficerOnly | E::ConsentByOfficer => (StatusCode::FORBIDDEN, "forbidden"),
        E::InvalidSubject => (StatusCode::BAD_REQUEST, "invalid_subject"),
        E::PurposeRequired => (StatusCode::BAD_REQUEST, "purpose_required"),
        E::UnknownPurpose => (StatusCode::BAD_REQUEST, "unknown_purpose"),
        E::PurposeNotAllowed | E::ClassNotAllowed { .. } | E::CorrectionNotAllowed => {
            (StatusCode::FORBIDDEN, "purpose_not_allowed")
        }
        E::UnknownClass { .. } => (StatusCode::BAD_REQUEST, "unknown_class"),
        E::InvalidValue { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_value"),
        E::InvalidRetention => (StatusCode::BAD_REQUEST, "invalid_retention"),
        E::Sealed => (StatusCode::SERVICE_UNAVAILABLE, "sealed"),
        E::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
        E::Timeout => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
        E::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        E::NotFound | E::NoSuchValue => (StatusCode::NOT_FOUND, "not_found"),
        E::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        E::Conflict => (StatusCode::CONFLICT, "conflict"),
        E::SelfApproval => (StatusCode::FORBIDDEN, "self_approval"),
        E::LegalHold => (StatusCode::CONFLICT, "legal_hold"),
        E::SubjectRestricted => (StatusCode::CONFLICT, "subject_restricted"),
        E::AccountClosed => (StatusCode::CONFLICT, "account_closed"),
        E::KeyInUse => (StatusCode::CONFLICT, "key_in_use"),
        E::InvalidShare(_) => (StatusCode::BAD_REQUEST, "invalid_share"),
        E::UnsealFailed => (StatusCode::BAD_REQUEST, "unseal_failed"),
        E::BadMapping(_) => (StatusCode::BAD_REQUEST, "invalid_mapping"),
        E::UnknownSchema => (StatusCode::BAD_REQUEST, "unknown_schema"),
        E::LeafNotString { .. } | E::LeafInvalid { .. } => {
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_value")
        }
        E::LeafMappedTwice { .. } => (StatusCode::BAD_REQUEST, "invalid_mapping"),
        E::LeafNotAllowed { .. } => (StatusCode::FORBIDDEN, "purpose_not_allowed"),
        E::TooDeep => (StatusCode::BAD_REQUEST, "too_deep"),
        E::HeadMalformed => (StatusCode::BAD_REQUEST, "malformed_request"),
        E::UriTooLong => (StatusCode::URI_TOO_LONG, "uri_too_long"),
        E::HeadTooLarge => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
        ),
        E::Internal | E::Panicked => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

fn field_of(e: &ApiError) -> Option<usize> {
    match e {
        ApiError::ClassNotAllowed { field }
        | ApiError::UnknownClass { field }
        | ApiError::InvalidValue { field, .. } => Some(*field),
        _ => None,
    }
}

fn pointer_of(e: &ApiError) -> Option<String> {
    match e {
        ApiError::LeafNotString { pointer }
        | ApiError::LeafMappedTwice { pointer }
        | ApiError::LeafNotAllowed { pointer }
        | ApiError::LeafInvalid { pointer, .. } => Some(pointer.clone()),
        _ => None,
    }
}

/// The status and JSON body of an error: the only maker of error bodies.
fn error_json(e: &ApiError) -> (StatusCode, Bytes) {
    let (status, code) = error_parts(e);
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.to_string(),
            message: e.to_string(),
            field: field_of(e),
            pointer: pointer_of(e),
        },
    };
    (status, body::json(&body))
}

fn error_response(e: &ApiError) -> Response<Body> {
    let (status, body) = error_json(e);
    let mut resp = json_body(status, body);
    if matches!(e, ApiError::OfficerOnly) {
        resp.extensions_mut().insert(OfficerOnlyRefused);
    }
    if matches!(e, ApiError::Panicked) {
        resp.extensions_mut().insert(unwind::Panicked);
    }
    resp
}

/// Marks an answer refusing an app an officer's endpoint, for the refusal
/// to be audited: a stolen app certificate probing the officer endpoints
/// shows in the log, not only in the metrics.
#[derive(Clone, Copy)]
struct OfficerOnlyRefused;

/// What an app tried on an officer's endpoint, as the audit event's action.
fn officer_action(path: &str) -> &'static str {
    match path {
        "/v1/audit" => "audit_query",
        "/v1/admin/seal" => "seal",
        "/v1/admin/unseal" => "unseal",
        p if p.starts_with("/v1/admin/approvals") => "approval",
        "/v1/admin/incidents/exposure" => "exposure_report",
        "/v1/admin/stats/anonymized" => "anonymized_stats",
        p if p.starts_with("/v1/admin/keys") => "keys",
        p if p.ends_with("/hold") => "legal_hold",
        _ => "officer_endpoint",
    }
}

fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    json_body(status, body::json(value))
}

fn json_body(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

fn ok<T: Serialize>(r: Result<T, ApiError>) -> Response<Body> {
    match r {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(e) => error_response(&e),
    }
}

/// The route label of a request: a closed set, for metrics.
fn route_of(method: &Method, path: &str) -> &'static str {
    match (method, path) {
        (_, "/v1/tokenize") => "tokenize",
        (_, "/v1/detokenize") => "detokenize",
        (_, "/v1/deidentify") => "deidentify",
        (_, "/v1/reidentify") => "reidentify",
        (_, "/v1/records") => "records",
        (_, "/v1/audit") => "audit",
        (_, p) if p.starts_with("/v1/admin/") => "admin",
        (_, p) if p.starts_with("/v1/subjects/") => "subjects",
        _ => "other",
    }
}

/// A request's id (the `x-request-id` answer header, logs, audit events):
/// random, so the ids a caller sees say nothing of how many requests the
/// vault served between its own (a counter would tell every caller the
/// vault-wide volume).
fn request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Per-connection facts the stack needs for each request.
struct Conn {
    vault: Arc<Vault>,
    caller: Option<Arc<str>>,
    /// Handling places, `max-concurrent-requests` of them, shared by callers.
    places: Arc<places::Places>,
    /// When the client certificate stops being valid: no request is taken
    /// after, even on a connection still closing.
    valid_until: Option<std::time::SystemTime>,
    /// The client certificate and the revocations as they stand: no
    /// request is taken once it is revoked.
    revoked: Option<(crate::tls::CertId, watch::Receiver<crate::tls::Revoked>)>,
    bodies: body::Budget,
    /// The caller's answers not yet written out, when it is a configured
    /// caller (see `body::Budget::answers_over`).
    answers: Option<Arc<std::sync::atomic::AtomicUsize>>,
    activity: conn::Activity,
}

/// Counts a request in the in-flight gauge until dropped, also when the
/// client cancels it.
struct InFlight<'a>(&'a crate::metrics::Metrics);

impl<'a> InFlight<'a> {
    fn new(m: &'a crate::metrics::Metrics) -> InFlight<'a> {
        m.in_flight().inc();
        InFlight(m)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight().dec();
    }
}

async fn handle(conn: Arc<Conn>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let rid = request_id();
    let route = route_of(req.method(), req.uri().path());
    let http1 = req.version() < http::Version::HTTP_2;
    let v = &conn.vault;
    let busy = conn.activity.begin();
    let in_flight = InFlight::new(&v.metrics);
    let work = admit(&conn, rid.clone(), started + v.limits.request_timeout, req);
    let work = unwind::Caught::new(tokio::time::timeout(v.limits.request_timeout, work));
    let mut resp = match work.await {
        Ok(Ok(Ok(resp))) => resp,
        Ok(Ok(Err(e))) => error_response(&e),
        Ok(Err(_)) => error_response(&ApiError::Timeout),
        Err(unwind::Panicked) => error_response(&ApiError::Panicked),
    };
    if resp.extensions().get::<unwind::Panicked>().is_some() {
        tracing::error!(request_id = %rid, route, "A request's handling panicked; answered 500");
        // Whatever made it panic is not replayed at keep-alive speed.
        if http1 {
            resp.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
    }
    drop(in_flight);
    drop(busy);
    v.metrics.observe_request(
        route,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    if let Ok(h) = header::HeaderValue::from_str(&rid) {
        resp.headers_mut().insert("x-request-id", h);
    }
    resp
}

/// Who is calling, then the whole body within the body deadline, then a
/// handling place, then the handler. Everything taken is given back when
/// this ends or is dropped at the request deadline.
async fn admit(
    conn: &Conn,
    request_id: String,
    deadline: Instant,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let v = &conn.vault;
    if conn
        .valid_until
        .is_some_and(|t| std::time::SystemTime::now() >= t)
        || conn
            .revoked
            .as_ref()
            .is_some_and(|(id, rx)| rx.borrow().contains(id))
    {
        return Err(ApiError::UnknownCaller);
    }
    let caller = conn.caller.clone().ok_or(ApiError::UnknownCaller)?;
    let role = v.policy.role(&caller).ok_or(ApiError::UnknownCaller)?;
    let ctx = Ctx {
        caller,
        role,
        request_id,
        deadline: Some(deadline),
    };
    // An officer's seal needs no handling place, and is not held back by
    // the officer's own unread answers: it must get through when a flood
    // (a compromised app, say) holds every place.
    let seal = req.method() == Method::POST
        && req.uri().path() == "/v1/admin/seal"
        && ctx.role == crate::policy::Role::Officer;
    // A caller whose unread answers already hold its share gets no more
    // work until they drain: looked at before its body is read, and again
    // once it is in (a body can take seconds to arrive, and answers meanwhile).
    let over = || {
        !seal
            && conn
                .answers
                .as_ref()
                .is_some_and(|a| conn.bodies.answers_over(a))
    };
    if over() {
        return Err(ApiError::Overloaded);
    }
    let (parts, incoming) = req.into_parts();
    let max = v.limits.max_body_bytes;
    // The seal ignores its body: it is not read, so bodies other callers
    // hold (the whole shared budget, between two of them) cannot refuse it.
    let body = if seal {
        drop(incoming);
        body::Body::none()
    } else {
        let reading = body::read(&conn.bodies, &ctx.caller, max, &parts.headers, incoming);
        tokio::time::timeout(v.limits.body_timeout, reading)
            .await
            .map_err(|_| ApiError::Timeout)??
    };
    if over() {
        return Err(ApiError::Overloaded);
    }
    let _place = if seal {
        None
    } else {
        Some(conn.places.take(&ctx.caller, ctx.role)?)
    };
    // What `/v1/records` built from its body (its pointers) is held from
    // the caller's share while it waits for its write, as the body is.
    let hold = |n: usize| conn.bodies.hold(&ctx.caller, n);
    let mut resp = dispatch(v, &ctx, &parts, body.bytes(), &hold).await;
    if resp.extensions().get::<OfficerOnlyRefused>().is_some() {
        let path = parts.uri.path();
        let action = officer_action(path);
        // A subject's endpoint (a hold) names the subject, for the officers'
        // query by subject to find the try.
        let subject = subject_path(path)
            .map(|(s, _)| s)
            .filter(|s| crate::schema::valid_subject(s));
        let e = api::refused(
            v,
            &ctx,
            action,
            None,
            subject.as_deref(),
            "forbidden",
            ApiError::OfficerOnly,
        )
        .await;
        if !matches!(e, ApiError::OfficerOnly) {
            resp = error_response(&e);
        }
    }
    // The answer is charged to its caller until it is written out.
    let (head, answer) = resp.into_parts();
    let bytes = answer
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    let charged = match &conn.answers {
        Some(pending) => body::Budget::charge_answer(pending, bytes),
        None => bytes,
    };
    Ok(Response::from_parts(head, Full::new(charged)))
}

/// Runs a handler that walks the audit log (as much of it as the query
/// asks) on the blocking pool, so a long walk holds a blocking thread, not
/// one of the two runtime workers every other request needs.
///
/// A request that times out drops its wait here, not the walk: so the walk
/// gets the request's deadline and stops there itself, and it holds one of
/// the few walking places until it does, so walks abandoned by their
/// requests cannot pile up on the pool (more answer 503 `overloaded`).
pub(crate) async fn off_runtime<T: Send + 'static>(
    v: &Arc<Vault>,
    ctx: &Ctx,
    f: impl FnOnce(&Vault, crate::audit::Deadline) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let places = match ctx.role {
        crate::policy::Role::Officer => &v.officer_walks,
        crate::policy::Role::App => &v.walks,
    };
    // One caller holds at most half the places, so an app walking the log
    // cannot keep the other apps' access logs out.
    let share = WalkShare::take(v, &ctx.caller).ok_or(ApiError::Overloaded)?;
    let place = places
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Overloaded)?;
    let deadline = crate::audit::Deadline::at(
        ctx.deadline
            .unwrap_or_else(|| Instant::now() + v.limits.request_timeout),
    );
    let v = v.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let _place = place;
        let _share = share;
        f(&v, deadline)
    })
    .await;
    api::joined(joined)?
}

/// One caller's count of walks under way, given back when dropped.
struct WalkShare {
    v: Arc<Vault>,
    caller: Arc<str>,
}

impl WalkShare {
    fn take(v: &Arc<Vault>, caller: &Arc<str>) -> Option<WalkShare> {
        // A panic elsewhere while holding it left the counts whole: one
        // change at a time.
        let mut walkers = v
            .walkers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = walkers.entry(caller.clone()).or_insert(0);
        if *n >= crate::server::AUDIT_WALKS / 2 {
            return None;
        }
        *n += 1;
        Some(WalkShare {
            v: v.clone(),
            caller: caller.clone(),
        })
    }
}

impl Drop for WalkShare {
    fn drop(&mut self) {
        let mut walkers = self
            .v
            .walkers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = walkers.get_mut(&self.caller) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                walkers.remove(&self.caller);
            }
        }
    }
}

async fn dispatch(
    v: &Arc<Vault>,
    ctx: &Ctx,
    parts: &http::request::Parts,
    b: &Bytes,
    hold: &(dyn Fn(usize) -> Result<Held, ApiError> + Sync),
) -> Response<Body> {
    match (&parts.method, parts.uri.path()) {
        (&Method::POST, "/v1/tokenize") => ok(api::tokenize(v, ctx, b).await),
        (&Method::POST, "/v1/detokenize") => ok(api::detokenize(v, ctx, b).await),
        (&Method::POST, "/v1/deidentify") => ok(api::deidentify(v, ctx, b).await),
        (&Method::POST, "/v1/reidentify") => ok(api::reidentify(v, ctx, b).await),
        (&Method::POST, "/v1/records") => ok(api::records(v, ctx, b, hold).await),
        (&Method::GET, "/v1/audit") => {
            let (owned, query) = (ctx.clone(), parts.uri.query().map(str::to_string));
            ok(off_runtime(v, ctx, move |v, d| {
                api::audit(v, &owned, query.as_deref(), d)
            })
            .await)
        }
        (&Method::GET, "/v1/admin/keys") => ok(admin::keys_status(v, ctx).await),
        (&Method::POST, "/v1/admin/keys/rotate") => ok(admin::rotate(v, ctx).await),
        (&Method::POST, "/v1/admin/keys/config") => ok(admin::configure(v, ctx, b).await),
        (&Method::POST, "/v1/admin/keys/retire") => ok(admin::retire(v, ctx, b).await),
        (&Method::POST, "/v1/admin/keys/rewrap") => ok(admin::rewrap_start(v, ctx).await),
        (&Method::GET, "/v1/admin/keys/rewrap") => ok(admin::rewrap_status(v, ctx)),
        (&Method::GET, "/v1/admin/stats/anonymized") => {
            ok(api::lifecycle::anonymized_stats(v, ctx))
        }
        (&Method::GET, "/v1/admin/incidents/exposure") => {
            ok(api::exposure::exposure(v, ctx, parts.uri.query()).await)
        }
        (&Method::POST, "/v1/admin/approvals") => ok(api::consent::approve(v, ctx, b).await),
        (m, path) if path.starts_with("/v1/admin/approvals/") => {
            let id = path
                .strip_prefix("/v1/admin/approvals/")
                .unwrap_or_default();
            match *m {
                Method::DELETE => ok(api::consent::revoke_approval(v, ctx, id).await),
                _ => error_response(&ApiError::MethodNotAllowed),
            }
        }
        (m, path) if path.starts_with("/v1/subjects/") => {
            let m = m.clone();
            subjects(v, ctx, &m, path, parts.uri.query(), b).await
        }
        (&Method::POST, "/v1/admin/seal") => ok(admin::seal(v, ctx).await),
        (&Method::POST, "/v1/admin/unseal") => ok(admin::unseal(v, ctx, b).await),
        (
            _,
            "/v1/tokenize"
            | "/v1/detokenize"
            | "/v1/deidentify"
            | "/v1/reidentify"
            | "/v1/records"
            | "/v1/audit"
            | "/v1/admin/keys"
            | "/v1/admin/keys/rotate"
            | "/v1/admin/keys/config"
            | "/v1/admin/keys/retire"
            | "/v1/admin/approvals"
            | "/v1/admin/incidents/exposure"
            | "/v1/admin/keys/rewrap"
            | "/v1/admin/stats/anonymized"
            | "/v1/admin/seal"
            | "/v1/admin/unseal",
        ) => error_response(&ApiError::MethodNotAllowed),
        _ => error_response(&ApiError::NotFound),
    }
}

/// `/v1/subjects/{subject}[/{rest}]`, the subject percent-decoded (the
/// handlers validate it).
fn subject_path(path: &str) -> Option<(String, &str)> {
    let rest = path.strip_prefix("/v1/subjects/")?;
    let (subject, rest) = rest.split_once('/').unwrap_or((rest, ""));
    if subject.is_empty() {
        return None;
    }
    Some((api::percent_decode(subject)?, rest))
}

/// The data-subject routes: export, access log, consents, hold, events,
/// correction and erasure.
async fn subjects(
    v: &Arc<Vault>,
    ctx: &Ctx,
    m: &Method,
    path: &str,
    query: Option<&str>,
    b: &Bytes,
) -> Response<Body> {
    use api::{consent, lifecycle, subjects};
    let Some((subject, rest)) = subject_path(path) else {
        return error_response(&ApiError::NotFound);
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let allowed: &[Method] = match segments.as_slice() {
        [""] => &[Method::GET, Method::DELETE],
        ["access-log"] => &[Method::GET],
        ["consents", p] if !p.is_empty() => &[Method::GET, Method::PUT, Method::DELETE],
        ["hold"] => &[Method::PUT, Method::DELETE],
        ["events"] => &[Method::POST],
        ["tokens", t] if !t.is_empty() => &[Method::PUT],
        _ => return error_response(&ApiError::NotFound),
    };
    if !allowed.contains(m) {
        return error_response(&ApiError::MethodNotAllowed);
    }
    match (segments.as_slice(), m) {
        ([""], &Method::GET) => ok(subjects::export(v, ctx, &subject, query).await),
        ([""], _) => ok(lifecycle::erase(v, ctx, &subject).await),
        (["access-log"], _) => {
            let subject = subject.clone();
            let query = query.map(str::to_string);
            ok(off_runtime(v, ctx, move |v, d| {
                subjects::access_log(v, &subject, query.as_deref(), d)
            })
            .await)
        }
        (["consents", p], _) => match api::percent_decode(p) {
            Some(p) => ok(consent::consent(v, ctx, m, &subject, &p, b).await),
            None => error_response(&ApiError::NotFound),
        },
        (["hold"], _) => ok(lifecycle::hold(v, ctx, &subject, *m == Method::PUT).await),
        (["events"], _) => ok(lifecycle::event(v, ctx, &subject, b).await),
        (["tokens", t], _) => match api::percent_decode(t) {
            Some(t) => ok(lifecycle::correct(v, ctx, &subject, &t, b).await),
            None => error_response(&ApiError::NotFound),
        },
        _ => error_response(&ApiError::NotFound),
    }
}

/// Which API listener: the one for every caller, or the officers' own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Api,
    /// `server.officer-addr`: officers only, with [`OFFICER_CONNECTIONS`]
    /// places of its own.
    Officers,
}

/// Connection places of the officers' listener: a handful of officers
/// and their tools.
pub const OFFICER_CONNECTIONS: usize = 64;

/// Accepts TLS connections until `stop` turns true, then drains: every
/// connection is closed gracefully and waited for, up to a bound.
pub async fn serve_api(
    vault: Arc<Vault>,
    listener: TcpListener,
    tls: Arc<crate::tls::Live>,
    which: Listener,
    mut stop: watch::Receiver<bool>,
) {
    let places = match which {
        Listener::Api => vault.limits.max_connections,
        Listener::Officers => OFFICER_CONNECTIONS,
    };
    let admission = Arc::new(admit::Admission::new(places));
    let places = Arc::new(places::Places::new(vault.limits.max_concurrent_requests));
    let bodies = body::Budget::new(&vault.limits);
    let builders = Arc::new(conn::Builders::new(
        &vault.limits,
        vault.metrics.heads_refused.clone(),
    ));
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "Accept failed");
                    // Out of descriptors: connections still in their
                    // handshake must not keep everyone else out.
                    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
                        && admission.evict_oldest()
                    {
                        vault.metrics.connections_evicted.inc();
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Some((place, how)) = admission.admit().await else {
            vault.metrics.connections_refused.inc();
            drop(tcp);
            continue;
        };
        if how == admit::Admitted::Evicted {
            vault.metrics.connections_evicted.inc();
        }
        let handshake = admission.handshake(admit::source_of(peer.ip()));
        let _ = tcp.set_nodelay(true);
        let admission = admission.clone();
        // The configuration as it stands: a revocation list read again
        // since the last connection counts for this one.
        let acceptor = TlsAcceptor::from(tls.current());
        let revocations = tls.revocations();
        let vault = vault.clone();
        let places = places.clone();
        let bodies = bodies.clone();
        let builders = builders.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _place = place;
            let limits = vault.limits;
            // Biased: a handshake that is done is not evicted by a notice
            // that came at the same moment.
            let accepted = tokio::select! {
                biased;
                r = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)) => r,
                () = handshake.evicted() => {
                    tracing::debug!("Connection in its TLS handshake evicted for a newer one");
                    return;
                }
            };
            let tls = match accepted {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    return;
                }
            };
            let session = tls.get_ref().1;
            let h2 = session.alpn_protocol() == Some(b"h2".as_slice());
            let leaf = session.peer_certificates().and_then(|c| c.first());
            let caller = leaf.and_then(crate::tls::caller_name).map(Arc::<str>::from);
            // The connection ends when its certificate does, and takes no
            // request after. (The leaf's: other certificates a client sends
            // may be stale ones the verifier did not use.)
            let valid_until = leaf.and_then(crate::tls::not_after);
            let revoked = leaf
                .and_then(crate::tls::cert_id)
                .map(|id| (id, revocations));
            let expires = valid_until.map(|at| {
                let left = at
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default();
                tokio::time::Instant::now() + left
            });
            let role = caller.as_ref().and_then(|c| vault.policy.role(c));
            if which == Listener::Officers && role != Some(crate::policy::Role::Officer) {
                tracing::debug!("Not an officer on the officers' listener; closed");
                vault.metrics.connections_refused.inc();
                return;
            }
            let who = role.zip(caller.as_ref());
            let (_app_slot, evictable) = match admission.settle(handshake, who) {
                admit::Settled::Serve(slot) => (slot, None),
                admit::Settled::Evictable(h) => (None, Some(h)),
                admit::Settled::Evicted => return,
                admit::Settled::AppsFull => {
                    tracing::debug!("App connections at their limit; the rest are officers'");
                    vault.metrics.connections_refused.inc();
                    return;
                }
            };
            let answers = caller
                .as_ref()
                .filter(|_| role.is_some())
                .and_then(|c| bodies.answers_of(c));
            let conn = Arc::new(Conn {
                vault,
                caller,
                places,
                bodies,
                answers,
                valid_until,
                revoked: revoked.clone(),
                activity: conn::Activity::new(),
            });
            let svc_conn = conn.clone();
            let svc = service_fn(move |req| {
                let conn = svc_conn.clone();
                async move { Ok::<_, Infallible>(handle(conn, req).await) }
            });
            let io = TokioIo::new(tls);
            let serving = conn::serve(
                &builders,
                h2,
                io,
                svc,
                &conn.activity,
                &limits,
                conn::Until {
                    stop,
                    expires,
                    revoked,
                },
            );
            match evictable {
                None => serving.await,
                // A certificate naming no caller: every request is refused,
                // and the connection gives its place to any newcomer.
                Some(h) => {
                    tokio::select! {
                        () = serving => {}
                        () = h.evicted() => {}
                    }
                }
            }
        });
    }
    drop(listener);
    // Every connection task holds one place until it ends: all of them
    // back means all connections are closed.
    let l = vault.limits;
    let drain = l.handshake_timeout + l.request_timeout + std::time::Duration::from_secs(2);
    admission.drained(drain).await;
}

/// Most connections the ops listener serves at once; more are closed as
/// they arrive. Scrapers and probes need a handful.
const OPS_MAX_CONNECTIONS: usize = 64;
/// How long one ops connection may live, however it is used: a client that
/// stops reading its answers holds nothing for longer.
const OPS_CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(10);

/// How long an ops connection may take to finish once the vault stops.
const OPS_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The ops listener: `/metrics`, `/healthz`, `/readyz`, plain HTTP/1.1.
/// Invariant: unauthenticated as it is, it holds at most
/// `OPS_MAX_CONNECTIONS` connections, each for at most
/// `OPS_CONNECTION_LIFETIME`, and its probes put at most one write at a
/// time into the commit queue.
pub async fn serve_ops(vault: Arc<Vault>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let conns = Arc::new(Semaphore::new(OPS_MAX_CONNECTIONS));
    let ready = Arc::new(ReadyProbe::default());
    loop {
        let tcp = tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of descriptors, mostly: the socket stays ready,
                    // so retrying at once would spin.
                    tracing::warn!(error = %e, "Ops accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            drop(tcp);
            continue;
        };
        let vault = vault.clone();
        let ready = ready.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req: Request<Incoming>| {
                let (vault, ready) = (vault.clone(), ready.clone());
                async move { Ok::<_, Infallible>(ops(&vault, &ready, &req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(5))
                .serve_connection(TokioIo::new(tcp), svc);
            tokio::pin!(conn);
            // At stop, a scrape's keep-alive connection is closed (the
            // answer under way first), not left to its timeouts: it holds
            // the vault, which a shutdown waits for.
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            let served = async {
                tokio::select! {
                    _ = conn.as_mut() => {}
                    () = stopped => {
                        conn.as_mut().graceful_shutdown();
                        // An answer under way gets a moment; a client
                        // sending half a head or reading slowly no more.
                        let _ = tokio::time::timeout(OPS_STOP_GRACE, conn.as_mut()).await;
                    }
                }
            };
            let _ = tokio::time::timeout(OPS_CONNECTION_LIFETIME, served).await;
        });
    }
}

/// `/readyz` proves the store writable with a durable write. Probes share
/// it: one write at a time, and a success stands for [`ReadyProbe::FRESH`]
/// unless a write has failed since (then the next probe writes again).
#[derive(Default)]
struct ReadyProbe {
    gate: tokio::sync::Mutex<Option<Instant>>,
}

impl ReadyProbe {
    const FRESH: std::time::Duration = std::time::Duration::from_secs(1);

    async fn writable(&self, v: &Vault) -> bool {
        let mut last_ok = self.gate.lock().await;
        if last_ok.is_some_and(|t| t.elapsed() < Self::FRESH) && v.metrics.store_writable() {
            return true;
        }
        let mut probe = crate::store::Batch::default();
        probe.put(
            crate::store::Space::Meta,
            b"readyz".to_vec(),
            api::now_ms().to_be_bytes().to_vec(),
        );
        let ok = v.committer.commit(probe, Vec::new()).await.is_ok();
        *last_ok = ok.then(Instant::now);
        ok
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}

async fn ops(v: &Vault, ready: &ReadyProbe, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => {
            v.metrics.set_sealed(v.keys.is_sealed());
            v.metrics.set_subject_cache(v.keys.cache().stats());
            // The Prometheus text format, or OpenMetrics for a scraper
            // that asks for it (Prometheus itself does).
            let open_metrics = req
                .headers()
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|h| h.to_str().ok())
                .any(|a| a.contains("application/openmetrics-text"));
            if open_metrics {
                text(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    v.metrics.render(),
                )
            } else {
                text(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    v.metrics.render_text_004(),
                )
            }
        }
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            if v.keys.is_sealed() {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "sealed\n".into(),
                );
            }
            if ready.writable(v).await {
                text(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "storage not writable\n".into(),
                )
            }
        }
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}
