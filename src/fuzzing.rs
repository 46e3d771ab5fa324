//! The bodies of the fuzz targets, as plain functions so that the nightly
//! cargo-fuzz crate (`fuzz/`) and the stable smoke test
//! (`tests/integration/fuzz_smoke.rs`) check the same invariants. Each takes
//! arbitrary bytes and returns normally when every invariant holds: nothing
//! the vault parses from outside (request bodies, values, stored records,
//! audit rows) can make it panic, hang, echo a submitted value in an error,
//! or lose information on a round trip.

// A fuzz target reports a violated invariant by panicking, so here, unlike
// in `vault/`, `panic!`, `unwrap` and indexing are the point.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use vault::api::{parse_json, ApiError};
use vault::audit::{self, Draft, Head, Verdict, HEAD_KEY};
use vault::classes::{self, Class};
use vault::crypto::{decode_token, encode_token};
use vault::retention::parse_duration;
use vault::schema::{valid_subject, Record};
use vault::shares::Collector;
use vault::store::{Batch, MemoryStore, Space, Store};
use vault_sdk::wire::{
    ApprovalRequest, AuditEvent, ConsentRequest, CorrectionRequest, DetokenizeRequest, Field,
    KeysConfigRequest, LegalBasis, RecordsRequest, RetireRequest, SubjectEvent, TokenizeRequest,
    UnsealRequest,
};

/// Every request body type of the wire, through `parse_json`, then through
/// the validators the handler applies next. A parse error must be one of
/// the fixed messages (position and kind only): it may never quote the body.
pub fn requests(data: &[u8]) {
    let body = Bytes::copy_from_slice(data);
    let mut errors = Vec::new();
    if let Some(req) = parse_checked::<TokenizeRequest>(&body, &mut errors) {
        let _ = valid_subject(&req.subject);
        if let Some(r) = &req.retention {
            check_duration(r);
        }
        for f in &req.fields {
            if let Some(class) = Class::parse(&f.class) {
                check_value(class, &f.value);
            }
        }
    }
    if let Some(req) = parse_checked::<DetokenizeRequest>(&body, &mut errors) {
        for t in &req.tokens {
            check_token(t);
        }
    }
    if let Some(req) = parse_checked::<ApprovalRequest>(&body, &mut errors) {
        check_duration(&req.valid_for);
        for s in &req.subjects {
            let _ = valid_subject(s);
        }
    }
    if let Some(req) = parse_checked::<UnsealRequest>(&body, &mut errors) {
        // A share is checked for form before the threshold; whatever the
        // text, the answer is one of the fixed errors or progress.
        let mut collector = Collector::default();
        let prints: std::collections::BTreeMap<u8, String> =
            vault::shares::fingerprint(&req.share).into_iter().collect();
        for threshold in [2, 3] {
            for fingerprints in [&std::collections::BTreeMap::new(), &prints] {
                if let Err(e) = collector.add(
                    "officer",
                    &req.share,
                    threshold,
                    fingerprints,
                    std::time::Instant::now(),
                ) {
                    errors.push(e.to_string());
                }
            }
        }
    }
    if let Some(req) = parse_checked::<CorrectionRequest>(&body, &mut errors) {
        for class in Class::ALL {
            check_value(class, &req.value);
        }
    }
    if let Some(req) = parse_checked::<RecordsRequest>(&body, &mut errors) {
        check_walks(&req);
    }
    parse_checked::<ConsentRequest>(&body, &mut errors);
    parse_checked::<KeysConfigRequest>(&body, &mut errors);
    parse_checked::<RetireRequest>(&body, &mut errors);
    parse_checked::<SubjectEvent>(&body, &mut errors);
    parse_checked::<LegalBasis>(&body, &mut errors);
    parse_checked::<Field>(&body, &mut errors);
    assert_no_echo(&errors, data);
}

