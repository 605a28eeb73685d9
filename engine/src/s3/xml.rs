//! The S3 answers that `rusty-s3` has no type for, read with `instant-xml` (which it uses for
//! its own): ListMultipartUploads pages and error documents.

use instant_xml::FromXml;

/// The namespace of S3's answers.
const NS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

/// A page of ListMultipartUploads.
#[derive(Debug, Default, FromXml)]
#[xml(rename = "ListMultipartUploadsResult", ns(NS))]
pub struct UploadsPage {
    /// The uploads.
    pub uploads: Vec<Upload>,
    /// Whether another page follows.
    #[xml(rename = "IsTruncated")]
    pub truncated: Option<bool>,
    /// Where the next page starts.
    #[xml(rename = "NextKeyMarker")]
    pub next_key: Option<String>,
    /// Where the next page starts, within that key.
    #[xml(rename = "NextUploadIdMarker")]
    pub next_id: Option<String>,
}

/// One unfinished upload.
#[derive(Debug, FromXml)]
#[xml(rename = "Upload", ns(NS))]
pub struct Upload {
    /// The object's key.
    #[xml(rename = "Key")]
    pub key: String,
    /// The upload's id.
    #[xml(rename = "UploadId")]
    pub upload_id: String,
    /// When it started (RFC 3339).
    #[xml(rename = "Initiated")]
    pub initiated: Option<String>,
}

/// An error document.
#[derive(Debug, FromXml)]
#[xml(rename = "Error")]
pub struct ErrorDoc {
    /// S3's error code (`NoSuchBucket`, `SignatureDoesNotMatch`, …).
    #[xml(rename = "Code")]
    pub code: Option<String>,
    /// Its message.
    #[xml(rename = "Message")]
    pub message: Option<String>,
}

/// Read an uploads page.
pub fn uploads(text: &str) -> Option<UploadsPage> {
    instant_xml::from_str(text).ok()
}

/// Read an error document: its code and message (empty when the body is not one).
pub fn error(text: &str) -> (String, String) {
    match instant_xml::from_str::<ErrorDoc>(text) {
        Ok(d) => (d.code.unwrap_or_default(), d.message.unwrap_or_default()),
        Err(_) => (String::new(), String::new()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_pages_and_errors() {
        let page = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker><NextKeyMarker>r/k2</NextKeyMarker><NextUploadIdMarker>id2</NextUploadIdMarker><MaxUploads>1000</MaxUploads><IsTruncated>true</IsTruncated><Upload><Key>r/k1</Key><UploadId>id1</UploadId><Initiated>2026-12-07T10:00:00Z</Initiated></Upload><Upload><Key>r/k2</Key><UploadId>id2</UploadId><Initiated>2026-12-07T10:00:01.000Z</Initiated></Upload></ListMultipartUploadsResult>"#;
        let p = super::uploads(page).unwrap();
        assert_eq!(p.uploads.len(), 2);
        assert_eq!(
            (p.uploads[1].key.as_str(), p.uploads[1].upload_id.as_str()),
            ("r/k2", "id2")
        );
        assert_eq!((p.truncated, p.next_key.as_deref()), (Some(true), Some("r/k2")));
        let err = r#"<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message><Resource>/b</Resource><RequestId>1</RequestId></Error>"#;
        assert_eq!(super::error(err).0, "NoSuchBucket");
        assert_eq!(super::error("not xml"), (String::new(), String::new()));
    }
}
