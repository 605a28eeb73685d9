//! Loading: which file is read (named, `$REGISTRY_CONFIG` or the default search), its YAML, and
//! errors that name the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{Config, ConfigError, from_tree};

/// Where the configuration file is looked for when none is named.
pub const DEFAULT_FILES: &[&str] = &["/etc/distribution/config.yml", "/etc/docker/registry/config.yml"];

/// Load and validate. `explicit` is `--config` (or the positional argument); `env` is the
/// process environment. Returns the config and warnings to log once logging is up.
pub fn load(source: Source<'_>, env: &BTreeMap<String, String>) -> Result<(Config, Vec<String>), ConfigError> {
    load_searching(source, env, DEFAULT_FILES)
}

/// [`load`], searching `search` instead of [`DEFAULT_FILES`].
fn load_searching(
    source: Source<'_>,
    env: &BTreeMap<String, String>,
    search: &[&str],
) -> Result<(Config, Vec<String>), ConfigError> {
    let found = match source {
        Source::File(p) => Some((p.to_path_buf(), FileOrigin::Named)),
        Source::DefaultsOnly => None,
        Source::Search => match env.get("REGISTRY_CONFIG").filter(|v| !v.is_empty()) {
            Some(p) => Some((PathBuf::from(p), FileOrigin::Env)),
            None => search
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
                .map(|p| (p, FileOrigin::Searched)),
        },
    };
    let Some((path, origin)) = found else {
        return from_tree(Value::Object(Map::new()), None, env);
    };
    // Every line of an error names the file; a file the user may not know was read says how
    // to choose otherwise.
    let in_file = |e: ConfigError| {
        let mut lines: Vec<String> = e.0.lines().map(|l| format!("{}: {l}", path.display())).collect();
        if let Some(hint) = origin.hint(&path, search) {
            lines.push(hint);
        }
        ConfigError(lines.join("\n"))
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| in_file(ConfigError(format!("cannot read the configuration file: {e}"))))?;
    let tree = parse_yaml(&text).map_err(|e| in_file(ConfigError(e)))?;
    let (mut config, warnings) = from_tree(tree, Some(path.clone()), env).map_err(in_file)?;
    config.file_origin = Some(origin);
    Ok((config, warnings))
}

/// How the configuration file was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOrigin {
    /// Named on the command line (`--config` or the argument).
    Named,
    /// Named by `$REGISTRY_CONFIG`.
    Env,
    /// Found at one of [`DEFAULT_FILES`] (for example the file Debian's `docker-registry`
    /// package installs), with neither of the above given.
    Searched,
}

impl FileOrigin {
    /// How it was chosen, for the start-up log.
    pub fn as_str(self) -> &'static str {
        match self {
            FileOrigin::Named => "named on the command line",
            FileOrigin::Env => "named by REGISTRY_CONFIG",
            FileOrigin::Searched => "found by the default search",
        }
    }

    /// What to do about an error in a file the user did not name on the command line.
    fn hint(self, path: &Path, search: &[&str]) -> Option<String> {
        match self {
            FileOrigin::Named => None,
            FileOrigin::Env => Some(format!(
                "{}: this file is named by REGISTRY_CONFIG; unset it, or pass --config FILE or --no-config-file, to use another file or the built-in defaults",
                path.display()
            )),
            FileOrigin::Searched => Some(format!(
                "{}: this file was found by the default search ({}); run with --no-config-file for the built-in defaults and REGISTRY_* variables only, or choose a file with --config FILE or REGISTRY_CONFIG",
                path.display(),
                search.join(", ")
            )),
        }
    }
}

/// Where the configuration comes from.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// This file.
    File(&'a Path),
    /// `$REGISTRY_CONFIG`, then [`DEFAULT_FILES`], then built-in defaults.
    Search,
    /// Built-in defaults and environment variables only.
    DefaultsOnly,
}

/// Parse YAML text into a tree (empty text is an empty config).
pub fn parse_yaml(text: &str) -> Result<Value, String> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    let v: Value = serde_saphyr::from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
    match v {
        Value::Object(_) => Ok(v),
        Value::Null => Ok(Value::Object(Map::new())),
        _ => Err("the configuration must be a YAML mapping".into()),
    }
}

/// A variable's value as YAML when it looks like a YAML list (`['GET', 'HEAD']`), else the text.
pub(super) fn parse_yaml_value(text: &str) -> Value {
    let t = text.trim();
    if t.starts_with('[')
        && let Ok(v) = serde_saphyr::from_str::<Value>(t)
    {
        return v;
    }
    Value::String(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::super::testing::env;
    use super::*;

    #[test]
    fn a_file_found_by_the_search_is_named_in_errors_with_the_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yml");
        std::fs::write(&file, "version: 0.1\nhttp: {addr: 'not an address'}\n").unwrap();
        let missing = dir.path().join("none.yml");
        let search = [missing.to_str().unwrap(), file.to_str().unwrap()];
        let err = load_searching(Source::Search, &env(&[]), &search).unwrap_err().0;
        let shown = file.display().to_string();
        assert!(err.lines().all(|l| l.starts_with(&shown)), "{err}");
        assert!(err.contains("http.addr"), "{err}");
        assert!(err.contains("found by the default search"), "{err}");
        assert!(
            err.contains("--no-config-file") && err.contains("REGISTRY_CONFIG"),
            "{err}"
        );
        // Named on the command line: the file and setting, without the advice.
        let err = load_searching(Source::File(&file), &env(&[]), &search).unwrap_err().0;
        assert!(err.starts_with(&shown) && err.contains("http.addr"), "{err}");
        assert!(!err.contains("--no-config-file"), "{err}");
        // Named by REGISTRY_CONFIG: says so.
        let named = env(&[("REGISTRY_CONFIG", file.to_str().unwrap())]);
        let err = load_searching(Source::Search, &named, &[]).unwrap_err().0;
        assert!(err.contains("named by REGISTRY_CONFIG"), "{err}");
        // A good file found by the search is recorded as such (the start-up log names it).
        std::fs::write(&file, "version: 0.1\nhttp: {addr: '127.0.0.1:5009'}\n").unwrap();
        let (c, _) = load_searching(Source::Search, &env(&[]), &search).unwrap();
        assert_eq!(c.file.as_deref(), Some(file.as_path()));
        assert_eq!(c.file_origin, Some(FileOrigin::Searched));
        let (c, _) = load_searching(Source::DefaultsOnly, &env(&[]), &search).unwrap();
        assert_eq!((c.file, c.file_origin), (None, None));
    }
}
