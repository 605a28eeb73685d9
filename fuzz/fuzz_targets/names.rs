//! Repository names, tags, references and whole request paths: never panic; what parses is
//! within the grammar (no empty or dot segments, no traversal), and routes round-trip their name.
#![no_main]
use libfuzzer_sys::fuzz_target;

use berth_engine::{Reference, RepoName, Tag};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(n) = s.parse::<RepoName>() {
        assert_eq!(n.as_str(), s);
        assert!(s.len() <= 255);
        assert!(s.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != ".."));
        assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b)));
    }
    if let Ok(t) = s.parse::<Tag>() {
        assert_eq!(t.as_str(), s);
        assert!(!s.contains('/') && !s.starts_with('.') && !s.starts_with('-'));
    }
    let _ = s.parse::<Reference>();
    if let Ok(route) = berth_server::route::parse(s)
        && let Some(repo) = route.repo()
    {
        assert!(s.contains(repo.as_str()), "route name {repo} not in {s}");
    }
});
