//! Prometheus metrics, named `vault_<subsystem>_<what>_<unit>`. Invariant:
//! label values come only from closed sets (routes, status classes, classes,
//! configured purposes, outcomes), never from ids, tokens or values.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReleaseLabels {
    purpose: String,
    outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    fields: Family<ClassLabels, Counter>,
    flagged: Family<ClassLabels, Counter>,
    releases: Family<ReleaseLabels, Counter>,
    audit_appends: Counter,
    audit_failures: Counter,
    store_write: Histogram,
    commit_jobs: Counter,
    in_flight: Gauge,
    sealed: Gauge,
    store_writable: Gauge,
    /// Public so the key and rewrap code can set them directly.
    pub key_active_version: Gauge,
    pub rewrap_values: Counter,
    pub rewrap_running: Gauge,
    pub retention_purged: Counter,
    pub retention_anonymized: Counter,
    pub shred_pending: Gauge,
    pub crls_stale: Gauge,
    pub crls_refused: Gauge,
    pub shred_append_failures: Counter,
    pub sweep_lag_seconds: Gauge,
    pub retention_due: Gauge,
    pub audit_head_seq: Gauge,
    subject_cache_hits: Counter,
    subject_cache_misses: Counter,
    subject_cache_entries: Gauge,
    pub connections_evicted: Counter,
    pub connections_refused: Counter,
    pub heads_refused: Counter,
    /// Set from the panic hook's count when rendered.
    panics: Counter,
    releases_stale: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~6.5 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let fields = Family::<ClassLabels, Counter>::default();
        let flagged = Family::<ClassLabels, Counter>::default();
        let releases = Family::<ReleaseLabels, Counter>::default();
        let audit_appends = Counter::default();
        let audit_failures = Counter::default();
        let store_write = latency_histogram();
        let commit_jobs = Counter::default();
        let in_flight = Gauge::default();
        let sealed = Gauge::default();
        let store_writable = Gauge::default();
        store_writable.set(1);
        let key_active_version = Gauge::default();
        let rewrap_values = Counter::default();
        let rewrap_running = Gauge::default();
        let retention_purged = Counter::default();
        let retention_anonymized = Counter::default();
        let shred_pending = Gauge::default();
        let crls_stale = Gauge::default();
        let crls_refused = Gauge::default();
        let shred_append_failures = Counter::default();
        let sweep_lag_seconds = Gauge::default();
        let retention_due = Gauge::default();
        let audit_head_seq = Gauge::default();
        let subject_cache_hits = Counter::default();
        let subject_cache_misses = Counter::default();
        let subject_cache_entries = Gauge::default();
        let connections_evicted = Counter::default();
        let connections_refused = Counter::default();
        let heads_refused = Counter::default();
        let panics = Counter::default();
        let releases_stale = Counter::default();
        registry.register(
            "vault_release_stale",
            "Releases (detokenize, reidentify, export) refused at their write because what they read changed meanwhile (an erasure, correction, restriction, withdrawal of consent, a seal) and read again",
            releases_stale.clone(),
        );
        registry.register(
            "vault_http_connections_evicted",
            "Evictable connections (in their TLS handshake, or naming no caller) closed to make room for a new one",
            connections_evicted.clone(),
        );
        registry.register(
            "vault_http_connections_refused",
            "Connections closed for want of a place: server.max-connections reached with none evictable, or the app places all taken (the rest are kept for officers)",
            connections_refused.clone(),
        );
        registry.register(
            "vault_http_heads_refused",
            "HTTP/1 requests refused before routing because their head did not parse (400) or was over the limits (431); each closes its connection and is not in vault_http_requests",
            heads_refused.clone(),
        );
        registry.register(
            "vault_panics",
            "Panics in any of the server's threads since it started (a request's is answered 500 internal); the log names where each happened, never its message. Any is a bug to report",
            panics.clone(),
        );
        registry.register(
            "vault_keys_subject_cache_hits",
            "Subject-key lookups served from the cache (keys.subject-key-cache)",
            subject_cache_hits.clone(),
        );
        registry.register(
            "vault_keys_subject_cache_misses",
            "Subject-key lookups that read and unwrapped the key from the store",
            subject_cache_misses.clone(),
        );
        registry.register(
            "vault_keys_subject_cache_entries",
            "Subjects whose unwrapped key is cached",
            subject_cache_entries.clone(),
        );
        registry.register(
            "vault_retention_due_values",
            "Values past their expiry and not yet swept, at the last sweep (counted up to one batch)",
            retention_due.clone(),
        );
        registry.register(
            "vault_audit_head_seq",
            "Sequence number of the audit chain's last event, as last logged as an anchor (it never goes down)",
            audit_head_seq.clone(),
        );
        registry.register(
            "vault_retention_anonymized_values",
            "Expired values anonymized (generalization counted, value deleted)",
            retention_anonymized.clone(),
        );
        registry.register(
            "vault_retention_sweep_lag_seconds",
            "How far past its expiry the oldest due value was at the last sweep",
            sweep_lag_seconds.clone(),
        );
        registry.register(
            "vault_shred_log_pending",
            "Destroyed subject keys the shred log does not name yet (a failed append; a restored database would bring them back)",
            shred_pending.clone(),
        );
        registry.register(
            "vault_tls_crls_stale",
            "Revocation lists in force that are past their next update (their CA has published newer ones, which may revoke more)",
            crls_stale.clone(),
        );
        registry.register(
            "vault_tls_crls_refused",
            "1 while a changed revocation list file is refused (it does not pass the checks, or is older than a list taken in: a replay?), the previous lists staying in force",
            crls_refused.clone(),
        );
        registry.register(
            "vault_shred_log_append_failures",
            "Appends to the shred log that failed",
            shred_append_failures.clone(),
        );
        registry.register(
            "vault_retention_purged_values",
            "Values deleted by the retention sweeper",
            retention_purged.clone(),
        );
        registry.register(
            "vault_keys_active_version",
            "Data key version new values are sealed under",
            key_active_version.clone(),
        );
        registry.register(
            "vault_rewrap_values",
            "Values re-encrypted under the active key version",
            rewrap_values.clone(),
        );
        registry.register(
            "vault_rewrap_running",
            "1 while a rewrap job runs",
            rewrap_running.clone(),
        );
        registry.register(
            "vault_http_requests",
            "API requests by route and status class",
            requests.clone(),
        );
        registry.register(
            "vault_http_request_duration_seconds",
            "API request latency by route",
            latency.clone(),
        );
        registry.register(
            "vault_http_in_flight_requests",
            "API requests being served",
            in_flight.clone(),
        );
        registry.register(
            "vault_tokenize_fields",
            "Fields tokenized, by class",
            fields.clone(),
        );
        registry.register(
            "vault_tokenize_flagged_fields",
            "Fields accepted with a failed checksum, by class",
            flagged.clone(),
        );
        registry.register(
            "vault_release_outcomes",
            "Detokenize outcomes by purpose and outcome",
            releases.clone(),
        );
        registry.register(
            "vault_audit_appends",
            "Audit events durably appended",
            audit_appends.clone(),
        );
        registry.register(
            "vault_audit_append_failures",
            "Audit events whose write failed",
            audit_failures.clone(),
        );
        registry.register(
            "vault_store_write_duration_seconds",
            "Durable batch write latency",
            store_write.clone(),
        );
        registry.register(
            "vault_store_commit_jobs",
            "Requests whose writes were group-committed",
            commit_jobs.clone(),
        );
        registry.register(
            "vault_sealed",
            "1 while the vault is sealed",
            sealed.clone(),
        );
        registry.register(
            "vault_store_writable",
            "1 while the last durable write succeeded, 0 after one failed until one succeeds",
            store_writable.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            fields,
            flagged,
            releases,
            audit_appends,
            audit_failures,
            store_write,
            commit_jobs,
            in_flight,
            sealed,
            store_writable,
            key_active_version,
            rewrap_values,
            rewrap_running,
            retention_purged,
            retention_anonymized,
            shred_pending,
            crls_stale,
            crls_refused,
            shred_append_failures,
            sweep_lag_seconds,
            retention_due,
            audit_head_seq,
            subject_cache_hits,
            subject_cache_misses,
            subject_cache_entries,
            connections_evicted,
            connections_refused,
            heads_refused,
            panics,
            releases_stale,
        }
    }

    /// A release read data that changed before its write (it reads again).
    pub fn release_stale(&self) {
        self.releases_stale.inc();
    }

    pub fn observe_request(&self, route: &'static str, status: u16, seconds: f64) {
        let status = match status {
            200..=299 => "2xx",
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => "other",
        };
        self.requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
        self.latency
            .get_or_create(&RouteLabels { route })
            .observe(seconds);
    }

    pub fn in_flight(&self) -> &Gauge {
        &self.in_flight
    }

    pub fn tokenized(&self, class: &'static str, n: u64, flagged: u64) {
        self.fields.get_or_create(&ClassLabels { class }).inc_by(n);
        if flagged > 0 {
            self.flagged
                .get_or_create(&ClassLabels { class })
                .inc_by(flagged);
        }
    }

    pub fn released(&self, purpose: &str, outcome: &'static str, n: u64) {
        self.releases
            .get_or_create(&ReleaseLabels {
                purpose: purpose.to_string(),
                outcome,
            })
            .inc_by(n);
    }

    pub fn audit_appended(&self, n: u64) {
        self.audit_appends.inc_by(n);
    }

    pub fn audit_failed(&self, n: u64) {
        self.audit_failures.inc_by(n);
    }

    pub fn observe_store_write(&self, seconds: f64, jobs: usize) {
        self.store_write.observe(seconds);
        self.commit_jobs.inc_by(u64::try_from(jobs).unwrap_or(0));
    }

    /// Whether the last store write succeeded, as the gauge says.
    pub fn store_writable(&self) -> bool {
        self.store_writable.get() != 0
    }

    pub fn set_store_writable(&self, writable: bool) {
        self.store_writable.set(i64::from(writable));
    }

    pub fn set_sealed(&self, sealed: bool) {
        self.sealed.set(i64::from(sealed));
    }

    /// Copies the subject-key cache's counts (kept by the cache itself,
    /// read at each scrape).
    pub fn set_subject_cache(&self, (hits, misses, entries): (u64, u64, usize)) {
        use std::sync::atomic::Ordering;
        self.subject_cache_hits
            .inner()
            .store(hits, Ordering::Relaxed);
        self.subject_cache_misses
            .inner()
            .store(misses, Ordering::Relaxed);
        self.subject_cache_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn render(&self) -> String {
        self.panics.inner().store(
            crate::hardening::panics(),
            std::sync::atomic::Ordering::Relaxed,
        );
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The Prometheus text format (0.0.4) of every metric, for scrapers
    /// that do not ask for OpenMetrics: see [`to_text_004`].
    pub fn render_text_004(&self) -> String {
        to_text_004(&self.render())
    }
}

/// OpenMetrics text as the Prometheus text format 0.0.4: a counter's
/// family is named as its samples are (`x_total`, where OpenMetrics names
/// it `x`), and the `# UNIT` and `# EOF` lines, which 0.0.4 does not
/// have, go. Samples are the same in both.
pub fn to_text_004(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            (counters.contains(name) && !name.ends_with("_total"))
                .then(|| format!("{p}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn renders_names_and_labels() {
        let m = Metrics::new();
        m.observe_request("tokenize", 200, 0.001);
        m.tokenized("phone", 3, 0);
        m.released("notification", "released", 2);
        m.audit_appended(2);
        let text = m.render();
        assert!(
            text.contains("vault_http_requests_total{route=\"tokenize\",status=\"2xx\"} 1"),
            "{text}"
        );
        assert!(text.contains("vault_tokenize_fields_total{class=\"phone\"} 3"));
        assert!(text.contains(
            "vault_release_outcomes_total{purpose=\"notification\",outcome=\"released\"} 2"
        ));
        assert!(text.contains("vault_audit_appends_total 2"));
        assert!(text.contains("vault_http_request_duration_seconds_bucket"));
        assert!(text.ends_with("# EOF\n"));
    }

    /// The Prometheus text format names a counter's family as its samples,
    /// and has no `# EOF` or `# UNIT`; everything else is as OpenMetrics
    /// has it.
    #[test]
    fn the_text_format_names_counter_families_as_their_samples() {
        let open = "# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests_total{a=\"1\"} 3\n# HELP g A gauge.\n# TYPE g gauge\n# UNIT g seconds\ng 1\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\n# EOF\n";
        assert_eq!(
            to_text_004(open),
            "# HELP x_requests_total Requests.\n# TYPE x_requests_total counter\nx_requests_total{a=\"1\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\n"
        );
        let m = Metrics::new();
        m.audit_appended(2);
        let text = m.render_text_004();
        assert!(
            text.contains(
                "# TYPE vault_audit_appends_total counter\nvault_audit_appends_total 2\n"
            ),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
    }
}
