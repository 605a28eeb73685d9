//! Content descriptors as the referrers API lists them: what a manifest that names a subject
//! is (media type, digest, size, artifact type, annotations).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::digest::Digest;

/// An OCI content descriptor of a referrer manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The manifest's media type.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Its artifact type (the manifest's `artifactType`, or its config's media type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Its annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Map<String, Value>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_with_the_spec_names_and_round_trips() {
        let d = Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: Digest::of(crate::digest::Algorithm::Sha256, b"m"),
            size: 1,
            artifact_type: Some("application/x.sbom".into()),
            annotations: None,
        };
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["mediaType"], "application/vnd.oci.image.manifest.v1+json");
        assert_eq!(v["artifactType"], "application/x.sbom");
        assert!(v.get("annotations").is_none());
        let back: Descriptor = serde_json::from_value(v).unwrap();
        assert_eq!(back, d);
    }
}
