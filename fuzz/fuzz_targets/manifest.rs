//! Manifest parsing (any content type, any bytes, deep nesting): never panics; what parses
//! references only valid digests.
#![no_main]
use libfuzzer_sys::fuzz_target;

use berth_engine::manifest::parse;

const TYPES: [&str; 5] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/octet-stream",
];

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else { return };
    let ct = TYPES.get(first as usize % 6).copied();
    if let Ok(info) = parse(ct, body) {
        for d in info.blobs.iter().chain(info.children.iter()) {
            assert_eq!(d.to_string().parse::<berth_engine::Digest>().as_ref(), Ok(d));
        }
    }
});
