//! The configuration file: TOML, every table closed to unknown keys, plus
//! `VAULT__SECTION__KEY` environment overrides. Invariant: [`Config::load`]
//! returns a configuration only after every problem has been looked for; a
//! bad one yields the full list, so an operator fixes them in one pass.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::classes::Class;
use crate::policy;
use crate::retention::parse_duration;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    pub server: Server,
    pub tls: Tls,
    pub keys: Keys,
    pub retention: RetentionConfig,
    #[serde(default)]
    pub callers: Vec<CallerConfig>,
    #[serde(default)]
    pub purposes: BTreeMap<String, PurposeConfig>,
    #[serde(default)]
    pub grants: Vec<GrantConfig>,
    /// Token style per class: `opaque` (the default) or `preserving`
    /// (phone, cn_resident_id, bank_card, uscc; see `crypto::fpe`).
    #[serde(default)]
    pub tokens: BTreeMap<String, crate::tokens::TokenStyle>,
    /// Named document schemas for `POST /v1/records`: JSON Pointer (a `*`
    /// segment matches every element or member) to class.
    #[serde(default)]
    pub schemas: BTreeMap<String, BTreeMap<String, String>>,
    /// Directory the relative paths above are resolved against (the config
    /// file's own directory); not read from the file.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Server {
    #[serde(default = "default_api")]
    pub api_addr: String,
    #[serde(default = "default_ops")]
    pub ops_addr: String,
    /// A listener for officers only (same TLS setup; any other certificate
    /// is closed after its handshake), with connection places of its own:
    /// what floods the API listener cannot keep a seal out. Unset: officers
    /// use the API listener.
    #[serde(default)]
    pub officer_addr: Option<String>,
    #[serde(default = "default_data")]
    pub data_dir: PathBuf,
    /// The shred log (see [`crate::shreds`]): where destroyed subject keys
    /// are recorded, outside the database. Unset: nothing is recorded, and
    /// a restored backup brings erased subjects back.
    #[serde(default)]
    pub shred_log: Option<PathBuf>,
    #[serde(default = "default_body")]
    pub max_body_bytes: usize,
    #[serde(default = "default_items")]
    pub max_items: usize,
    #[serde(default = "default_timeout")]
    pub request_timeout_ms: u64,
    /// How long after its head a request's body may take to arrive in full;
    /// unset: [`DEFAULT_BODY_TIMEOUT_MS`], or the request timeout if lower.
    #[serde(default)]
    pub body_timeout_ms: Option<u64>,
    #[serde(default = "default_handshake")]
    pub handshake_timeout_ms: u64,
    #[serde(default = "default_idle")]
    pub idle_timeout_ms: u64,
    #[serde(default = "default_concurrency")]
    pub max_concurrent_requests: usize,
    #[serde(default = "default_connections")]
    pub max_connections: usize,
    /// Requests one connection may have in flight at once: the HTTP/2
    /// stream limit it is told (HTTP/1.1 has one at a time).
    #[serde(default = "default_streams")]
    pub max_streams_per_connection: u32,
    #[serde(default)]
    pub log_format: LogFormat,
}

impl Server {
    /// The body deadline in force: as set, else the default capped by the
    /// request timeout (the request deadline covers the body too).
    pub fn body_timeout_ms(&self) -> u64 {
        self.body_timeout_ms
            .unwrap_or(DEFAULT_BODY_TIMEOUT_MS)
            .min(self.request_timeout_ms)
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

fn default_api() -> String {
    "127.0.0.1:8443".into()
}
fn default_ops() -> String {
    "127.0.0.1:9464".into()
}
fn default_data() -> PathBuf {
    PathBuf::from(".")
}
fn default_body() -> usize {
    1 << 20
}
fn default_items() -> usize {
    1000
}
fn default_timeout() -> u64 {
    10_000
}
/// The body deadline when none is set: half the default request timeout,
/// so that a body arriving at the last moment leaves time to handle it.
pub const DEFAULT_BODY_TIMEOUT_MS: u64 = 5_000;
fn default_handshake() -> u64 {
    5_000
}
fn default_idle() -> u64 {
    60_000
}
fn default_concurrency() -> usize {
    1024
}
fn default_connections() -> usize {
    4096
}
fn default_streams() -> u32 {
    32
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Tls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default = "default_tls_min")]
    pub min_version: String,
    /// Certificate revocation lists (PEM or DER) of the CAs that issue
    /// client certificates: a client certificate one of them revokes is
    /// refused at the handshake.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
}

