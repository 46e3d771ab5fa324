//! The JSON on the wire, shared by the server and every client, so the two can
//! never drift apart. Requests refuse unknown fields: a misspelt field is a bug
//! in the caller that must surface, not a silently ignored option. Responses
//! accept them: a field a newer vault adds to an answer must not break the
//! clients already deployed (the server only ever reads responses back from
//! its own sealed rows, which nobody else can write).

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

/// Wipes the named plaintext fields of a wire type when it is dropped: the
/// values collected, released, exported or corrected, deidentified and
/// reidentified texts, records, key shares. A field is taken out with
/// `std::mem::take` (leaving the owner to wipe nothing) only where its new
/// owner wipes it in turn.
macro_rules! wipe_on_drop {
    ($t:ty: $($field:ident),+) => {
        impl Drop for $t {
            fn drop(&mut self) {
                $(self.$field.wipe();)+
            }
        }
    };
}

/// What a plaintext field can be, wiped in place.
trait Wipe {
    fn wipe(&mut self);
}

impl Wipe for String {
    fn wipe(&mut self) {
        self.zeroize();
    }
}

impl Wipe for Option<String> {
    fn wipe(&mut self) {
        if let Some(s) = self {
            s.zeroize();
        }
    }
}

/// Every string in a JSON document (keys included, which can be data too);
/// numbers are not: serde_json keeps them in an enum of plain integers.
impl Wipe for serde_json::Value {
    fn wipe(&mut self) {
        match self {
            serde_json::Value::String(s) => s.zeroize(),
            serde_json::Value::Array(a) => a.iter_mut().for_each(Wipe::wipe),
            // Keys cannot be changed inside the map: take each entry out.
            serde_json::Value::Object(o) => {
                for (mut k, mut v) in std::mem::take(o) {
                    k.zeroize();
                    v.wipe();
                }
            }
            _ => {}
        }
    }
}

/// One value to tokenize: its class and the raw value as collected.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Field {
    pub class: String,
    pub value: String,
}

wipe_on_drop!(Field: value);

impl std::fmt::Debug for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The value is PII: never let it reach a log through Debug.
        f.debug_struct("Field")
            .field("class", &self.class)
            .field("value", &"[REDACTED]")
            .finish()
    }
}

/// `POST /v1/tokenize`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    pub subject: String,
    pub purpose: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
    pub fields: Vec<Field>,
}

/// One token, in request order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenOut {
    pub class: String,
    pub token: String,
    /// Set when the value was accepted although a checksum failed
    /// (early USCC pilot codes, old bank cards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizeResponse {
    pub tokens: Vec<TokenOut>,
}

/// How much of a value the caller asks to see.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reveal {
    #[default]
    Full,
    Masked,
}

/// The legal basis of a disclosure under one of the eight legal exceptions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegalBasis {
    pub reference: String,
    pub approval: String,
}

/// `POST /v1/detokenize`. `purpose` is optional on the wire so that its absence
/// gets the spec's own `purpose_required` rather than a generic parse error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetokenizeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    pub tokens: Vec<String>,
    #[serde(default)]
    pub reveal: Reveal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legal_basis: Option<LegalBasis>,
}

/// What happened to one token of a detokenize request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Denied,
    Gone,
    Unknown,
}

/// One entry of a detokenize answer, in request order.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueOut {
    pub token: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "is_false")]
    pub masked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

wipe_on_drop!(ValueOut: value);

impl std::fmt::Debug for ValueOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValueOut")
            .field("token", &self.token)
            .field("status", &self.status)
            .field("masked", &self.masked)
            .field("class", &self.class)
            .field("value", &self.value.as_ref().map(|_| "[REDACTED]"))
            .field("reason", &self.reason)
            .finish()
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetokenizeResponse {
    pub values: Vec<ValueOut>,
}

/// The body of every error answer: `{"error":{"code":..,"message":..}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    /// Index of the offending field, for `invalid_value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<usize>,
    /// JSON Pointer of the offending leaf, for `POST /v1/records`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
}

/// One event of the audit trail, as `GET /v1/audit` returns it. It never holds
/// a value: only who asked, for what, about which token, and what came of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub seq: u64,
    /// Unix time in milliseconds.
    pub time_ms: u64,
    pub request_id: String,
    pub caller: String,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// The legal-exception approval an event is of (its grant, revocation)
    /// or was released under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    /// For an approval's events (its grant, revocation): the caller it
    /// lets disclose, so the log alone shows whom an officer approved.
    /// (Absent from events written before it existed; an absent field
    /// leaves their hashes as they were.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<String>,
    /// For a release denied: why (`consent_required`, `restricted`,
    /// `purpose_not_allowed`, ...), as the caller was told. (Absent from
    /// events written before it existed.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Hex SHA-256 of the previous event's hash and this event's content.
    /// Last: the chain's sealing fills it in after the rest is serialized.
    pub hash: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditResponse {
    pub events: Vec<AuditEvent>,
}