/// The walks of `POST /v1/records` over the request's own document: every
/// pointer a mapping or the scan yields names a node of the document (a
/// string for the scan), and a walk within a budget gives exactly what the
/// unbounded walk gives, or stops; it never gives something else.
fn check_walks(req: &RecordsRequest) {
    let doc = &req.document;
    if let Some(mapping) = req
        .mapping
        .as_ref()
        .and_then(|m| vault::records::compile(m).ok())
    {
        let mut budget = 64 << 10;
        for (_, pattern, _) in &mapping {
            let all = pattern.matches_shown(doc);
            for (pointer, _) in &all {
                assert!(doc.pointer(pointer).is_some(), "{pointer:?} names nothing");
            }
            if let Some(within) = pattern.matches_within(doc, &mut budget) {
                for (node, pointer, _) in &within {
                    assert_eq!(doc.pointer(pointer), Some(*node));
                }
                let within: Vec<_> = within.into_iter().map(|(_, p, sh)| (p, sh)).collect();
                assert_eq!(within, all);
            }
        }
    }
    let leaves = vault::records::string_leaves(doc);
    for pointer in &leaves {
        assert!(matches!(
            doc.pointer(pointer),
            Some(serde_json::Value::String(_))
        ));
    }
    let mut budget = 64 << 10;
    if let Some(within) = vault::records::string_leaves_within(doc, &mut budget) {
        for (text, pointer) in &within {
            assert_eq!(doc.pointer(pointer).and_then(|v| v.as_str()), Some(*text));
        }
        let within: Vec<_> = within.into_iter().map(|(_, p)| p).collect();
        assert_eq!(within, leaves);
    }
}

/// The only shapes a `parse_json` error message may have, digits aside.
const PARSE_ERROR_SHAPES: [&str; 5] = [
    "the body is not well-formed JSON (line #, column #)",
    "the request does not match the schema (line #, column #): unknown field",
    "the request does not match the schema (line #, column #): missing field",
    "the request does not match the schema (line #, column #): duplicate field",
    "the request does not match the schema (line #, column #): wrong type or value",
];

/// Parses `body` as `T`: on success, serializing and parsing again gives
/// the same request; on failure, the error is a parse error of a fixed
/// shape, added to `errors` for the echo check.
fn parse_checked<T: DeserializeOwned + Serialize>(
    body: &Bytes,
    errors: &mut Vec<String>,
) -> Option<T> {
    match parse_json::<T>(body) {
        Ok(req) => {
            let first = serde_json::to_value(&req).unwrap();
            let again: T = parse_json(&Bytes::from(serde_json::to_vec(&first).unwrap()))
                .unwrap_or_else(|e| panic!("a parsed request does not parse again: {e}"));
            assert_eq!(serde_json::to_value(&again).unwrap(), first, "round trip");
            Some(req)
        }
        Err(e @ (ApiError::MalformedJson { .. } | ApiError::InvalidRequest { .. })) => {
            let msg = e.to_string();
            assert!(
                PARSE_ERROR_SHAPES.contains(&digits_as_hash(&msg).as_str()),
                "unexpected parse error message: {msg}"
            );
            if !errors.contains(&msg) {
                errors.push(msg);
            }
            None
        }
        Err(e) => panic!("parse_json answered with a non-parse error: {e:?}"),
    }
}

fn digits_as_hash(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for c in msg.chars() {
        if c.is_ascii_digit() {
            if !out.ends_with('#') {
                out.push('#');
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Shorter runs than this are too common (`line`, digits) to show an echo.
const ECHO_RUN: usize = 6;

/// No run of `ECHO_RUN` characters of a string in the body (a JSON string
/// when the body is JSON, else the body's text) appears in any of
/// `messages`, unless the run is part of the messages' own fixed wording.
/// Digits are compared as `#`: the positions a message gives are numbers of
/// its own.
fn assert_no_echo(messages: &[String], body: &[u8]) {
    if messages.is_empty() {
        return;
    }
    let fixed = digits_as_hash(&fixed_wording());
    let hashed: Vec<String> = messages.iter().map(|m| digits_as_hash(m)).collect();
    let mut strings = Vec::new();
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => collect_strings(&v, &mut strings),
        Err(_) => strings.push(String::from_utf8_lossy(body).into_owned()),
    }
    let mut run = String::new();
    for s in &strings {
        let chars: Vec<char> = digits_as_hash(s).chars().collect();
        for window in chars.windows(ECHO_RUN) {
            run.clear();
            run.extend(window);
            for (msg, h) in messages.iter().zip(&hashed) {
                assert!(
                    !h.contains(&run) || fixed.contains(&run),
                    "error message echoes the input {run:?}: {msg}"
                );
            }
        }
    }
}

fn fixed_wording() -> String {
    let mut all = PARSE_ERROR_SHAPES.join("\n");
    for e in [
        vault::shares::ShareError::Parameters,
        vault::shares::ShareError::Malformed,
        vault::shares::ShareError::Duplicate,
        vault::shares::ShareError::WrongThreshold,
    ] {
        all.push('\n');
        all.push_str(&e.to_string());
    }
    all
}

fn collect_strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                out.push(k.clone());
                collect_strings(x, out);
            }
        }
        _ => {}
    }
}

