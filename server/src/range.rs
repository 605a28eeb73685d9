//! `Range` (blob reads) and `Content-Range` (upload chunks) header parsing.

use berth_engine::{ByteRange, ChunkRange};

/// What a `Range` header asks of a blob of known size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: serve the whole blob (absent, malformed or multi-range headers are
    /// ignored, as RFC 9110 allows).
    Full,
    /// One satisfiable range.
    Partial(ByteRange),
    /// A well-formed range that lies outside the blob: 416.
    Unsatisfiable,
}

/// Interpret a `Range` header against a blob of `size` bytes.
pub fn parse_range(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    // Digits beyond u64 are a position past any blob (saturated), not a malformed header.
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            Some(s.parse().unwrap_or(u64::MAX))
        }
    };
    match (a.is_empty(), b.is_empty()) {
        // bytes=-n: the last n bytes
        (true, false) => match num(b) {
            None => RangeRequest::Full,
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if size == 0 => RangeRequest::Unsatisfiable,
            Some(n) => {
                let len = n.min(size);
                RangeRequest::Partial(ByteRange { start: size - len, len })
            }
        },
        // bytes=a-
        (false, true) => match num(a) {
            None => RangeRequest::Full,
            Some(start) if start >= size => RangeRequest::Unsatisfiable,
            Some(start) => RangeRequest::Partial(ByteRange {
                start,
                len: size - start,
            }),
        },
        // bytes=a-b; a reversed range (a > b) is refused like one outside the blob, as the OCI
        // conformance suite expects.
        (false, false) => match (num(a), num(b)) {
            (Some(start), Some(end)) if start > end => RangeRequest::Unsatisfiable,
            (Some(start), Some(end)) => {
                if start >= size {
                    RangeRequest::Unsatisfiable
                } else {
                    let end = end.min(size - 1);
                    RangeRequest::Partial(ByteRange {
                        start,
                        len: end - start + 1,
                    })
                }
            }
            _ => RangeRequest::Full,
        },
        (true, true) => RangeRequest::Full,
    }
}

/// Parse an upload chunk's `Content-Range`: `a-b`, also with a `bytes ` / `bytes=` prefix or a
/// `/total` suffix as some clients send. `None` when malformed.
pub fn parse_content_range(header: &str) -> Option<ChunkRange> {
    let h = header.trim();
    let h = h
        .strip_prefix("bytes=")
        .or_else(|| h.strip_prefix("bytes "))
        .unwrap_or(h)
        .trim();
    let h = h.split_once('/').map_or(h, |(r, _)| r);
    let (a, b) = h.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if !digits(a) || !digits(b) {
        return None;
    }
    let (start, end) = (a.parse().ok()?, b.parse().ok()?);
    (start <= end).then_some(ChunkRange { start, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(start: u64, len: u64) -> RangeRequest {
        RangeRequest::Partial(ByteRange { start, len })
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), RangeRequest::Full);
        assert_eq!(parse_range(Some("bytes=0-4"), 10), p(0, 5));
        assert_eq!(parse_range(Some("bytes=5-"), 10), p(5, 5));
        assert_eq!(parse_range(Some("bytes=-3"), 10), p(7, 3));
        assert_eq!(parse_range(Some("bytes=-30"), 10), p(0, 10));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), p(8, 2));
        assert_eq!(parse_range(Some("bytes=10-"), 10), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=10-12"), 10), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-"), 0), RangeRequest::Unsatisfiable);
        assert_eq!(
            parse_range(Some("bytes=5-2"), 10),
            RangeRequest::Unsatisfiable,
            "reversed"
        );
        // positions beyond u64 are past any blob: unsatisfiable as a start, clamped as an end
        assert_eq!(
            parse_range(Some("bytes=99999999999999999999999-"), 10),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(parse_range(Some("bytes=2-99999999999999999999999"), 10), p(2, 8));
        assert_eq!(parse_range(Some("bytes=-99999999999999999999999"), 10), p(0, 10));
        // malformed, negative, multi: ignored
        for h in ["bytes=--1", "bytes=a-b", "items=0-1", "bytes=0-1,3-4", "bytes=-"] {
            assert_eq!(parse_range(Some(h), 10), RangeRequest::Full, "{h}");
        }
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-99"), Some(ChunkRange { start: 0, end: 99 }));
        assert_eq!(
            parse_content_range("bytes 100-199/*"),
            Some(ChunkRange { start: 100, end: 199 })
        );
        assert_eq!(parse_content_range("bytes=5-5"), Some(ChunkRange { start: 5, end: 5 }));
        for bad in [
            "",
            "5",
            "9-1",
            "-1-3",
            "a-b",
            "1-",
            "18446744073709551616-18446744073709551617",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }
}
