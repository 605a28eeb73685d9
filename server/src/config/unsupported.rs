//! What Berth does not act on: sections it ignores with a warning, sections and storage drivers
//! it refuses, and settings it does not know.

use serde_json::Value;

use super::tree::{get_path, get_str, leaves};
use super::{ConfigError, SETTINGS};

/// Sections of distribution's format that Berth reads but does not act on (yet); they are
/// accepted with a warning rather than refused.
const IGNORED_SECTIONS: &[&str] = &[
    "http.prefix",
    "auth.token.autoredirect",
    "auth.token.autoredirectpath",
    "auth.token.signingalgorithms",
    "notifications",
    "redis",
    "health",
    "validation",
    "compatibility",
    "reporting",
    "middleware",
    "storage.cache",
    "storage.tag",
    "http.relativeurls",
    "http.tls.ciphersuites",
    "http.draintimeout",
    "http.net",
    "http.host",
    "log.fields",
    "log.hooks",
    "log.reportcaller",
    "loglevel",
];

/// Sections that change security or transport and that this version cannot honour: starting
/// without them would expose the registry, so start-up stops with a message instead.
const UNSUPPORTED_SECTIONS: &[(&str, &str)] = &[(
    "http.tls.letsencrypt",
    "automatic certificates (Let's Encrypt) are not available in this version of Berth; obtain the certificate with an ACME client (certbot, lego) and name it in http.tls.certificate and http.tls.key (Berth reloads it when it is renewed)",
)];

/// Settings that would change behaviour if honoured and cannot be: refused.
pub(super) fn unsupported(tree: &Value) -> Result<(), ConfigError> {
    let mut errors = Vec::new();
    if get_str(tree, "http.prefix")?.is_some_and(|p| !p.trim().is_empty() && p.trim() != "/") {
        errors.push("http.prefix: serving under a path prefix is not available in this version of Berth; serve the registry at the root of its host (clients would otherwise get wrong URLs)".to_owned());
    }
    for (section, why) in UNSUPPORTED_SECTIONS {
        if get_path(tree, section).is_some() {
            errors.push(format!("{section}: {why}"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigError(errors.join("\n")))
    }
}

/// The parts of `storage` that are not a driver Berth lacks: its two drivers and the common
/// sections.
const STORAGE_SECTIONS: &[&str] = &["filesystem", "s3", "delete", "maintenance", "redirect", "cache", "tag"];

/// Warn about settings Berth does not read; refuse storage drivers it does not have.
pub(super) fn unknown_leaves(tree: &Value, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
    let mut all = Vec::new();
    leaves(tree, "", &mut all);
    for leaf in all.iter().filter(|l| !l.is_empty()) {
        let known = SETTINGS.iter().any(|s| s.path == leaf) || leaf.starts_with("http.headers.");
        let ignored = IGNORED_SECTIONS
            .iter()
            .any(|s| leaf == s || leaf.starts_with(&format!("{s}.")));
        if ignored {
            warnings.push(format!("{leaf}: not used by Berth, ignored"));
        } else if !known {
            if let Some(driver) = leaf.strip_prefix("storage.").map(|l| l.split('.').next().unwrap_or(""))
                && !STORAGE_SECTIONS.contains(&driver)
            {
                return Err(ConfigError(format!(
                    "storage.{driver}: this storage driver is not available in this version of Berth; use storage.filesystem.rootdirectory or storage.s3"
                )));
            }
            warnings.push(format!("{leaf}: unknown setting, ignored (see docs/configuration.md)"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::load_str;

    #[test]
    fn behaviour_changing_settings_are_not_ignored() {
        assert!(
            load_str("auth: {silly: {realm: r, service: s}}", &[])
                .unwrap_err()
                .0
                .starts_with("auth.silly")
        );
        assert!(
            load_str("auth: {ldap: {}}", &[])
                .unwrap_err()
                .0
                .starts_with("auth.ldap")
        );
        let (c, w) = load_str("storage: {maintenance: {readonly: {enabled: true}}}", &[]).unwrap();
        assert!(c.read_only && !c.upload_purging, "read-only mode removes nothing");
        assert!(w.is_empty(), "{w:?}");
        let (c, _) = load_str("", &[("REGISTRY_STORAGE_MAINTENANCE_READONLY_ENABLED", "true")]).unwrap();
        assert!(c.read_only);
        assert!(!load_str("", &[]).unwrap().0.read_only);
        assert!(load_str("http: {prefix: /registry}", &[]).is_err());
        let (c, _) = load_str(
            "storage: {maintenance: {uploadpurging: {enabled: true, dryrun: true}}}",
            &[],
        )
        .unwrap();
        assert!(!c.upload_purging);
    }
}