/// A token string decodes only when it is the canonical form of its bytes.
fn check_token(t: &str) {
    if let Some(bytes) = decode_token(t) {
        assert_eq!(encode_token(&bytes), t, "a token has two spellings");
    }
}

/// What parses is a whole number of seconds that a plain `PT…S` spelling
/// gives back.
fn check_duration(text: &str) {
    if let Ok(d) = parse_duration(text) {
        assert!(text.starts_with('P') && text.is_ascii(), "{text:?}");
        assert_eq!(d.subsec_nanos(), 0);
        if d.as_secs() < 1_000_000_000 {
            let plain = format!("PT{}S", d.as_secs());
            assert_eq!(parse_duration(&plain), Ok(d), "{text:?} vs {plain}");
        }
    }
}

/// The first byte picks the class (or, past the classes, another
/// validator); the rest, as UTF-8 (lossily), is the raw value.
pub fn normalizers(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let raw = String::from_utf8_lossy(rest);
    match Class::ALL.get(usize::from(pick % 16)) {
        Some(&class) => check_value(class, &raw),
        None => match pick % 16 {
            11 => check_duration(&raw),
            12 => check_token(&raw),
            13 => {
                let _ = valid_subject(&raw);
                let _ = Class::parse(&raw);
            }
            _ => Class::ALL.into_iter().for_each(|c| check_value(c, &raw)),
        },
    }
}

/// One raw value through its class: normalizing is idempotent (same value,
/// token form and flag the second time), the token form is a spelling of
/// the value with that same token form, and the mask never shows the whole
/// value (`text` is always `***`, so it is left out).
fn check_value(class: Class, raw: &str) {
    // Mask and generalize are total: any string, normalized or not.
    let _ = classes::mask(class, raw);
    let _ = classes::generalize(class, raw);
    let Ok(first) = classes::normalize(class, raw) else {
        return;
    };
    let value = first.value();
    let again = classes::normalize(class, value).unwrap_or_else(|e| {
        panic!("{class}: the normalized {value:?} (from {raw:?}) is refused: {e}")
    });
    assert_eq!(again.value(), value, "{class}: not idempotent on {raw:?}");
    assert_eq!(
        again.token_form(),
        first.token_form(),
        "{class}: token form changed on {raw:?}"
    );
    assert_eq!(
        again.flag(),
        first.flag(),
        "{class}: flag changed on {raw:?}"
    );
    if let Ok(t) = classes::normalize(class, first.token_form()) {
        assert_eq!(
            t.token_form(),
            first.token_form(),
            "{class}: the token form of {raw:?} has another token form"
        );
    }
    let masked = classes::mask(class, value);
    assert!(
        mask_hides(class, value, &masked),
        "{class}: the mask {masked:?} shows the whole value {value:?}"
    );
    let _ = classes::generalize(class, value);
}

/// Whether a mask hides something of the value it was made from.
fn mask_hides(class: Class, value: &str, masked: &str) -> bool {
    match class {
        Class::Text => masked == "***",
        // An IP mask is a network: `2001:db8:1::/48` is the mask of
        // `2001:db8:1::` as of every other address in it, so it says nothing
        // of the host part even when that part is zero.
        Class::Ip => masked.ends_with(".*") || masked.ends_with("/48"),
        // A value with stars of its own can look like its mask (`J*`,
        // `a***@x.cn`) without the mask telling which characters were there;
        // such values are left to the unit tests.
        _ if value.contains('*') => true,
        _ => !masked.contains(value),
    }
}

/// Reads the fuzz input as a stream of small decisions; past its end every
/// read is zero or empty, so any input is a complete one.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let got = self.bytes(8);
        b[..got.len()].copy_from_slice(got);
        u64::from_be_bytes(b)
    }

    /// A short string: a length byte, then that many bytes, lossily.
    fn string(&mut self) -> String {
        let n = usize::from(self.byte() % 40);
        String::from_utf8_lossy(self.bytes(n)).into_owned()
    }

    fn opt_string(&mut self) -> Option<String> {
        (self.byte() & 1 == 1).then(|| self.string())
    }
}

