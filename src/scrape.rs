//! What the load tool reads from the vault's `/metrics` around a run: how
//! many requests the vault counted, and its own histograms of request and
//! store-write durations. Set beside the tool's latencies, they say where a
//! tail comes from: a p99 the vault's histogram also shows is the vault's;
//! one it does not is in the connections (an open loop queues requests
//! behind a slow answer on the same connection) or the host.

/// A histogram as Prometheus writes it: cumulative counts per upper bound
/// (`le`, seconds), ascending, the last one `+Inf`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Buckets(pub Vec<(f64, u64)>);

impl Buckets {
    /// Adds `count` to the bucket `le` (label sets of one histogram family
    /// add up).
    fn add(&mut self, le: f64, count: u64) {
        match self.0.iter_mut().find(|(b, _)| *b == le) {
            Some((_, c)) => *c += count,
            None => {
                self.0.push((le, count));
                self.0.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
        }
    }

    /// Every observation.
    pub fn total(&self) -> u64 {
        self.0.last().map_or(0, |(_, c)| *c)
    }

    /// Observations over `le` seconds (`le` one of the bounds).
    pub fn over(&self, le: f64) -> u64 {
        let within = self.0.iter().find(|(b, _)| *b == le).map_or(0, |(_, c)| *c);
        self.total().saturating_sub(within)
    }

    /// The smallest bound that at least the share `q` of observations are
    /// within: an upper bound of the `q` quantile. `None` without any.
    pub fn quantile_at_most(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let need = (q * total as f64).ceil() as u64;
        self.0.iter().find(|(_, c)| *c >= need).map(|(b, _)| *b)
    }

    /// These counts less `before`'s (the run between two scrapes).
    pub fn since(&self, before: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|(le, c)| {
                    let b = before
                        .0
                        .iter()
                        .find(|(l, _)| l == le)
                        .map_or(0, |(_, c)| *c);
                    (*le, c.saturating_sub(b))
                })
                .collect(),
        )
    }
}

/// One scrape of `/metrics`, the parts the load tool uses.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scrape {
    /// `vault_http_requests_total`, every route and status.
    pub requests: u64,
    /// `vault_http_request_duration_seconds`, every route.
    pub request_seconds: Buckets,
    /// The sum of `request_seconds`' observations, in seconds.
    pub request_seconds_sum: f64,
    /// `vault_store_write_duration_seconds`: one observation per group
    /// commit.
    pub write_seconds: Buckets,
    /// The sum of `write_seconds`' observations, in seconds.
    pub write_seconds_sum: f64,
    /// `vault_store_commit_jobs_total`: requests whose writes the group
    /// commits carried.
    pub commit_jobs: u64,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let mut s = Scrape::default();
        for line in text.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let count = value as u64;
            if series.starts_with("vault_http_requests_total{") {
                s.requests += count;
            } else if let Some(le) = bucket_of(series, "vault_http_request_duration_seconds") {
                s.request_seconds.add(le, count);
            } else if let Some(le) = bucket_of(series, "vault_store_write_duration_seconds") {
                s.write_seconds.add(le, count);
            } else if is_series(series, "vault_http_request_duration_seconds_sum") {
                s.request_seconds_sum += value;
            } else if is_series(series, "vault_store_write_duration_seconds_sum") {
                s.write_seconds_sum += value;
            } else if is_series(series, "vault_store_commit_jobs_total") {
                s.commit_jobs += count;
            }
        }
        s
    }

    /// What happened between `before` and this scrape.
    pub fn since(&self, before: &Scrape) -> Scrape {
        Scrape {
            requests: self.requests.saturating_sub(before.requests),
            request_seconds: self.request_seconds.since(&before.request_seconds),
            write_seconds: self.write_seconds.since(&before.write_seconds),
            write_seconds_sum: (self.write_seconds_sum - before.write_seconds_sum).max(0.0),
            request_seconds_sum: (self.request_seconds_sum - before.request_seconds_sum).max(0.0),
            commit_jobs: self.commit_jobs.saturating_sub(before.commit_jobs),
        }
    }

    /// Mean seconds per request inside the vault; `None` without requests.
    pub fn request_mean(&self) -> Option<f64> {
        mean(self.request_seconds_sum, self.request_seconds.total())
    }

    /// Mean seconds per store write (group commit); `None` without writes.
    pub fn write_mean(&self) -> Option<f64> {
        mean(self.write_seconds_sum, self.write_seconds.total())
    }

    /// Requests carried per store write; `None` without writes.
    pub fn jobs_per_write(&self) -> Option<f64> {
        mean(self.commit_jobs as f64, self.write_seconds.total())
    }
}

