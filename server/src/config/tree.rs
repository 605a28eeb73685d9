//! Reading the raw tree: values by dotted path, typed with messages that name the setting and
//! its variables, and durations.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use super::load::parse_yaml_value;
use super::{ConfigError, SETTINGS};

/// A list setting: a YAML list, a comma-separated string, or (from a variable) a YAML list in a
/// string such as `"['a', 'b']"`. `one` and `many` name the items in messages.
pub(super) fn get_list(tree: &Value, path: &str, one: &str, many: &str) -> Result<Vec<String>, ConfigError> {
    let value = match get_path(tree, path) {
        None => return Ok(Vec::new()),
        Some(Value::String(s)) if s.trim_start().starts_with('[') => parse_yaml_value(s),
        Some(v) => v.clone(),
    };
    match value {
        Value::String(s) => Ok(s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()),
        Value::Array(a) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad(path, &format!("a list of {many}"), v))
            })
            .collect(),
        v => Err(bad(path, &format!("{one} or a list of {many}"), &v)),
    }
}

pub(super) fn set_path(tree: &mut Value, path: &str, value: Value) {
    let mut cur = tree;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let obj = cur.as_object_mut().expect("just made an object");
        if i + 1 == parts.len() {
            obj.insert((*p).to_owned(), value);
            return;
        }
        cur = obj.entry((*p).to_owned()).or_insert_with(|| Value::Object(Map::new()));
    }
}

pub(super) fn get_path<'a>(tree: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(tree, |v, p| v.get(p)).filter(|v| !v.is_null())
}

/// Dotted paths of every leaf (and of empty mappings) in the tree.
pub(super) fn leaves(v: &Value, prefix: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(child, &p, out);
            }
        }
        _ => out.push(prefix.to_owned()),
    }
}

pub(super) fn env_names(path: &str) -> String {
    SETTINGS
        .iter()
        .find(|s| s.path == path)
        .map(|s| s.env.join(" or "))
        .filter(|s| !s.is_empty())
        .map(|s| format!(" (env {s})"))
        .unwrap_or_default()
}

pub(super) fn bad(path: &str, what: &str, got: &Value) -> ConfigError {
    ConfigError(format!("{path}{}: expected {what}, got {got}", env_names(path)))
}

pub(super) fn get_bool(tree: &Value, path: &str, default: bool) -> Result<bool, ConfigError> {
    match get_path(tree, path) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(bad(path, "true or false", &Value::String(s.clone()))),
        },
        Some(v) => Err(bad(path, "true or false", v)),
    }
}

pub(super) fn get_str<'a>(tree: &'a Value, path: &str) -> Result<Option<&'a str>, ConfigError> {
    match get_path(tree, path) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(v) => Err(bad(path, "a string", v)),
    }
}

/// A file named by a setting; empty counts as unset.
pub(super) fn get_file(tree: &Value, path: &str) -> Result<Option<PathBuf>, ConfigError> {
    Ok(get_str(tree, path)?.filter(|v| !v.trim().is_empty()).map(PathBuf::from))
}

pub(super) fn get_usize(tree: &Value, path: &str, default: usize) -> Result<usize, ConfigError> {
    match get_path(tree, path) {
        None => Ok(default),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| bad(path, "a positive whole number", &Value::Number(n.clone()))),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map_err(|_| bad(path, "a positive whole number", &Value::String(s.clone()))),
        Some(v) => Err(bad(path, "a positive whole number", v)),
    }
}

/// Seconds as a number, or a duration string like `90s`, `5m`, `1h30m`, `500ms`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60)?),
            "h" => Duration::from_secs(n.checked_mul(3600)?),
            _ => return None,
        };
        total = total.checked_add(unit)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

pub(super) fn get_duration(tree: &Value, path: &str, default: Duration) -> Result<Duration, ConfigError> {
    match get_path(tree, path) {
        None => Ok(default),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Duration::from_secs)
            .ok_or_else(|| bad(path, "a duration such as 300s or 1h", &Value::Number(n.clone()))),
        Some(Value::String(s)) => {
            parse_duration(s).ok_or_else(|| bad(path, "a duration such as 300s or 1h", &Value::String(s.clone())))
        }
        Some(v) => Err(bad(path, "a duration such as 300s or 1h", v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("10x"), None);
        assert_eq!(parse_duration(""), None);
    }
}