/// One data-key version as `GET /v1/admin/keys` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVersion {
    pub version: u32,
    /// Unix time in milliseconds.
    pub created_ms: u64,
    /// `active` (new values), `decrypt_only`, or `refused` (below the
    /// minimum decryption version).
    pub state: String,
    /// Stored values still sealed under this version.
    pub values: u64,
}

/// `GET /v1/admin/keys` and the answer of every key operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysStatus {
    pub sealed: bool,
    /// While sealed: shares given so far and shares needed (0 when the
    /// vault does not unseal with shares).
    pub unseal_progress: usize,
    pub unseal_threshold: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_decryption_version: Option<u32>,
    #[serde(default)]
    pub versions: Vec<KeyVersion>,
    /// The `values` counts stopped at the deadline (a large vault): each is
    /// at least what it says.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub counts_partial: bool,
    /// A seal that could not be written to the database yet (storage
    /// failing): it holds, the vault keeps trying to record it, but a
    /// restart before it is recorded would start unsealed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub seal_unrecorded: bool,
}

/// `POST /v1/admin/unseal`: one key share (`unseal-with-shares`), or,
/// for a vault whose root key comes from a file or a command and that an
/// officer sealed, `resume` (two officers must ask).
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsealRequest {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub share: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resume: bool,
}

wipe_on_drop!(UnsealRequest: share);

impl std::fmt::Debug for UnsealRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnsealRequest")
            .field("share", &"[REDACTED]")
            .finish()
    }
}

/// `POST /v1/admin/keys/config`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfigRequest {
    pub min_decryption_version: u32,
}

/// `POST /v1/admin/keys/retire`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetireRequest {
    pub version: u32,
}

/// `GET` / `POST /v1/admin/keys/rewrap`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewrapStatus {
    /// `idle`, `running`, `done` or `failed`.
    pub state: String,
    /// The version values are being moved to.
    pub target_version: u32,
    /// Values looked at and values re-encrypted so far in this job.
    pub scanned: u64,
    pub rewrapped: u64,
    /// Values that needed moving but were not moved (changed outside the
    /// vault, their key version refused, their subject's key gone, or a
    /// format-1 value not matched to its token): they keep their version,
    /// which cannot be retired while they do.
    #[serde(default)]
    pub left_behind: u64,
    /// Whether the job was fenced before it scanned: from then on the
    /// vault refuses writes sealed under a version below its target, so a
    /// fenced job that leaves nothing behind proves that floor.
    #[serde(default)]
    pub fenced: bool,
    /// The version no stored value is below, as a finished rewrap proved
    /// it: `retire` of a version below it needs no count. Absent when no
    /// rewrap proved one (or the vault is sealed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proven_floor: Option<u32>,
}

/// One entry of the consent ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentEntry {
    /// `true` consent given, `false` withdrawn.
    pub given: bool,
    /// The privacy-policy version the subject agreed to (or withdrew from).
    pub policy_version: String,
    /// Unix time in milliseconds.
    pub time_ms: u64,
    /// The caller that recorded it.
    pub caller: String,
}

/// `PUT /v1/subjects/{subject}/consents/{purpose}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentRequest {
    pub policy_version: String,
}

/// The consent of one subject for one purpose, with its whole history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentState {
    pub subject: String,
    pub purpose: String,
    /// Whether the purpose may release this subject's data now.
    pub live: bool,
    pub history: Vec<ConsentEntry>,
}

/// `POST /v1/admin/approvals`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRequest {
    /// The caller that will make the disclosure (not the approver).
    pub requester: String,
    /// One of the eight legal-exception purposes.
    pub purpose: String,
    pub subjects: Vec<String>,
    /// The case or legal reference the disclosure is made under.
    pub reference: String,
    /// How long it lasts, ISO 8601 (e.g. "PT4H"), at most P30D.
    pub valid_for: String,
}

/// A granted, time-boxed approval of a legal-exception disclosure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub id: String,
    pub approver: String,
    pub requester: String,
    pub purpose: String,
    pub subjects: Vec<String>,
    pub reference: String,
    pub created_ms: u64,
    pub expires_ms: u64,
}

/// One live value in a subject's export.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectValue {
    pub class: String,
    pub token: String,
    pub value: String,
    /// The purpose it was collected for.
    pub purpose: String,
    pub collected_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
}

wipe_on_drop!(SubjectValue: value);

impl std::fmt::Debug for SubjectValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectValue")
            .field("class", &self.class)
            .field("token", &self.token)
            .field("purpose", &self.purpose)
            .field("collected_ms", &self.collected_ms)
            .field("expires_ms", &self.expires_ms)
            .field("value", &"[REDACTED]")
            .finish()
    }
}