/// The stored-record codec and the audit trail's decoder and chain walk.
pub fn record_and_audit(data: &[u8]) {
    // Whatever decodes re-encodes to the very same bytes.
    if let Some(r) = Record::decode(data) {
        assert_eq!(r.encode(), data, "record codec is not canonical");
    }
    if let Some(h) = Head::decode(data) {
        assert_eq!(h.encode(), data, "head codec is not canonical");
    }
    // A tombstone is never a record, and its codec is canonical too.
    if let Some(t) = vault::schema::Tombstone::decode(data) {
        assert_eq!(t.encode(), data, "tombstone codec is not canonical");
        assert!(
            Record::decode(data).is_none(),
            "a tombstone read as a record"
        );
    }
    if let Ok(ev) = serde_json::from_slice::<AuditEvent>(data) {
        let again: AuditEvent = serde_json::from_slice(&serde_json::to_vec(&ev).unwrap()).unwrap();
        assert_eq!(again, ev, "audit event round trip");
    }
    let mut input = Input(data);
    let record = record_from(&mut input);
    let back = Record::decode(&record.encode()).expect("a record decodes");
    // An expiry at the epoch comes back 1 ms later (0 means "none"); the
    // record is just as dead.
    let expected = Record {
        expires_ms: record.expires_ms.map(|e| e.max(1)),
        ..record.clone()
    };
    assert_eq!(back, expected, "record round trip");
    for now in [0, 1, record.collected_ms, u64::MAX] {
        assert_eq!(back.is_live(now), record.is_live(now) || now == 0);
    }
    match input.byte() % 2 {
        0 => chain_round_trip(&mut input),
        _ => corrupt_store(&mut input),
    }
}

/// A record as the vault builds them: a policy purpose (at most 128 ASCII
/// characters, as config validation guarantees) and any expiry.
fn record_from(input: &mut Input<'_>) -> Record {
    let class = Class::ALL[usize::from(input.byte()) % Class::ALL.len()];
    let key_version = u32::try_from(input.u64() >> 32).unwrap_or(0);
    let collected_ms = input.u64();
    let expires_ms = (input.byte() & 1 == 1).then(|| input.u64());
    let purpose: String = input
        .string()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._:-".contains(*c))
        .collect();
    let n = usize::from(input.byte());
    let form = input.byte();
    // Format 3 (tagged, perhaps restricted), else 2 or 1.
    let tag = (form & 4 == 4).then(|| {
        let mut t = [0u8; vault::crypto::HEADER_TAG_BYTES];
        for b in &mut t {
            *b = input.byte();
        }
        t
    });
    let token_bound = tag.is_some() || form & 1 == 1;
    let restricted = tag.is_some() && form & 2 == 2;
    Record {
        class,
        key_version,
        collected_ms,
        expires_ms,
        purpose,
        ciphertext: input.bytes(n).to_vec(),
        token_bound,
        restricted,
        tag,
    }
}

/// Events built from the input are chained into a store: the chain
/// verifies, the query and the time window give them back; then one stored
/// byte is changed, and the walk must find exactly that event (or the bytes
/// still decode to the same event).
fn chain_round_trip(input: &mut Input<'_>) {
    let store = MemoryStore::new();
    let n = 1 + u64::from(input.byte() % 6);
    let mut head = Head::EMPTY;
    let mut batch = Batch::default();
    let mut events = Vec::new();
    let mut time_ms = input.u64() >> 16;
    for seq in 1..=n {
        time_ms += u64::from(input.byte() % 4);
        let mut ev = Draft {
            request_id: input.string(),
            caller: input.string(),
            action: "detokenize",
            purpose: input.opt_string(),
            subject: input.opt_string(),
            class: input.opt_string(),
            token: input.opt_string(),
            outcome: "released",
            reference: input.opt_string(),
            approval: input.opt_string(),
            requester: input.opt_string(),
            reason: input.opt_string(),
        }
        .into_event(seq, time_ms);
        let (h, bytes) = audit::chain(&head, &mut ev);
        batch.put(Space::Audit, audit::seq_key(seq), bytes);
        head = h;
        events.push(ev);
    }
    batch.put(Space::Meta, HEAD_KEY.to_vec(), head.encode());
    store.write(batch).unwrap();
    assert_eq!(
        audit::verify(&store).unwrap(),
        Verdict::Intact { events: n }
    );
    assert_eq!(
        audit::query(&store, None, 0, 1000, audit::Deadline::NEVER).unwrap(),
        events
    );
    let first = events[0].time_ms;
    let mut seen = Vec::new();
    let read = audit::for_each_in_window(&store, first, u64::MAX, audit::Deadline::NEVER, |e| {
        seen.push(e)
    })
    .unwrap();
    assert_eq!((read, &seen), (n, &events));
    let t = first + u64::from(input.byte() % 8);
    let want = events
        .iter()
        .find(|e| e.time_ms >= t)
        .map_or(n + 1, |e| e.seq);
    assert_eq!(audit::first_at_or_after(&store, t).unwrap(), want);

    // Tamper with one byte of one stored event.
    let victim = 1 + u64::from(input.byte()) % n;
    let key = audit::seq_key(victim);
    let mut bytes = store.get(Space::Audit, &key).unwrap().unwrap();
    let at = usize::from(input.byte()) * 256 + usize::from(input.byte());
    let at = at % bytes.len();
    bytes[at] ^= input.byte().max(1);
    let same = serde_json::from_slice::<AuditEvent>(&bytes)
        .is_ok_and(|e| e == events[usize::try_from(victim - 1).unwrap()]);
    let mut b = Batch::default();
    b.put(Space::Audit, key, bytes);
    store.write(b).unwrap();
    match audit::verify(&store).unwrap() {
        Verdict::Intact { events: got } => {
            assert!(same, "a changed event went unnoticed");
            assert_eq!(got, n);
        }
        Verdict::Broken { seq, .. } => {
            assert!(!same, "an unchanged event broke the chain");
            assert_eq!(seq, victim, "the walk blamed another event");
        }
    }
}

