//! Digest parsing: never panics; what parses prints back as itself and names a path inside
//! the blob store.
#![no_main]
use libfuzzer_sys::fuzz_target;

use berth_engine::Digest;
use berth_engine::layout::Layout;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(d) = s.parse::<Digest>() {
        assert_eq!(d.to_string(), s, "a digest prints back as parsed");
        assert!(d.hex().bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        let layout = Layout::new("/storage");
        let p = layout.blob(&d);
        assert!(p.starts_with("/storage/blobs"), "{p:?}");
        assert!(p.components().all(|c| !matches!(c, std::path::Component::ParentDir)));
    }
});
