//! Token scopes (`repository:team/app:pull,push`): never panic; a parsed scope prints as a
//! string that parses to the same scope.
#![no_main]
use libfuzzer_sys::fuzz_target;

use berth_auth::Scope;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(scope) = s.parse::<Scope>() {
        let again: Scope = scope.to_string().parse().expect("a printed scope parses");
        assert_eq!(again, scope);
    }
});
