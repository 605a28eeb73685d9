//! Counters read from a registry's Prometheus text exposition (`GET /metrics`).

use http::{Method, StatusCode};

use crate::blob::ReqBody;
use crate::client::{Conn, collect};

/// Fetches the text of `GET /metrics`.
pub async fn scrape(conn: &mut Conn) -> Result<String, String> {
    let resp = conn
        .expect(Method::GET, "/metrics", &[], ReqBody::Empty, StatusCode::OK)
        .await?;
    let body = collect(resp.into_body()).await?;
    String::from_utf8(body.to_vec()).map_err(|_| "GET /metrics: not UTF-8".to_string())
}

/// The sum of every sample of metric `name` whose labels include all of `want` (other labels may
/// differ, so `want = []` sums the whole family). `None` when the text has neither a sample nor a
/// `# TYPE` line of `name`: the metric is unknown there, which is not the same as zero (registries
/// often leave out series that never counted anything).
pub fn sum(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let mut known = false;
    let mut total = 0.0;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            known |= rest.split_whitespace().next() == Some(name);
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let Some(s) = sample(line) else {
            continue;
        };
        if s.name != name {
            continue;
        }
        known = true;
        if want
            .iter()
            .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        {
            total += s.value;
        }
    }
    known.then_some(total)
}

/// One sample of a metric.
struct Sample<'a> {
    /// Metric name.
    name: &'a str,
    /// Label names and (unescaped) values.
    labels: Vec<(&'a str, String)>,
    /// The value.
    value: f64,
}

/// Parses a sample line: `name{k="v",...} value [timestamp]` or `name value [timestamp]`.
fn sample(line: &str) -> Option<Sample<'_>> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let (name, mut rest) = line.split_at(name_end);
    let mut labels = Vec::new();
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            inner = inner.trim_start_matches([',', ' ']);
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after_key) = inner.split_once('=')?;
            let (value, after_value) = quoted(after_key.strip_prefix('"')?)?;
            labels.push((key.trim(), value));
            inner = after_value;
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample { name, labels, value })
}

/// A label value up to its closing quote, unescaped, and what follows the quote.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP berth_http_requests_total HTTP requests by route kind, method and status.
# TYPE berth_http_requests_total counter
berth_http_requests_total{route=\"blob\",method=\"GET\",status=\"200\"} 7
berth_http_requests_total{route=\"blob\",method=\"HEAD\",status=\"200\"} 3
berth_http_requests_total{route=\"blob\",method=\"GET\",status=\"404\"} 1
berth_http_requests_total{route=\"manifest\",method=\"GET\",status=\"200\"} 5
# TYPE berth_mirror_coalesced_total counter
berth_mirror_coalesced_total{upstream=\"up\"} 49
berth_mirror_coalesced_total{upstream=\"hub\"} 2
# TYPE berth_mirror_fills_in_progress gauge
berth_odd{note=\"a \\\"quoted\\\", value\",route=\"blob\"} 2.5 1700000000
berth_plain 11
";

    #[test]
    fn sums_matching_samples() {
        let blob_get_200 = [("route", "blob"), ("method", "GET"), ("status", "200")];
        assert_eq!(sum(TEXT, "berth_http_requests_total", &blob_get_200), Some(7.0));
        assert_eq!(
            sum(
                TEXT,
                "berth_http_requests_total",
                &[("route", "blob"), ("method", "GET")]
            ),
            Some(8.0)
        );
        assert_eq!(sum(TEXT, "berth_mirror_coalesced_total", &[]), Some(51.0));
        assert_eq!(
            sum(TEXT, "berth_mirror_coalesced_total", &[("upstream", "up")]),
            Some(49.0)
        );
        assert_eq!(sum(TEXT, "berth_odd", &[("route", "blob")]), Some(2.5));
        assert_eq!(sum(TEXT, "berth_odd", &[("note", "a \"quoted\", value")]), Some(2.5));
        assert_eq!(sum(TEXT, "berth_plain", &[]), Some(11.0));
    }

    #[test]
    fn declared_but_empty_is_zero_and_unknown_is_none() {
        assert_eq!(sum(TEXT, "berth_mirror_fills_in_progress", &[]), Some(0.0));
        assert_eq!(sum(TEXT, "berth_http_requests_total", &[("status", "500")]), Some(0.0));
        assert_eq!(sum(TEXT, "berth_missing_total", &[]), None);
        assert_eq!(sum("garbage{ 1\n{}", "garbage", &[]), None);
        // A prefix of a name is another metric.
        assert_eq!(sum(TEXT, "berth_http_requests", &[]), None);
    }
}