/// `GET /v1/subjects/{subject}?purpose=data_subject_request`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectExport {
    pub subject: String,
    pub values: Vec<SubjectValue>,
    /// Live values the vault holds for the subject but could not open: a
    /// key version officers have retired for decryption, or a record that
    /// fails its integrity check. Listed so the export says it is not
    /// whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub withheld: Vec<WithheldValue>,
}

/// A value in a subject's export that could not be opened, and why
/// (`key_version_refused`, `integrity_failure`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WithheldValue {
    pub class: String,
    pub token: String,
    pub purpose: String,
    pub collected_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    pub reason: String,
}

/// One release of a subject's data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEntry {
    pub time_ms: u64,
    pub caller: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    pub outcome: String,
    /// For a denial: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /v1/subjects/{subject}/access-log`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessLog {
    pub subject: String,
    /// Oldest first: the newest releases, up to 10,000.
    pub entries: Vec<AccessEntry>,
    /// Older releases were left out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// When older entries were left out: the `before` that pages on to
    /// them (`?before=N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_before: Option<u64>,
}

/// `DELETE /v1/subjects/{subject}`: what the erasure did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErasureReceipt {
    pub subject: String,
    pub values_erased: u64,
    /// Unix time in milliseconds.
    pub time_ms: u64,
    /// SHA-256 (hex) over the subject, the time and the erased tokens; the
    /// same digest is the `reference` of the erasure's audit event.
    pub digest: String,
    /// Set when a legal retention period still runs (PIPL Art. 47): nothing
    /// was deleted yet; the subject is restricted (no release but under a
    /// legal exception) and erased when this time (Unix ms) comes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restricted_until: Option<u64>,
}

/// `POST /v1/subjects/{subject}/events`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectEvent {
    /// `account_closed`.
    pub event: String,
}

/// What a subject event or hold changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectStatus {
    pub subject: String,
    pub held: bool,
    /// Values whose expiry this request set or moved.
    pub values_affected: u64,
}

/// `PUT /v1/subjects/{subject}/tokens/{token}`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorrectionRequest {
    pub value: String,
}

wipe_on_drop!(CorrectionRequest: value);

impl std::fmt::Debug for CorrectionRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CorrectionRequest")
            .field("value", &"[REDACTED]")
            .finish()
    }
}

/// One subject whose plaintext was released in the window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposedSubject {
    pub subject: String,
    /// Releases of its data (full or masked) in the window.
    pub releases: u64,
    pub classes: Vec<String>,
    pub callers: Vec<String>,
    pub first_ms: u64,
    pub last_ms: u64,
}

/// `GET /v1/admin/incidents/exposure?from=&to=&caller=`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposureReport {
    pub from_ms: u64,
    pub to_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// Audit events read to answer (those in the window).
    pub events_read: u64,
    pub subjects: Vec<ExposedSubject>,
}

/// One counter kept by anonymization.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnonymizedCount {
    pub class: String,
    /// e.g. `province=35;birth_year=1990`; empty when the class keeps none.
    pub generalization: String,
    pub count: u64,
}

/// `GET /v1/admin/stats/anonymized`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnonymizedStats {
    pub entries: Vec<AnonymizedCount>,
}

/// What `deidentify` does with each piece of PII it finds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeidentifyMode {
    /// Store the value, put `[[class:token]]` in its place.
    #[default]
    Tokenize,
    /// Put the class's display mask in its place; store nothing.
    Mask,
    /// Put `[[class]]` in its place; store nothing.
    Redact,
}

/// `POST /v1/deidentify`. `subject` is required in `tokenize` mode.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeidentifyRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub purpose: String,
    #[serde(default)]
    pub mode: DeidentifyMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
    pub text: String,
}

wipe_on_drop!(DeidentifyRequest: text);

impl std::fmt::Debug for DeidentifyRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeidentifyRequest")
            .field("subject", &self.subject)
            .field("purpose", &self.purpose)
            .field("mode", &self.mode)
            .field("text", &"[REDACTED]")
            .finish()
    }
}

/// One piece of PII found in a text. Offsets are characters (Unicode scalar
/// values) into the text as submitted, end exclusive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub class: String,
    pub start: usize,
    pub end: usize,
    pub confidence: f32,
    /// A check character or Luhn digit confirmed it.
    pub validated: bool,
    /// `tokenized`, `masked` or `redacted` (a class this caller may not
    /// collect for the purpose is redacted even in `tokenize` mode).
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct DeidentifyResponse {
    pub text: String,
    pub findings: Vec<Finding>,
}

wipe_on_drop!(DeidentifyResponse: text);

impl std::fmt::Debug for DeidentifyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Masked text still carries the unmasked ends of values.
        f.debug_struct("DeidentifyResponse")
            .field("text", &"[REDACTED]")
            .field("findings", &self.findings)
            .finish()
    }
}