/// Arbitrary rows under the audit space and an arbitrary head: every reader
/// of the trail answers (an error is fine) instead of panicking or looping.
fn corrupt_store(input: &mut Input<'_>) {
    let store = MemoryStore::new();
    let mut batch = Batch::default();
    if input.byte() & 1 == 1 {
        let n = usize::from(input.byte() % 48);
        batch.put(Space::Meta, HEAD_KEY.to_vec(), input.bytes(n).to_vec());
    }
    for _ in 0..input.byte() % 5 {
        // Mostly well-formed keys, sometimes not 8 bytes long.
        let key = match input.byte() % 8 {
            0 => input.bytes(5).to_vec(),
            _ => input.u64().to_be_bytes().to_vec(),
        };
        let n = usize::from(input.byte());
        batch.put(Space::Audit, key, input.bytes(n).to_vec());
    }
    store.write(batch).unwrap();
    let _ = audit::verify(&store);
    let subject = input.string();
    let since = input.u64();
    let never = audit::Deadline::NEVER;
    let _ = audit::query(
        &store,
        Some(&subject),
        since,
        1 + usize::from(input.byte()),
        never,
    );
    let _ = audit::query(&store, None, since, 1 + usize::from(input.byte()), never);
    let _ = audit::newest(&store, None, 1 + usize::from(input.byte()), never, |e| {
        e.subject.as_deref() == Some(subject.as_str())
    });
    let _ = audit::first_at_or_after(&store, input.u64());
    let from = input.u64();
    let _ = audit::for_each_in_window(
        &store,
        from,
        from.saturating_add(input.u64()),
        never,
        |_| {},
    );
}

/// The detector over arbitrary text: findings sorted and non-overlapping,
/// byte offsets on character boundaries and in agreement with the character
/// offsets, and every span a value of its class.
pub fn detectors(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let findings = vault::detect::detect(&text);
    let mut prev_end = 0usize;
    for f in &findings {
        assert!(
            f.byte_start < f.byte_end && f.byte_end <= text.len(),
            "empty or out-of-bounds finding {}..{}",
            f.byte_start,
            f.byte_end
        );
        assert!(
            text.is_char_boundary(f.byte_start) && text.is_char_boundary(f.byte_end),
            "finding {}..{} splits a character",
            f.byte_start,
            f.byte_end
        );
        assert!(
            f.byte_start >= prev_end,
            "findings out of order or overlapping at {}",
            f.byte_start
        );
        prev_end = f.byte_end;
        let span = &text[f.byte_start..f.byte_end];
        assert_eq!(f.start, text[..f.byte_start].chars().count(), "char start");
        assert_eq!(f.end, f.start + span.chars().count(), "char end");
        assert!(
            classes::normalize(f.class, span).is_ok(),
            "{}: the span {span:?} does not normalize as its class",
            f.class
        );
    }
}
