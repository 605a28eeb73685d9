//! `Range` and `Content-Range` parsing: never panic; a partial range always lies inside the
//! blob, a chunk range is ordered.
#![no_main]
use libfuzzer_sys::fuzz_target;

use berth_server::range::{RangeRequest, parse_content_range, parse_range};

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let size = u64::from_le_bytes(data[..8].try_into().unwrap()) >> (data[0] % 64);
    let Ok(s) = std::str::from_utf8(&data[8..]) else { return };
    if let RangeRequest::Partial(r) = parse_range(Some(s), size) {
        assert!(r.len > 0, "{s}: empty partial range");
        assert!(r.start < size && r.len <= size - r.start, "{s}: {r:?} outside a blob of {size}");
    }
    if let Some(c) = parse_content_range(s) {
        assert!(c.start <= c.end, "{s}: {c:?}");
    }
});