/// `POST /v1/reidentify`: put back the `[[class:token]]` markers of `text`
/// that the policy releases for `purpose`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReidentifyRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    pub text: String,
    #[serde(default)]
    pub reveal: Reveal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legal_basis: Option<LegalBasis>,
}

wipe_on_drop!(ReidentifyRequest: text);

impl std::fmt::Debug for ReidentifyRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReidentifyRequest")
            .field("purpose", &self.purpose)
            .field("reveal", &self.reveal)
            .field("text", &"[REDACTED]")
            .finish()
    }
}

/// What happened to one marker of a reidentify request, in text order;
/// offsets are characters into the submitted text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkerOut {
    pub start: usize,
    pub end: usize,
    pub token: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "is_false")]
    pub masked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReidentifyResponse {
    pub text: String,
    pub markers: Vec<MarkerOut>,
}

wipe_on_drop!(ReidentifyResponse: text);

impl std::fmt::Debug for ReidentifyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReidentifyResponse")
            .field("text", &"[REDACTED]")
            .field("markers", &self.markers)
            .finish()
    }
}

/// `POST /v1/records`: tokenize the leaves of `document` that `mapping`
/// (JSON Pointer to class; a `*` segment means every element or member) or
/// the configured `schema` names, and with `scan` deidentify every other
/// string leaf.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordsRequest {
    pub subject: String,
    pub purpose: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    #[serde(default)]
    pub scan: bool,
    #[serde(default)]
    pub mode: DeidentifyMode,
    pub document: serde_json::Value,
}

wipe_on_drop!(RecordsRequest: document);

impl std::fmt::Debug for RecordsRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordsRequest")
            .field("subject", &self.subject)
            .field("purpose", &self.purpose)
            .field("schema", &self.schema)
            .field("scan", &self.scan)
            .field("mode", &self.mode)
            .field("document", &"[REDACTED]")
            .finish()
    }
}

/// One replaced leaf of a records request: the concrete pointer, its class,
/// and its token (tokenize mode). Scanned leaves list one entry per finding
/// with character offsets into the leaf as submitted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordField {
    pub pointer: String,
    pub class: String,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<usize>,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordsResponse {
    pub document: serde_json::Value,
    pub fields: Vec<RecordField>,
}

wipe_on_drop!(RecordsResponse: document);

impl std::fmt::Debug for RecordsResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordsResponse")
            .field("document", &"[REDACTED]")
            .field("fields", &self.fields)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn wiping_a_document_reaches_every_string() {
        let mut doc = serde_json::json!(["x", {"name": "y", "list": ["z"]}, 7, null]);
        doc.wipe();
        // Strings are zeroed and emptied, objects lose their (zeroed) keys,
        // numbers stay.
        assert_eq!(doc, serde_json::json!(["", {}, 7, null]));
    }

    #[test]
    fn types_that_carry_plaintext_never_print_it() {
        let secret = "13800138000-secret";
        let shown = [
            format!(
                "{:?}",
                UnsealRequest {
                    share: secret.into(),
                    resume: false,
                }
            ),
            format!(
                "{:?}",
                CorrectionRequest {
                    value: secret.into()
                }
            ),
            format!(
                "{:?}",
                SubjectValue {
                    class: "phone".into(),
                    token: "tok".into(),
                    value: secret.into(),
                    purpose: "p".into(),
                    collected_ms: 1,
                    expires_ms: None,
                }
            ),
            format!(
                "{:?}",
                Field {
                    class: "phone".into(),
                    value: secret.into()
                }
            ),
        ];
        for s in shown {
            assert!(!s.contains(secret), "{s}");
            assert!(s.contains("[REDACTED]"), "{s}");
        }
    }

    #[test]
    fn answers_from_a_newer_vault_still_parse_but_requests_stay_strict() {
        // A field added to an answer later (as `left_behind` was) must not
        // break a deployed client.
        let status: RewrapStatus = serde_json::from_str(
            r#"{"state":"idle","target_version":2,"scanned":0,"rewrapped":0,"added_later":1}"#,
        )
        .unwrap();
        assert_eq!(status.target_version, 2);
        let keys: KeysStatus = serde_json::from_str(
            r#"{"sealed":false,"unseal_progress":0,"unseal_threshold":0,"active_version":1,"versions":[{"version":1,"created_ms":5,"state":"active","values":0,"new":true}],"new":[]}"#,
        )
        .unwrap();
        assert_eq!(keys.versions.len(), 1);
        // A misspelt field in a request is still the caller's bug.
        assert!(
            serde_json::from_str::<ConsentRequest>(r#"{"policy_version":"1","purpse":"x"}"#)
                .is_err()
        );
    }
}
