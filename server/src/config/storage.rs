//! The `storage.maintenance.gc` section: online garbage collection.

use std::time::Duration;

use serde_json::Value;

use super::ConfigError;
use super::tree::{get_bool, get_duration};

/// `storage.maintenance.gc.*`.
pub(super) fn gc_settings(tree: &Value) -> Result<(Option<Duration>, berth_engine::GcOptions), ConfigError> {
    let interval = get_duration(tree, "storage.maintenance.gc.interval", Duration::from_secs(24 * 3600))?;
    let opts = berth_engine::GcOptions {
        grace: get_duration(tree, "storage.maintenance.gc.grace", Duration::from_secs(3600))?,
        untagged: get_bool(tree, "storage.maintenance.gc.untagged", false)?,
        dry_run: false,
    };
    if !get_bool(tree, "storage.maintenance.gc.enabled", false)? {
        return Ok((None, opts));
    }
    if interval.is_zero() {
        return Err(ConfigError(
            "storage.maintenance.gc.interval (env REGISTRY_STORAGE_MAINTENANCE_GC_INTERVAL) must be greater than 0"
                .into(),
        ));
    }
    Ok((Some(interval), opts))
}

#[cfg(test)]
mod tests {
    use super::super::testing::load_str;

    #[test]
    fn gc_settings() {
        let (c, _) = load_str("", &[]).unwrap();
        assert!(c.gc_interval.is_none());
        assert_eq!((c.gc.grace.as_secs(), c.gc.untagged), (3600, false));
        // The grace period set for `berth gc` counts with online collection off.
        let (c, _) = load_str("storage: {maintenance: {gc: {grace: 5m}}}", &[]).unwrap();
        assert_eq!((c.gc_interval, c.gc.grace.as_secs()), (None, 300));
        let (c, w) = load_str(
            "storage: {maintenance: {gc: {enabled: true, interval: 10m, grace: 2h, untagged: true}}}",
            &[],
        )
        .unwrap();
        let (interval, o) = (c.gc_interval.unwrap(), c.gc);
        assert_eq!((interval.as_secs(), o.grace.as_secs(), o.untagged), (600, 7200, true));
        assert!(w.is_empty(), "{w:?}");
        let (c, _) = load_str("", &[("REGISTRY_STORAGE_MAINTENANCE_GC_ENABLED", "true")]).unwrap();
        let (interval, o) = (c.gc_interval.unwrap(), c.gc);
        assert_eq!(
            (interval.as_secs(), o.grace.as_secs(), o.untagged),
            (86400, 3600, false)
        );
        let e = load_str(
            "",
            &[
                ("REGISTRY_STORAGE_MAINTENANCE_GC_ENABLED", "true"),
                ("REGISTRY_STORAGE_MAINTENANCE_GC_INTERVAL", "0s"),
            ],
        )
        .unwrap_err()
        .0;
        assert!(e.contains("REGISTRY_STORAGE_MAINTENANCE_GC_INTERVAL"), "{e}");
        let (c, _) = load_str(
            "",
            &[
                ("REGISTRY_STORAGE_MAINTENANCE_GC_ENABLED", "true"),
                ("REGISTRY_STORAGE_MAINTENANCE_READONLY_ENABLED", "true"),
            ],
        )
        .unwrap();
        assert!(c.gc_interval.is_none(), "read-only mode collects nothing");
    }
}