fn default_tls_min() -> String {
    "1.3".into()
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Keys {
    /// Development: the root key in a file (64 hex characters).
    pub master_key_file: Option<PathBuf>,
    /// The root key in an environment variable.
    pub master_key_env: Option<String>,
    /// A command (program and arguments) that prints the root key: the hook
    /// for an HSM or KMS client.
    pub master_key_command: Option<Vec<String>>,
    /// Production: start sealed; officers unseal with the key shares that
    /// `vault operator init` printed.
    #[serde(default)]
    pub unseal_with_shares: bool,
    /// Rotate the data key this often (ISO 8601, e.g. "P90D"); off if unset.
    pub auto_rotate_period: Option<String>,
    /// Values re-encrypted per rewrap step, and the pause between steps.
    #[serde(default = "default_rewrap_batch")]
    pub rewrap_batch: usize,
    #[serde(default)]
    pub rewrap_pause_ms: u64,
    /// Subjects whose unwrapped key is kept in memory, with its derived
    /// value key (about 500 bytes each); 0 turns the cache off.
    #[serde(default = "default_subject_key_cache")]
    pub subject_key_cache: usize,
}

fn default_rewrap_batch() -> usize {
    1024
}

fn default_subject_key_cache() -> usize {
    crate::keys::SUBJECT_KEY_CACHE
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RetentionConfig {
    /// Longest retention a request may ask for.
    pub max: String,
    /// How long values live after the subject's account is closed.
    pub after_account_closed: String,
    /// Classes whose clock starts at collection, with their retention.
    #[serde(default)]
    pub from_collection: BTreeMap<String, String>,
    /// Minimum retention the law requires, per class, counted from
    /// collection. Erasure asked for within it restricts the subject (no
    /// release but under a legal exception) instead of deleting, until it
    /// ends (PIPL Art. 47).
    #[serde(default)]
    pub legal_minimum: BTreeMap<String, String>,
    /// What the sweeper does with a value whose time is up: `delete`, or
    /// `anonymize` (delete it, keeping only a count per non-identifying
    /// generalization for statistics; see `classes::generalize`).
    #[serde(default)]
    pub on_expiry: OnExpiry,
    /// How often the sweeper deletes values whose time is up (ms).
    #[serde(default = "default_sweep_ms")]
    pub sweep_interval_ms: u64,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnExpiry {
    #[default]
    Delete,
    Anonymize,
}

fn default_sweep_ms() -> u64 {
    1000
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CallerConfig {
    pub name: String,
    pub role: policy::Role,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PurposeConfig {
    #[serde(default)]
    pub description: String,
    /// Also spelt `requires_consent`, as the SPEC names the marking.
    #[serde(default, alias = "requires_consent")]
    pub requires_consent: bool,
    /// With `requires-consent`: consents to a privacy-policy version older
    /// than this one no longer count (PIPL Art. 14: a changed purpose needs
    /// new consent). Versions compare in natural order (runs of digits as
    /// numbers), e.g. "2024-01-01", "2024-1-5", "v1.10".
    pub consent_since: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GrantConfig {
    pub caller: String,
    pub purpose: String,
    #[serde(default)]
    pub collect: Vec<String>,
    #[serde(default)]
    pub full: Vec<String>,
    #[serde(default)]
    pub masked: Vec<String>,
}

/// Every problem found in a configuration.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

impl Config {
    /// Reads, overrides from the environment, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let (cfg, problems) = Self::load_unchecked(path)?;
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(problems))
        }
    }

    /// As [`Config::load`], but a file that parses comes back with its
    /// problems beside it (`check-config` looks further into such a file).
    pub fn load_unchecked(path: &Path) -> Result<(Config, Vec<String>), ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let vars = overrides_from_env();
        let cfg = Self::parse(&text, &base, &vars)?;
        let problems = cfg.problems();
        Ok((cfg, problems))
    }

    /// Parses `text` with the `VAULT__…` overrides among `env`, then validates.
    pub fn from_toml(
        text: &str,
        base: &Path,
        env: &[(String, String)],
    ) -> Result<Config, ConfigErrors> {
        let cfg = Self::parse(text, base, env)?;
        let problems = cfg.problems();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(problems))
        }
    }

    fn parse(text: &str, base: &Path, env: &[(String, String)]) -> Result<Config, ConfigErrors> {
        let mut value: toml::Table =
            toml::from_str(text).map_err(|e| ConfigErrors(vec![format!("TOML: {e}")]))?;
        apply_overrides(&mut value, env).map_err(|e| ConfigErrors(vec![e]))?;
        let mut cfg: Config = toml::Value::Table(value)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigErrors(vec![format!("config: {}", e.message())]))?;
        cfg.base_dir = base.to_path_buf();
        Ok(cfg)
    }

    /// A path from the file, relative to the file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.resolve(&self.server.data_dir)
    }

    /// Settings that are valid but weaken the vault, each a sentence for a
    /// warning (`check-config` prints them, `serve` logs them).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        let loopback = |addr: &str| {
            addr.parse::<std::net::SocketAddr>()
                .is_ok_and(|a| a.ip().is_loopback())
        };
        if !loopback(&self.server.ops_addr) {
            w.push(format!(
                "server.ops-addr {} is not loopback: /metrics, /healthz and /readyz answer anyone who reaches it, without authentication",
                self.server.ops_addr
            ));
        }
        if self.tls.min_version == "1.2" {
            w.push("tls.min-version 1.2: TLS 1.2 clients are accepted as well as 1.3".into());
        }
        w.extend(crate::tls::crl_coverage(self));
        for path in &self.tls.crls {
            if let Some(w_) = crate::tls::crl_stale(&self.resolve(path)) {
                w.push(w_);
            }
        }
        if self.server.shred_log.is_none() {
            w.push("server.shred-log is not set: a database restored from a backup taken before an erasure brings the erased subjects back".into());
        }
        w
    }

    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(log) = &self.server.shred_log {
            let log = self.resolve(log);
            let data = self.data_dir();
            let in_data = log.parent().is_some_and(|d| {
                d == data
                    || d.canonicalize()
                        .ok()
                        .is_some_and(|c| Some(c) == data.canonicalize().ok())
            });
            let name = log.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let engine = name.starts_with(|c: char| c.is_ascii_digit())
                || ["CURRENT", "LOCK", "IDENTITY"].contains(&name)
                || ["LOG", "MANIFEST-", "OPTIONS-"]
                    .iter()
                    .any(|p| name.starts_with(p));
            let others = [
                Some(&self.tls.ca),
                Some(&self.tls.cert),
                Some(&self.tls.key),
                self.keys.master_key_file.as_ref(),
            ];
            let taken = others
                .into_iter()
                .flatten()
                .chain(&self.tls.crls)
                .any(|o| self.resolve(o) == log);
            if log == data || name.is_empty() || (in_data && engine) || log.is_dir() || taken {
                p.push(format!(
                    "server.shred-log {}: must be a file of its own, not a directory, another file the configuration names, or a name the database uses in its directory",
                    log.display()
                ));
            } else if !log.parent().is_some_and(Path::is_dir) {
                p.push(format!(
                    "server.shred-log {}: its directory does not exist",
                    log.display()
                ));
            }
        }
        let officer = self.server.officer_addr.as_ref();
        if officer.is_some_and(|o| *o == self.server.api_addr || *o == self.server.ops_addr) {
            p.push("server.officer-addr: must differ from api-addr and ops-addr".into());
        }
        for (key, addr) in [
            ("server.api-addr", &self.server.api_addr),
            ("server.ops-addr", &self.server.ops_addr),
        ]
        .into_iter()
        .chain(officer.map(|a| ("server.officer-addr", a)))
        {
            if addr.parse::<SocketAddr>().is_err() {
                p.push(format!("{key}: not an address such as 127.0.0.1:8443"));
            }
        }
        // The names the vault itself writes into the audit log: a caller
        // so named could not be told from the vault's own work there.
        for c in &self.callers {
            if matches!(c.name.as_str(), "vault" | "operator") {
                p.push(format!(
                    "callers: the name {:?} is the vault's own in the audit log; give the caller another",
                    c.name
                ));
            }
        }
        if self.server.max_body_bytes == 0 || self.server.max_body_bytes > 64 << 20 {
            p.push("server.max-body-bytes: must be 1..=67108864".into());
        }
        if self.server.max_items == 0 {
            p.push("server.max-items: must be at least 1".into());
        }
        if self.server.max_concurrent_requests == 0 {
            p.push("server.max-concurrent-requests: must be at least 1".into());
        }
        if self.server.max_connections == 0 || self.server.max_connections > 1_000_000 {
            p.push("server.max-connections: must be 1..=1000000".into());
        }
        if !(1..=1024).contains(&self.server.max_streams_per_connection) {
            p.push("server.max-streams-per-connection: must be 1..=1024".into());
        }
        for (key, ms) in [
            ("server.request-timeout-ms", self.server.request_timeout_ms),
            (
                "server.handshake-timeout-ms",
                self.server.handshake_timeout_ms,
            ),
            ("server.idle-timeout-ms", self.server.idle_timeout_ms),
        ] {
            // Zero would cut every connection at once; a day is no bound.
            if ms == 0 || ms > 86_400_000 {
                p.push(format!("{key}: must be 1..=86400000"));
            }
        }
        if self
            .server
            .body_timeout_ms
            .is_some_and(|ms| ms == 0 || ms > self.server.request_timeout_ms)
        {
            p.push("server.body-timeout-ms: must be 1..=request-timeout-ms".into());
        }
        if !matches!(self.tls.min_version.as_str(), "1.2" | "1.3") {
            p.push("tls.min-version: must be \"1.3\" or \"1.2\"".into());
        }
        for (key, file) in [
            ("tls.ca", &self.tls.ca),
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
        ] {
            if !self.resolve(file).is_file() {
                p.push(format!(
                    "{key}: no such file {}",
                    self.resolve(file).display()
                ));
            }
        }
        let k = &self.keys;
        let sources = [
            k.master_key_file.is_some(),
            k.master_key_env.is_some(),
            k.master_key_command.is_some(),
            k.unseal_with_shares,
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            p.push(
                "keys: set exactly one of master-key-file, master-key-env, master-key-command, unseal-with-shares = true"
                    .into(),
            );
        }
        if let Some(var) = &k.master_key_env {
            // A VAULT__ name would be read as a configuration override
            // (and copied as one); `=` or NUL cannot be in a name.
            if var.is_empty() || var.starts_with("VAULT__") || var.contains(['=', '\0']) {
                p.push(
                    "keys.master-key-env: a variable name without `=`, not starting with VAULT__ (those are configuration overrides)"
                        .into(),
                );
            }
        }
        if let Some(f) = &k.master_key_file {
            if !self.resolve(f).is_file() {
                p.push(format!(
                    "keys.master-key-file: no such file {}",
                    self.resolve(f).display()
                ));
            }
        }
        if k.master_key_command.as_ref().is_some_and(|c| c.is_empty()) {
            p.push("keys.master-key-command: give the program and its arguments".into());
        }
        if k.auto_rotate_period
            .as_deref()
            .is_some_and(|d| parse_duration(d).is_err())
        {
            p.push("keys.auto-rotate-period: not an ISO 8601 duration such as P90D".into());
        }
        if k.rewrap_batch == 0 || k.rewrap_batch > 100_000 {
            p.push("keys.rewrap-batch: must be 1..=100000".into());
        }
        if k.subject_key_cache > 10_000_000 {
            p.push("keys.subject-key-cache: must be 0..=10000000".into());
        }
        for (key, d) in [
            ("retention.max", &self.retention.max),
            (
                "retention.after-account-closed",
                &self.retention.after_account_closed,
            ),
        ] {
            if parse_duration(d).is_err() {
                p.push(format!("{key}: not an ISO 8601 duration such as P3Y"));
            }
        }
        for (class, d) in &self.retention.legal_minimum {
            if Class::parse(class).is_none() {
                p.push(format!("retention.legal-minimum.{class}: unknown class"));
            }
            if parse_duration(d).is_err() {
                p.push(format!(
                    "retention.legal-minimum.{class}: not an ISO 8601 duration"
                ));
            }
        }
        for (class, d) in &self.retention.from_collection {
            if Class::parse(class).is_none() {
                p.push(format!("retention.from-collection.{class}: unknown class"));
            }
            if parse_duration(d).is_err() {
                p.push(format!(
                    "retention.from-collection.{class}: not an ISO 8601 duration"
                ));
            }
        }
        for (class, style) in &self.tokens {
            match Class::parse(class) {
                None => p.push(format!("tokens.{class}: unknown class")),
                Some(c) if !crate::tokens::style_supported(c, *style) => p.push(format!(
                    "tokens.{class}: format-preserving tokens exist only for phone, cn_resident_id, bank_card and uscc"
                )),
                Some(_) => {}
            }
        }
        for (name, mapping) in &self.schemas {
            if !policy::valid_name(name) {
                p.push(format!("schemas.{name}: must be 1-128 of [A-Za-z0-9._:-]"));
            }
            if mapping.is_empty() {
                p.push(format!("schemas.{name}: maps no pointer"));
            }
            for (pointer, class) in mapping {
                if crate::records::Pattern::parse(pointer).is_none() {
                    p.push(format!(
                        "schemas.{name}.\"{pointer}\": not a JSON Pointer such as /applicant/name"
                    ));
                }
                if Class::parse(class).is_none() {
                    p.push(format!(
                        "schemas.{name}.\"{pointer}\": unknown class {class}"
                    ));
                }
            }
        }
        p.extend(policy::problems(self));
        p
    }
}

