//! Token scopes (`repository:team/app:pull,push`): never panic; a parsed scope prints as a
//! string that parses to the same scope. Inputs with several space-separated scopes (as a
//! token request sends them) are also merged: one entry per resource, holding every action
//! that was asked for.
#![no_main]
use libfuzzer_sys::fuzz_target;

use berth_auth::{Scope, merge_scopes};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(scope) = s.parse::<Scope>() {
        let again: Scope = scope.to_string().parse().expect("a printed scope parses");
        assert_eq!(again, scope);
    }
    let parsed: Vec<Scope> = s.split(' ').filter_map(|p| p.parse().ok()).collect();
    let merged = merge_scopes(parsed.clone());
    for (i, m) in merged.iter().enumerate() {
        assert!(
            !merged[..i]
                .iter()
                .any(|o| o.resource_type == m.resource_type && o.name == m.name),
            "one entry per resource"
        );
    }
    for p in &parsed {
        let m = merged
            .iter()
            .find(|m| m.resource_type == p.resource_type && m.name == p.name)
            .expect("every resource survives");
        assert!(p.actions.iter().all(|a| m.actions.contains(a)));
    }
});
