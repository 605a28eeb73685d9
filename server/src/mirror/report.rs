//! The pull-through cache's counters in the Prometheus text format, one series per upstream.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::{Mirrors, Stats};

type Counter = fn(&Stats) -> &AtomicU64;

/// (name, help, counter) of every per-upstream counter the mirror keeps itself.
const COUNTERS: &[(&str, &str, Counter)] = &[
    (
        "berth_mirror_hits_total",
        "Manifests and blobs of mirrored repositories served from what is stored.",
        |s| &s.hits,
    ),
    (
        "berth_mirror_misses_total",
        "Manifests and blobs fetched from the upstream for a client.",
        |s| &s.misses,
    ),
    (
        "berth_mirror_coalesced_total",
        "Blob requests fed from a fill another request started (no download of their own).",
        |s| &s.coalesced,
    ),
    (
        "berth_mirror_peer_streams_total",
        "Blob requests fed from another replica's download in progress, streamed from it (http.peerurl).",
        |s| &s.from_peers,
    ),
    (
        "berth_mirror_linked_total",
        "Blobs linked from another repository after the upstream confirmed them (no download).",
        |s| &s.linked,
    ),
    (
        "berth_mirror_stale_total",
        "Tags served past their TTL while the upstream was asked in the background.",
        |s| &s.stale,
    ),
    (
        "berth_mirror_stale_errors_total",
        "Background tag checks that failed: the cached manifest stayed (stale-if-error).",
        |s| &s.stale_errors,
    ),
    (
        "berth_mirror_tag_updates_total",
        "Tags found moved upstream by a background check.",
        |s| &s.tag_updates,
    ),
    (
        "berth_mirror_fill_errors_total",
        "Blob fills that stored nothing (upstream failures and mismatches).",
        |s| &s.fill_errors,
    ),
    (
        "berth_mirror_digest_mismatches_total",
        "Blob fills whose bytes did not match the digest (nothing stored, readers cut off).",
        |s| &s.mismatches,
    ),
    (
        "berth_mirror_filled_bytes_total",
        "Bytes of blobs stored by fills.",
        |s| &s.filled_bytes,
    ),
    (
        "berth_mirror_evicted_images_total",
        "Images evicted to keep the upstream's content within its budget.",
        |s| &s.evicted_images,
    ),
    (
        "berth_mirror_evicted_bytes_total",
        "Bytes of the blob links those evictions removed.",
        |s| &s.evicted_bytes,
    ),
    (
        "berth_mirror_resumed_total",
        "Interrupted blob downloads resumed with a Range request.",
        |s| &s.resumed,
    ),
];

/// Append the counters of every upstream to `o`.
pub fn render(m: &Mirrors, o: &mut String) {
    let head = |o: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    for (name, help, counter) in COUNTERS {
        head(o, name, "counter", help);
        for e in m.entries() {
            let _ = writeln!(
                o,
                "{name}{{upstream=\"{}\"}} {}",
                e.config.name,
                counter(&e.stats).load(Relaxed)
            );
        }
    }
    type Field = fn(&super::upstream::UpstreamStats) -> u64;
    let upstream: [(&str, &str, Field); 5] = [
        (
            "berth_mirror_upstream_requests_total",
            "HTTP requests sent to the upstream (token requests and redirects included).",
            |s| s.requests,
        ),
        (
            "berth_mirror_upstream_token_fetches_total",
            "Token requests to the upstream's token service.",
            |s| s.token_fetches,
        ),
        (
            "berth_mirror_upstream_bytes_total",
            "Manifest and blob bytes received from the upstream.",
            |s| s.bytes_in,
        ),
        (
            "berth_mirror_upstream_errors_total",
            "Upstream calls that failed, and blob downloads that broke off.",
            |s| s.errors,
        ),
        (
            "berth_mirror_upstream_rate_limited_total",
            "429 answers from the upstream.",
            |s| s.rate_limited,
        ),
    ];
    let stats: Vec<_> = m.entries().iter().map(|e| (e, e.upstream.stats())).collect();
    for (name, help, field) in upstream {
        head(o, name, "counter", help);
        for (e, s) in &stats {
            let _ = writeln!(o, "{name}{{upstream=\"{}\"}} {}", e.config.name, field(s));
        }
    }
    head(
        o,
        "berth_mirror_fills_in_progress",
        "gauge",
        "Blob downloads from upstreams running now.",
    );
    let _ = writeln!(o, "berth_mirror_fills_in_progress {}", m.fills_in_progress());
}