fn mean(sum: f64, n: u64) -> Option<f64> {
    (n > 0).then(|| sum / n as f64)
}

/// Whether `series` is `name`, bare or with labels.
fn is_series(series: &str, name: &str) -> bool {
    series
        .strip_prefix(name)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
}

/// The `le` of a `<family>_bucket{...}` series.
fn bucket_of(series: &str, family: &str) -> Option<f64> {
    let labels = series.strip_prefix(family)?.strip_prefix("_bucket{")?;
    let le = labels.split("le=\"").nth(1)?.split('"').next()?;
    match le {
        "+Inf" => Some(f64::INFINITY),
        n => n.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::float_cmp)]
    use super::*;

    const BEFORE: &str = r#"# HELP vault_http_requests_total API requests
vault_http_requests_total{route="tokenize",status="2xx"} 100
vault_http_requests_total{route="other",status="4xx"} 2
vault_http_request_duration_seconds_bucket{le="0.0016",route="tokenize"} 90
vault_http_request_duration_seconds_bucket{le="0.0064",route="tokenize"} 99
vault_http_request_duration_seconds_bucket{le="+Inf",route="tokenize"} 100
vault_http_request_duration_seconds_bucket{le="0.0016",route="other"} 2
vault_http_request_duration_seconds_bucket{le="0.0064",route="other"} 2
vault_http_request_duration_seconds_bucket{le="+Inf",route="other"} 2
vault_http_request_duration_seconds_sum{route="tokenize"} 0.1
vault_http_request_duration_seconds_sum{route="other"} 0.001
vault_http_request_duration_seconds_sum_not_this 7
vault_store_write_duration_seconds_bucket{le="0.0256"} 10
vault_store_write_duration_seconds_bucket{le="+Inf"} 10
vault_store_write_duration_seconds_sum 0.005
vault_store_write_duration_seconds_count 10
vault_store_commit_jobs_total 40
"#;

    #[test]
    fn label_sets_add_up_and_a_run_is_the_difference() {
        let before = Scrape::parse(BEFORE);
        assert_eq!(before.requests, 102);
        assert_eq!(
            before.request_seconds,
            Buckets(vec![(0.0016, 92), (0.0064, 101), (f64::INFINITY, 102)])
        );
        let after = Scrape::parse(
            &BEFORE
                .replace("} 100\n", "} 1100\n")
                .replace("\"tokenize\"} 90", "\"tokenize\"} 1080")
                .replace("\"tokenize\"} 99", "\"tokenize\"} 1095")
                .replace("le=\"+Inf\"} 10\n", "le=\"+Inf\"} 13\n")
                .replace("\"tokenize\"} 0.1\n", "\"tokenize\"} 1.101\n")
                .replace("seconds_sum 0.005\n", "seconds_sum 0.0065\n")
                .replace("jobs_total 40\n", "jobs_total 1040\n"),
        );
        let run = after.since(&before);
        assert_eq!(run.requests, 1000);
        assert_eq!(run.request_seconds.total(), 1000);
        assert_eq!(run.request_seconds.over(0.0064), 4);
        // 990 within 1.6 ms: the p99 is at most that; the p99.9 is not.
        assert_eq!(run.request_seconds.quantile_at_most(0.99), Some(0.0016));
        assert_eq!(
            run.request_seconds.quantile_at_most(0.999),
            Some(f64::INFINITY)
        );
        assert_eq!(run.write_seconds.total(), 3);
        assert_eq!(run.write_seconds.over(0.0256), 3);
        assert!((before.request_seconds_sum - 0.101).abs() < 1e-12);
        assert!((run.request_mean().unwrap() - 0.001_001).abs() < 1e-9);
        assert!((run.write_mean().unwrap() - 0.0005).abs() < 1e-9);
        assert!((run.jobs_per_write().unwrap() - 1000.0 / 3.0).abs() < 1e-9);
        assert_eq!(Scrape::default().request_mean(), None);
        assert_eq!(Scrape::default().jobs_per_write(), None);
        assert_eq!(
            Scrape::default().request_seconds.quantile_at_most(0.99),
            None
        );
    }
}
