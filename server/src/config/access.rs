//! The `accesscontrol` section: the access rules file.

use std::path::PathBuf;

use serde_json::Value;

use super::ConfigError;
use super::tree::{get_bool, get_str};

pub(super) fn access_control(tree: &Value) -> Result<Option<PathBuf>, ConfigError> {
    let rules_path = get_str(tree, "accesscontrol.config")?
        .filter(|p| !p.trim().is_empty())
        .map(PathBuf::from);
    match (get_bool(tree, "accesscontrol.enabled", rules_path.is_some())?, rules_path) {
        (false, _) => Ok(None),
        (true, Some(p)) => Ok(Some(p)),
        (true, None) => Err(ConfigError(
            "accesscontrol.config (env REGISTRY_ACCESS_CONTROL_CONFIG): access control is enabled but no rules file is named".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::load_str;
    use super::*;

    #[test]
    fn access_control() {
        let (c, _) = load_str("", &[("REGISTRY_ACCESS_CONTROL_CONFIG", "/r.json")]).unwrap();
        assert_eq!(c.access_rules, Some(PathBuf::from("/r.json")));
        let (c, _) = load_str(
            "",
            &[
                ("REGISTRY_ACCESS_CONTROL_CONFIG", "/r.json"),
                ("REGISTRY_ACCESS_CONTROL_ENABLED", "false"),
            ],
        )
        .unwrap();
        assert_eq!(c.access_rules, None);
        let e = load_str("", &[("REGISTRY_ACCESS_CONTROL_ENABLED", "true")])
            .unwrap_err()
            .0;
        assert!(e.contains("REGISTRY_ACCESS_CONTROL_CONFIG"), "{e}");
    }
}
