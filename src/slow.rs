//! The load tool's view of its slow requests in time. A tail made of one
//! connection's bad luck looks different from one where every connection
//! was late together (a stall of the server, or the backlog behind it):
//! grouping the slow requests into windows of time, and counting the
//! connections each window touched, tells the two apart.

use serde::Serialize;

/// One slow request: when it was due (or sent), microseconds from the
/// start of the run; its connection; its latency in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slow {
    pub at_us: u64,
    pub conn: u32,
    pub latency_us: u32,
}

/// Slow requests that came close together in time.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Window {
    /// When the first was due, milliseconds from the start of the run.
    pub start_ms: f64,
    /// From the first one's due time to the last one's.
    pub span_ms: f64,
    pub requests: u64,
    /// How many different connections had a slow request in it.
    pub connections: usize,
    pub max_latency_ms: f64,
}

/// Groups `slow` into windows: a request due within `gap_us` of the one
/// before it (in time order) joins that one's window. Windows come back in
/// time order.
pub fn windows(slow: &mut [Slow], gap_us: u64) -> Vec<Window> {
    slow.sort_unstable_by_key(|s| s.at_us);
    let mut out: Vec<Window> = Vec::new();
    let mut conns: Vec<u32> = Vec::new();
    let mut last_at = None;
    let mut first_at = 0u64;
    for s in slow.iter() {
        let joins = last_at.is_some_and(|l: u64| s.at_us.saturating_sub(l) <= gap_us);
        if !joins {
            close(&mut out, &mut conns);
            first_at = s.at_us;
            out.push(Window {
                start_ms: s.at_us as f64 / 1000.0,
                span_ms: 0.0,
                requests: 0,
                connections: 0,
                max_latency_ms: 0.0,
            });
        }
        if let Some(w) = out.last_mut() {
            w.requests += 1;
            w.span_ms = (s.at_us - first_at) as f64 / 1000.0;
            w.max_latency_ms = w.max_latency_ms.max(f64::from(s.latency_us) / 1000.0);
        }
        conns.push(s.conn);
        last_at = Some(s.at_us);
    }
    close(&mut out, &mut conns);
    out
}

/// Sets the last window's connection count from the connections gathered
/// for it, and starts the next gathering empty.
fn close(out: &mut [Window], conns: &mut Vec<u32>) {
    if let Some(w) = out.last_mut() {
        conns.sort_unstable();
        conns.dedup();
        w.connections = conns.len();
    }
    conns.clear();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn s(at_ms: u64, conn: u32, lat_ms: u32) -> Slow {
        Slow {
            at_us: at_ms * 1000,
            conn,
            latency_us: lat_ms * 1000,
        }
    }

    #[test]
    fn requests_close_in_time_share_a_window_and_count_their_connections() {
        // Out of order on purpose: workers report in their own order.
        let mut slow = vec![
            s(1003, 2, 12),
            s(1000, 0, 20),
            s(5000, 1, 9),
            s(1001, 1, 15),
            s(1004, 0, 11),
        ];
        let w = windows(&mut slow, 30_000);
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].requests, 4);
        assert_eq!(w[0].connections, 3);
        assert_eq!(w[0].start_ms, 1000.0);
        assert_eq!(w[0].span_ms, 4.0);
        assert_eq!(w[0].max_latency_ms, 20.0);
        assert_eq!(
            (w[1].requests, w[1].connections, w[1].start_ms),
            (1, 1, 5000.0)
        );
    }

    #[test]
    fn a_gap_longer_than_allowed_splits_windows() {
        let mut slow = vec![s(0, 0, 9), s(31, 0, 9), s(62, 1, 9)];
        assert_eq!(windows(&mut slow, 30_000).len(), 3);
        assert_eq!(windows(&mut slow, 31_000).len(), 1);
        assert!(windows(&mut [], 30_000).is_empty());
    }
}
