//! The `cache` section: the memory budgets of the read cache and of the small-blob cache.

use serde_json::Value;

use super::ConfigError;
use super::tree::{bad, get_path};

/// `cache.memory`: bytes of answers (blob sizes, manifests) the read cache may hold. 0 turns
/// the cache off.
pub(super) fn cache_budget(tree: &Value) -> Result<u64, ConfigError> {
    size(tree, "cache.memory", berth_engine::hot::DEFAULT_BUDGET)
}

/// `cache.blobmemory` and `cache.blobmaxsize`: bytes of small blobs kept in memory, and the
/// largest blob kept.
pub(super) fn blob_cache(tree: &Value) -> Result<(u64, u64), ConfigError> {
    Ok((
        size(tree, "cache.blobmemory", berth_engine::bodies::DEFAULT_BUDGET)?,
        size(tree, "cache.blobmaxsize", berth_engine::bodies::DEFAULT_MAX_BLOB)?,
    ))
}

/// A size at `path`: a number of bytes, or one with a unit (`KiB`, `MiB`, `GiB`, or `KB`, `MB`,
/// `GB` as powers of 1000).
fn size(tree: &Value, path: &str, default: u64) -> Result<u64, ConfigError> {
    let what = "a size such as 268435456, 256MiB or 1GiB";
    let text = match get_path(tree, path) {
        None => return Ok(default),
        Some(Value::Number(n)) => return n.as_u64().ok_or_else(|| bad(path, what, &Value::Number(n.clone()))),
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(v) => return Err(bad(path, what, v)),
    };
    parse_size(&text).ok_or_else(|| bad(path, what, &Value::String(text.clone())))
}

/// A number of bytes, or one with a unit (`KiB`, `MiB`, `GiB`, `TiB`, or `KB`, `MB`, `GB`, `TB`
/// as powers of 1000).
pub(super) fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return None,
    };
    digits.parse::<u64>().ok().and_then(|n| n.checked_mul(factor))
}

#[cfg(test)]
mod tests {
    use super::super::testing::load_str;

    #[test]
    fn the_budget_takes_bytes_and_units() {
        for (yaml, want) in [
            ("{}", berth_engine::hot::DEFAULT_BUDGET),
            ("cache: {memory: 0}", 0),
            ("cache: {memory: 1048576}", 1 << 20),
            ("cache: {memory: '64MiB'}", 64 << 20),
            ("cache: {memory: 2GiB}", 2 << 30),
            ("cache: {memory: 500 MB}", 500_000_000),
        ] {
            let (c, w) = load_str(yaml, &[]).unwrap();
            assert_eq!(c.cache_budget, want, "{yaml}");
            assert!(w.is_empty(), "{yaml}: {w:?}");
        }
        let (c, _) = load_str("{}", &[("REGISTRY_CACHE_MEMORY", "32MiB")]).unwrap();
        assert_eq!(c.cache_budget, 32 << 20);
        let (c, _) = load_str("{}", &[]).unwrap();
        assert_eq!(c.blob_cache, (64 << 20, 256 << 10));
        let (c, _) = load_str("cache: {blobmemory: 1GiB}", &[("REGISTRY_CACHE_BLOBMAXSIZE", "1MiB")]).unwrap();
        assert_eq!(c.blob_cache, (1 << 30, 1 << 20));
        let e = load_str("cache: {blobmaxsize: huge}", &[]).unwrap_err().0;
        assert!(e.contains("cache.blobmaxsize"), "{e}");
        for bad in [
            "cache: {memory: lots}",
            "cache: {memory: 12PB}",
            "cache: {memory: -1}",
            "cache: {memory: [1]}",
        ] {
            let e = load_str(bad, &[]).unwrap_err().0;
            assert!(e.contains("cache.memory"), "{bad}: {e}");
        }
    }
}
