//! The pure pieces of the upstream client: which repository names and references may go into a
//! URL path, `Retry-After` (seconds or an HTTP date), `Content-Range`, where a `Location` points,
//! default ports, and how URIs (never their query) are shown in messages.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::RETRY_AFTER;
use http::{HeaderMap, Uri};

/// The longest `Retry-After` honoured.
pub(super) const RATE_LIMIT_MAX: Duration = Duration::from_secs(3600);

/// The port of a scheme: 443 for `https`, else 80.
pub(super) fn default_port(scheme: &str) -> u16 {
    if scheme == "https" { 443 } else { 80 }
}

/// The port `uri` names, or its scheme's.
pub(super) fn port_of(uri: &Uri) -> u16 {
    uri.port_u16()
        .unwrap_or_else(|| default_port(uri.scheme_str().unwrap_or("")))
}

/// A repository name that can go into a path: lower-case letters, digits, `._-`, components
/// separated by `/`, each starting with a letter or digit (so no `.` or `..`).
pub(super) fn valid_repo(repo: &str) -> bool {
    repo.split('/').all(|c| {
        c.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && c.bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
    })
}

/// A tag or digest: letters, digits, `._:+=-`, starting with a letter, digit or `_`.
pub(super) fn valid_reference(r: &str) -> bool {
    r.len() <= 256
        && r.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && r.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:+=-".contains(&b))
}

/// `Retry-After` as seconds or an HTTP date, at most an hour.
pub(super) fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let d = match v.parse::<u64>() {
        Ok(s) => Duration::from_secs(s),
        Err(_) => http_date(v)?.duration_since(SystemTime::now()).unwrap_or_default(),
    };
    Some(d.min(RATE_LIMIT_MAX))
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form HTTP senders must use.
pub(super) fn http_date(s: &str) -> Option<SystemTime> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let parts: Vec<&str> = s.get(5..)?.split(' ').collect();
    let [day, month, year, time, "GMT"] = parts[..] else {
        return None;
    };
    if s.get(3..5)? != ", " || day.len() != 2 || year.len() != 4 {
        return None;
    }
    let (d, y): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let m = MONTHS.iter().position(|&n| n == month)? as i64 + 1;
    let hms: Vec<i64> = time.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let [h, mi, se] = hms[..] else { return None };
    if !(1..=31).contains(&d) || !(0..24).contains(&h) || !(0..60).contains(&mi) || !(0..61).contains(&se) {
        return None;
    }
    // Days since 1970-01-01 of a proleptic Gregorian date (years start in March here).
    let y = if m <= 2 { y - 1 } else { y };
    let (era, yoe) = (y.div_euclid(400), y.rem_euclid(400));
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = u64::try_from(days * 86_400 + h * 3600 + mi * 60 + se).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// `HH:MM:SS UTC` of a wall-clock time.
pub(super) fn clock(t: SystemTime) -> String {
    let s = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() % 86_400;
    format!("{:02}:{:02}:{:02} UTC", s / 3600, s / 60 % 60, s % 60)
}

/// `bytes <first>-<last>/<total or *>`: (first, total).
pub(super) fn content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let (range, total) = v.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last): (u64, u64) = (first.parse().ok()?, last.parse().ok()?);
    let total = match total {
        "*" => None,
        t => Some(t.parse::<u64>().ok().filter(|&t| t > last)?),
    };
    (first <= last).then_some((first, total))
}

/// Where a `Location` points, relative to the URL that answered.
pub(super) fn resolve(at: &Uri, location: &str) -> Option<Uri> {
    let scheme_end = location.find(|c: char| !(c.is_ascii_alphanumeric() || "+-.".contains(c)));
    let text = if scheme_end.is_some_and(|e| e > 0 && location[e..].starts_with(':')) {
        // Absolute (RFC 3986: a first segment with a colon is a scheme).
        location.to_owned()
    } else if let Some(rest) = location.strip_prefix("//") {
        format!("{}://{rest}", at.scheme_str()?)
    } else {
        let path = if location.starts_with('/') {
            location.to_owned()
        } else {
            let dir = &at.path()[..=at.path().rfind('/')?];
            format!("{dir}{location}")
        };
        format!("{}://{}{path}", at.scheme_str()?, at.authority()?)
    };
    let uri: Uri = text.parse().ok()?;
    (matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some()).then_some(uri)
}

/// A host and path for logs: never the query, which holds presigned signatures.
pub(super) fn show(uri: &Uri) -> String {
    format!("{}{}", uri.authority().map_or("", |a| a.as_str()), uri.path())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn names_and_references() {
        assert!(valid_repo("library/alpine") && valid_repo("a.b_c-d/0e") && valid_reference("sha256:abc"));
        assert!(valid_reference("v1.2.3+build_7") && valid_reference("_x") && !valid_reference(".x"));
    }

    #[test]
    fn header_parsing() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
            retry_after(&m)
        };
        assert_eq!(h("120"), Some(Duration::from_secs(120)));
        assert_eq!(h("99999999"), Some(RATE_LIMIT_MAX));
        assert_eq!(h("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO));
        assert_eq!(h("soon"), None);
        assert_eq!(
            http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
        assert_eq!(
            http_date("Thu, 29 Feb 2024 23:59:60 GMT"),
            Some(UNIX_EPOCH + Duration::from_secs(1_709_251_200))
        );
        for bad in [
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 32 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(http_date(bad), None, "{bad}");
        }
        let later = SystemTime::now() + Duration::from_secs(3600 + 120);
        let s = later.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(clock(later).ends_with(&format!("{:02} UTC", s % 60)));
        assert_eq!(content_range("bytes 10-99/100"), Some((10, Some(100))));
        assert_eq!(content_range("bytes 10-99/*"), Some((10, None)));
        for bad in [
            "bytes 10-99/99",
            "bytes 99-10/100",
            "bytes=10-99/100",
            "bytes 10-/100",
            "",
        ] {
            assert_eq!(content_range(bad), None, "{bad}");
        }
        let at: Uri = "https://r.example:5000/v2/a/blobs/sha256:1".parse().unwrap();
        let r = |l: &str| resolve(&at, l).map(|u| u.to_string());
        assert_eq!(
            r("https://s3.example/x?sig=1").as_deref(),
            Some("https://s3.example/x?sig=1")
        );
        assert_eq!(r("HTTP://s3.example/x").as_deref(), Some("http://s3.example/x"));
        assert_eq!(r("//cdn.example/x").as_deref(), Some("https://cdn.example/x"));
        assert_eq!(r("/other").as_deref(), Some("https://r.example:5000/other"));
        assert_eq!(r("next").as_deref(), Some("https://r.example:5000/v2/a/blobs/next"));
        assert_eq!(r("sha256:2"), None);
        assert_eq!(r("ftp://x/y"), None);
        assert_eq!(r("https://"), None);
    }
}
