//! The service's Prometheus metrics, kept in memory and written in the text exposition
//! format on the metrics listener. It owns the metric names and their labels; it does not
//! serve them (that is `mod.rs`) nor decide what is counted (the routes do).
//!
//! - `obscura_http_requests_total{route,status}` (counter)
//! - `obscura_http_request_duration_seconds{route}` (histogram)
//! - `obscura_stage_duration_seconds{stage}` (histogram; decode, detect, redact, encode)
//! - `obscura_regions_redacted_total{class}` (counter)
//! - `obscura_failures_total{reason}` (counter; the error codes)
//! - `obscura_in_flight` and `obscura_queued` (gauges: images being processed, and
//!   admitted requests waiting for a worker)

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

/// Upper bounds of the duration histograms' buckets, in seconds.
const BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bound, count) in BUCKETS.iter().zip(&mut self.counts) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// Every metric of one service.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    durations: Mutex<BTreeMap<String, Histogram>>,
    stages: Mutex<BTreeMap<&'static str, Histogram>>,
    regions: Mutex<BTreeMap<String, u64>>,
    failures: Mutex<BTreeMap<&'static str, u64>>,
    pub in_flight: AtomicI64,
    pub queued: AtomicI64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Metrics {
    pub fn request(&self, route: &str, status: u16, seconds: f64) {
        *lock(&self.requests).entry((route.to_string(), status)).or_default() += 1;
        lock(&self.durations).entry(route.to_string()).or_default().observe(seconds);
    }

    pub fn stage(&self, stage: &'static str, milliseconds: f64) {
        lock(&self.stages).entry(stage).or_default().observe(milliseconds / 1000.0);
    }

    pub fn regions(&self, class: &str, n: u64) {
        *lock(&self.regions).entry(class.to_string()).or_default() += n;
    }

    pub fn failure(&self, reason: &'static str) {
        *lock(&self.failures).entry(reason).or_default() += 1;
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP obscura_http_requests_total Requests served, by route and status.\n# TYPE obscura_http_requests_total counter\n");
        for ((route, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(out, "obscura_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}");
        }
        histograms(&mut out, "obscura_http_request_duration_seconds", "Request latency, by route.", "route", lock(&self.durations).iter().map(|(k, v)| (k.as_str(), v)));
        histograms(&mut out, "obscura_stage_duration_seconds", "Time per image in each stage.", "stage", lock(&self.stages).iter().map(|(k, v)| (*k, v)));
        out.push_str("# HELP obscura_regions_redacted_total Regions redacted, by class.\n# TYPE obscura_regions_redacted_total counter\n");
        for (class, n) in lock(&self.regions).iter() {
            let _ = writeln!(out, "obscura_regions_redacted_total{{class=\"{class}\"}} {n}");
        }
        out.push_str("# HELP obscura_failures_total Failed requests, by reason (the error code).\n# TYPE obscura_failures_total counter\n");
        for (reason, n) in lock(&self.failures).iter() {
            let _ = writeln!(out, "obscura_failures_total{{reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP obscura_in_flight Images being processed.\n# TYPE obscura_in_flight gauge\nobscura_in_flight {}", self.in_flight.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP obscura_queued Admitted requests waiting for a worker.\n# TYPE obscura_queued gauge\nobscura_queued {}", self.queued.load(Ordering::Relaxed));
        out
    }
}

fn histograms<'a>(out: &mut String, name: &str, help: &str, label: &str, items: impl Iterator<Item = (&'a str, &'a Histogram)>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (key, h) in items {
        for (bound, count) in BUCKETS.iter().zip(&h.counts) {
            let _ = writeln!(out, "{name}_bucket{{{label}=\"{key}\",le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{{label}=\"{key}\",le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum{{{label}=\"{key}\"}} {}", h.sum);
        let _ = writeln!(out, "{name}_count{{{label}=\"{key}\"}} {}", h.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_counters_add_up() {
        let m = Metrics::default();
        m.request("/v1/anonymise", 200, 0.02);
        m.request("/v1/anonymise", 200, 3.0);
        m.request("/v1/anonymise", 415, 0.001);
        let text = m.render();
        assert!(text.contains("obscura_http_requests_total{route=\"/v1/anonymise\",status=\"200\"} 2"), "{text}");
        assert!(text.contains("obscura_http_request_duration_seconds_bucket{route=\"/v1/anonymise\",le=\"0.025\"} 2"), "{text}");
        assert!(text.contains("obscura_http_request_duration_seconds_bucket{route=\"/v1/anonymise\",le=\"+Inf\"} 3"), "{text}");
        assert!(text.contains("obscura_http_request_duration_seconds_count{route=\"/v1/anonymise\"} 3"), "{text}");
    }
}
