//! Repository access patterns (`team-a/*`, `${user}/**`): compiling and matching never panic,
//! whatever UTF-8 the pattern, the repository name and the user name hold (multi-byte
//! characters included), and granting a parsed scope against a rule built from the pattern
//! gives a subset of the requested actions. Input: `pattern \n name \n user` (a missing user is
//! an anonymous caller).
#![no_main]
use libfuzzer_sys::fuzz_target;

use berth_auth::{AccessRules, Pattern, Principal, Scope, grant};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let mut parts = s.splitn(3, '\n');
    let pattern = parts.next().unwrap_or("");
    let name = parts.next().unwrap_or("");
    let user = parts.next();
    // Matching costs at most pattern × name steps (no backtracking); names are at most 255
    // bytes in the registry, patterns as long as an operator writes them.
    if pattern.len() > 1024 || name.len() > 1024 {
        return;
    }
    let p = Pattern::new(pattern);
    let _ = p.matches(name, user);
    let _ = p.matches(name, None);
    let rule = serde_json_rule(pattern);
    if let Ok(rules) = AccessRules::parse(std::path::Path::new("fuzz.json"), &rule)
        && let Ok(wanted) = format!("repository:{name}:pull,push").parse::<Scope>()
    {
        let who = Principal::user(user);
        let got = grant(Some(&rules), &who, &wanted);
        assert!(got.actions.iter().all(|a| wanted.actions.contains(a)));
    }
});

fn serde_json_rule(pattern: &str) -> String {
    let escaped: String = pattern
        .chars()
        .flat_map(|c| match c {
            '"' => vec!['\\', '"'],
            '\\' => vec!['\\', '\\'],
            c if (c as u32) < 0x20 => format!("\\u{:04x}", c as u32).chars().collect(),
            c => vec![c],
        })
        .collect();
    format!(
        r#"{{"anonymous":[{{"repository":"{escaped}","permissions":["pull"]}}],"rules":[{{"repository":"{escaped}","users":["*"],"permissions":["pull","push"]}}]}}"#
    )
}
