//! Reading what a manifest refers to. Manifests are stored and served byte for byte; this
//! module only extracts the references the registry must check and index.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::digest::Digest;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_SCHEMA1: [&str; 2] = [
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// Largest manifest accepted, in bytes.
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;

/// A content descriptor as it appears in a manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// External URLs (foreign / non-distributable layers).
    #[serde(default)]
    pub urls: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<Map<String, Value>>,
}

/// Whether a manifest lists blobs or other manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Image manifest (config + layers).
    Image,
    /// Index / manifest list.
    Index,
}

/// What the registry needs to know about a manifest.
#[derive(Debug, Clone)]
pub struct ManifestInfo {
    /// The media type served with the manifest.
    pub media_type: String,
    /// Image or index.
    pub kind: Kind,
    /// Blobs that must be in the repository (config and layers, not foreign layers).
    pub blobs: Vec<Digest>,
    /// Manifests that must be in the repository (for an index).
    pub children: Vec<Digest>,
    /// The manifest this one refers to, if any.
    pub subject: Option<Digest>,
    /// `artifactType`, or the config media type of an image manifest without one.
    pub artifact_type: Option<String>,
    /// The manifest's annotations.
    pub annotations: Option<Map<String, Value>>,
}

/// Why a manifest is refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Larger than [`MAX_MANIFEST_SIZE`].
    #[error("manifest is larger than {MAX_MANIFEST_SIZE} bytes")]
    TooLarge,
    /// Malformed or unsupported.
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ManifestError {
    ManifestError::Invalid(msg.into())
}

/// Strip parameters (`; charset=…`) from a Content-Type.
fn bare(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// Parse a manifest body sent with `content_type`.
pub fn parse(content_type: Option<&str>, bytes: &[u8]) -> Result<ManifestInfo, ManifestError> {
    if bytes.len() > MAX_MANIFEST_SIZE {
        return Err(ManifestError::TooLarge);
    }
    let header = content_type.map(bare).filter(|c| !c.is_empty());
    if header.is_some_and(|c| DOCKER_SCHEMA1.contains(&c)) {
        return Err(invalid(
            "Docker schema 1 manifests are not supported; push with a current client (schema 2 or OCI)",
        ));
    }
    let raw: Raw = serde_json::from_slice(bytes).map_err(|e| invalid(format!("manifest is not valid JSON: {e}")))?;
    match raw.schema_version {
        Some(2) => {}
        Some(1) => {
            return Err(invalid(
                "Docker schema 1 manifests are not supported; push with a current client (schema 2 or OCI)",
            ));
        }
        Some(v) => return Err(invalid(format!("unsupported schemaVersion {v}"))),
        None => return Err(invalid("schemaVersion is missing")),
    }
    if let (Some(field), Some(header)) = (raw.media_type.as_deref(), header) {
        let header_is_manifest = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].contains(&header);
        if header_is_manifest && field != header {
            return Err(invalid(format!(
                "mediaType {field:?} in the manifest does not match Content-Type {header:?}"
            )));
        }
    }
    let media_type = raw
        .media_type
        .clone()
        .or_else(|| header.map(str::to_owned))
        .unwrap_or_else(|| {
            if raw.manifests.is_some() {
                OCI_INDEX
            } else {
                OCI_MANIFEST
            }
            .to_owned()
        });
    let kind = match media_type.as_str() {
        OCI_INDEX | DOCKER_LIST => Kind::Index,
        OCI_MANIFEST | DOCKER_MANIFEST => Kind::Image,
        _ if raw.manifests.is_some() => Kind::Index,
        _ => Kind::Image,
    };
    let mut blobs = Vec::new();
    let mut children = Vec::new();
    match kind {
        Kind::Image => {
            let config = raw
                .config
                .as_ref()
                .ok_or_else(|| invalid("image manifest has no config"))?;
            let layers = raw
                .layers
                .as_ref()
                .ok_or_else(|| invalid("image manifest has no layers array"))?;
            if raw.manifests.is_some() {
                return Err(invalid("an image manifest cannot have a manifests array"));
            }
            blobs.push(config.digest.clone());
            for layer in layers {
                if layer.urls.is_empty() {
                    blobs.push(layer.digest.clone());
                }
            }
        }
        Kind::Index => {
            let list = raw
                .manifests
                .as_ref()
                .ok_or_else(|| invalid("index has no manifests array"))?;
            if raw.layers.is_some() || raw.config.is_some() {
                return Err(invalid("an index cannot have config or layers"));
            }
            children.extend(list.iter().map(|d| d.digest.clone()));
        }
    }
    let artifact_type = raw.artifact_type.or_else(|| match kind {
        Kind::Image => raw.config.map(|c| c.media_type),
        Kind::Index => None,
    });
    Ok(ManifestInfo {
        media_type,
        kind,
        blobs,
        children,
        subject: raw.subject.map(|s| s.digest),
        artifact_type,
        annotations: raw.annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{D2}","size":3}}]{extra}}}"#
        )
    }

    #[test]
    fn image_references() {
        let m = parse(Some(OCI_MANIFEST), image("").as_bytes()).unwrap();
        assert_eq!(m.kind, Kind::Image);
        assert_eq!(m.blobs.len(), 2);
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        assert!(m.subject.is_none());
    }

    #[test]
    fn subject_and_artifact_type() {
        let extra = format!(
            r#","artifactType":"application/x-sig","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":9}}"#
        );
        let m = parse(Some(OCI_MANIFEST), image(&extra).as_bytes()).unwrap();
        assert_eq!(m.subject.unwrap().to_string(), D1);
        assert_eq!(m.artifact_type.as_deref(), Some("application/x-sig"));
    }

    #[test]
    fn index_children() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":5}}]}}"#
        );
        let m = parse(Some(OCI_INDEX), body.as_bytes()).unwrap();
        assert_eq!(m.kind, Kind::Index);
        assert_eq!(m.children.len(), 1);
        assert!(m.blobs.is_empty());
    }

    #[test]
    fn refusals() {
        assert!(parse(None, b"not json").is_err());
        assert!(parse(None, br#"{"schemaVersion":1,"name":"x"}"#).is_err());
        assert!(parse(Some("application/vnd.docker.distribution.manifest.v1+prettyjws"), b"{}").is_err());
        assert!(
            parse(Some(OCI_INDEX), image("").as_bytes()).is_err(),
            "media type mismatch accepted"
        );
        let bad_digest = image("").replace(D2, "sha256:nothex");
        assert!(parse(Some(OCI_MANIFEST), bad_digest.as_bytes()).is_err());
        let deep = format!(
            r#"{{"schemaVersion":2,"annotations":{}1{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert!(parse(None, deep.as_bytes()).is_err());
        assert!(matches!(
            parse(None, &vec![b' '; MAX_MANIFEST_SIZE + 1]),
            Err(ManifestError::TooLarge)
        ));
    }

    #[test]
    fn foreign_layers_are_not_required() {
        let body = image("").replace(r#""size":3}"#, r#""size":3,"urls":["https://example.com/l"]}"#);
        let m = parse(Some(OCI_MANIFEST), body.as_bytes()).unwrap();
        assert_eq!(m.blobs.len(), 1);
    }
}
