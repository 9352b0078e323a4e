//! Media types: parsing `Content-Type` and `Accept` (RFC 9110), and the negotiation
//! PS3.18 asks for (`multipart/related; type="application/dicom"`, `transfer-syntax`).
//!
//! Parsing is bounded: at most [`MAX_RANGES`] media ranges of an Accept header are
//! considered, and parameters are split outside quoted strings only.

use axum::http::HeaderMap;

/// Media ranges read from one Accept header (more are ignored).
pub const MAX_RANGES: usize = 64;

/// A media type or range with its parameters (names lower-cased, quotes removed).
#[derive(Debug, Clone, PartialEq)]
pub struct MediaType {
    /// `type/subtype`, lower-cased (`*/*` and `type/*` for ranges).
    pub essence: String,
    pub params: Vec<(String, String)>,
    /// The `q` weight (1.0 when absent).
    pub q: f32,
}

impl MediaType {
    /// Parses `type/subtype; a=b; c="d"`. None when there is no `type/subtype`.
    pub fn parse(s: &str) -> Option<MediaType> {
        let mut pieces = split_outside_quotes(s, ';').into_iter();
        let essence = pieces.next()?.trim().to_ascii_lowercase();
        let (ty, sub) = essence.split_once('/')?;
        if ty.is_empty() || sub.is_empty() || essence.contains(char::is_whitespace) {
            return None;
        }
        let mut params = Vec::new();
        let mut q = 1.0;
        for piece in pieces {
            let Some((name, value)) = piece.split_once('=') else {
                continue;
            };
            let name = name.trim().to_ascii_lowercase();
            let value = unquote(value.trim());
            if name == "q" {
                q = value
                    .parse::<f32>()
                    .ok()
                    .filter(|q| (0.0..=1.0).contains(q))?;
            } else {
                params.push((name, value));
            }
        }
        Some(MediaType { essence, params, q })
    }

    /// The value of parameter `name` (lower-case).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether this range (`*/*`, `image/*`, `image/png`) covers `essence`.
    pub fn covers(&self, essence: &str) -> bool {
        if self.essence == "*/*" || self.essence == essence {
            return true;
        }
        match (self.essence.strip_suffix("/*"), essence.split_once('/')) {
            (Some(ty), Some((other, _))) => ty == other,
            _ => false,
        }
    }
}

/// Splits at `sep` outside double-quoted strings.
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn unquote(v: &str) -> String {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => v.to_owned(),
    }
}

/// The request's Content-Type, parsed.
pub fn content_type(headers: &HeaderMap) -> Option<MediaType> {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(MediaType::parse)
}

/// The media ranges of every Accept header, highest `q` first (stable for equal `q`),
/// without those of `q=0`. An absent Accept header means `*/*`.
pub fn accept(headers: &HeaderMap) -> Vec<MediaType> {
    let mut ranges: Vec<MediaType> = headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| split_outside_quotes(v, ','))
        .take(MAX_RANGES)
        .filter_map(MediaType::parse)
        .filter(|m| m.q > 0.0)
        .collect();
    if headers.get(axum::http::header::ACCEPT).is_none() {
        ranges.push(MediaType::parse("*/*").unwrap_or(MediaType {
            essence: "*/*".into(),
            params: Vec::new(),
            q: 1.0,
        }));
    }
    ranges.sort_by(|a, b| b.q.total_cmp(&a.q));
    ranges
}

/// For a multipart retrieval whose parts are `part_type` (`application/dicom`,
/// `application/octet-stream`): whether the Accept header allows it, and with which
/// `transfer-syntax` parameter (None: any / as stored).
///
/// Accepted forms: `*/*`, `multipart/*`, `multipart/related` without `type` or with
/// `type="<part_type>"`. Returns `Err(NotAcceptable)` when nothing acceptable was asked for.
pub fn negotiate_multipart(
    ranges: &[MediaType],
    part_type: &str,
) -> Result<Option<String>, NotAcceptable> {
    for range in ranges {
        if range.essence == "*/*" || range.essence == "multipart/*" {
            return Ok(None);
        }
        if range.essence == "multipart/related" {
            match range.param("type") {
                None => return Ok(None),
                Some(t) if t.eq_ignore_ascii_case(part_type) => {
                    return Ok(range
                        .param("transfer-syntax")
                        .filter(|ts| *ts != "*")
                        .map(str::to_owned));
                }
                Some(_) => {}
            }
        }
    }
    Err(NotAcceptable)
}

/// Nothing the client accepts can be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotAcceptable;

/// For a JSON answer: whether `application/dicom+json` (or `application/json`) is
/// acceptable.
pub fn accepts_dicom_json(ranges: &[MediaType]) -> bool {
    ranges
        .iter()
        .any(|r| r.covers("application/dicom+json") || r.covers("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn parses_a_stow_content_type() {
        let m =
            MediaType::parse(r#"Multipart/Related; type="application/dicom"; boundary="a;b=c""#)
                .unwrap();
        assert_eq!(m.essence, "multipart/related");
        assert_eq!(m.param("type"), Some("application/dicom"));
        assert_eq!(m.param("boundary"), Some("a;b=c"));
        assert!(MediaType::parse("nonsense").is_none());
        assert!(MediaType::parse("/x").is_none());
        assert!(MediaType::parse("a/b; q=7").is_none());
    }

    #[test]
    fn accept_is_ordered_by_q_and_drops_q0() {
        let mut h = HeaderMap::new();
        h.insert(
            "accept",
            HeaderValue::from_static("image/png;q=0.5, image/jpeg, image/gif;q=0"),
        );
        let r = accept(&h);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].essence, "image/jpeg");
        assert_eq!(r[1].essence, "image/png");
        assert_eq!(accept(&HeaderMap::new())[0].essence, "*/*");
    }

    #[test]
    fn multipart_negotiation() {
        let parse = |s: &str| {
            split_outside_quotes(s, ',')
                .into_iter()
                .filter_map(MediaType::parse)
                .collect::<Vec<_>>()
        };
        let dicom = "application/dicom";
        assert_eq!(negotiate_multipart(&parse("*/*"), dicom), Ok(None));
        assert_eq!(
            negotiate_multipart(
                &parse(
                    r#"multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1"#
                ),
                dicom
            ),
            Ok(Some("1.2.840.10008.1.2.1".to_owned()))
        );
        assert_eq!(
            negotiate_multipart(
                &parse(r#"multipart/related; type="application/dicom"; transfer-syntax=*"#),
                dicom
            ),
            Ok(None)
        );
        assert_eq!(
            negotiate_multipart(&parse(r#"multipart/related; type="image/jpeg""#), dicom),
            Err(NotAcceptable)
        );
        assert_eq!(
            negotiate_multipart(&parse("application/json"), dicom),
            Err(NotAcceptable)
        );
    }

    #[test]
    fn range_coverage() {
        let any_image = MediaType::parse("image/*").unwrap();
        assert!(any_image.covers("image/png"));
        assert!(!any_image.covers("application/dicom+json"));
        assert!(accepts_dicom_json(&[
            MediaType::parse("application/json").unwrap()
        ]));
        assert!(!accepts_dicom_json(&[MediaType::parse(
            "application/dicom+xml"
        )
        .unwrap()]));
    }
}