/// The `VAULT__…` variables, the only ones the configuration reads. Every
/// other value is wiped as it is passed over: std copies the whole
/// environment when asked for it, a root key in `master-key-env`
/// included, and those copies would otherwise be freed unwiped.
fn overrides_from_env() -> Vec<(String, String)> {
    use std::os::unix::ffi::OsStringExt;
    use zeroize::Zeroize;
    let mut out = Vec::new();
    for (name, value) in std::env::vars_os() {
        let wanted = name.to_str().filter(|n| n.starts_with("VAULT__"));
        match (wanted, value.into_string()) {
            (Some(n), Ok(v)) => out.push((n.to_string(), v)),
            (_, Ok(mut v)) => v.zeroize(),
            (_, Err(v)) => v.into_vec().zeroize(),
        }
    }
    out
}

/// Applies `VAULT__SECTION__KEY=value` overrides: path segments lower-cased
/// with `_` turned into `-`; the value is read as a TOML value when it parses
/// as one, else taken as a string.
fn apply_overrides(table: &mut toml::Table, env: &[(String, String)]) -> Result<(), String> {
    for (name, raw) in env {
        let Some(path) = name.strip_prefix("VAULT__") else {
            continue;
        };
        let keys: Vec<&str> = path.split("__").collect();
        let Some((last, parents)) = keys.split_last() else {
            continue;
        };
        let mut cur = &mut *table;
        let mut at: Vec<String> = Vec::new();
        for k in parents {
            let k = key_in(cur, k, names_in(&at));
            at.push(k.clone());
            let entry = cur
                .entry(k.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cur = entry
                .as_table_mut()
                .ok_or_else(|| format!("{name}: {k} is not a table"))?;
        }
        let last = key_in(cur, last, names_in(&at));
        let parsed = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"));
        // Where the file has a string, the override is that string as
        // written (`1.2` stays "1.2", a date stays a date's text).
        let value = match (cur.get(&last), parsed) {
            (Some(toml::Value::String(_)), _) | (_, None) => toml::Value::String(raw.clone()),
            (_, Some(v)) => v,
        };
        cur.insert(last, value);
    }
    Ok(())
}

/// Whether the table at `path` is keyed by names (purposes, classes,
/// schemas) rather than settings.
fn names_in(path: &[String]) -> bool {
    matches!(
        path,
        [a] if a == "purposes" || a == "tokens" || a == "schemas"
    ) || matches!(
        path,
        [a, b] if a == "retention" && (b == "from-collection" || b == "legal-minimum")
    )
}

/// The key of `table` an override's path segment names: settings are
/// kebab-case (`MAX_ITEMS` is `max-items`), but names (a purpose such as
/// `respond_to_request`, a class such as `cn_resident_id`) keep their
/// underscores; an existing key of either form wins, else the form the
/// table is keyed by (`names`: purposes, classes, schemas).
fn key_in(table: &toml::Table, segment: &str, names: bool) -> String {
    let snake = segment.to_ascii_lowercase();
    let kebab = snake.replace('_', "-");
    if table.contains_key(&kebab) {
        kebab
    } else if table.contains_key(&snake) || names {
        snake
    } else {
        kebab
    }
}

#[cfg(test)]
mod tests;
