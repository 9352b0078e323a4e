//! QIDO-RS (PS3.18 §10.6): searches for studies, series and instances.
//!
//! Query parameters: `{attribute}={value}` (keyword such as `PatientName` or tag such as
//! `00100010`), `includefield` (repeatable, comma-separated, `all`), `fuzzymatching`,
//! `limit` (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]) and `offset`.
//!
//! Answers: 200 with a DICOM JSON array — also when nothing matches (`[]`), as PS3.18
//! (2026a, Table 10.6.3-1) now specifies; 400 with `{"error": ...}` for a malformed value
//! or an unknown attribute. An attribute the index cannot match at the level is not
//! matched but returned, with a `Warning: 299` header (PS3.18 §8.3.4). When more results
//! exist than `limit` allowed, a `Warning: 299` says so.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use serde_json::Value;

use super::json::{attributes_to_json, stow_tags, url_attribute};
use super::{base_url, check_uid, media, truncate};
use crate::api::{ApiError, AppState};
use crate::store::{
    Condition, Include, MatchKey, Query, QueryLevel, matchable_keys, parse_condition,
    resolve_attribute,
};

pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;
/// Longest query string accepted.
pub const MAX_QUERY_LEN: usize = 16 * 1024;
/// Most parameters accepted in one query.
pub const MAX_PARAMS: usize = 128;

/// A parsed search: the store query plus the warnings to send back.
#[derive(Debug, Clone, PartialEq)]
pub struct Search {
    pub query: Query,
    pub warnings: Vec<String>,
}

/// Decodes `application/x-www-form-urlencoded` pairs (`+` is a space; `%XX` bytes must
/// form UTF-8).
pub fn parse_pairs(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    if query.len() > MAX_QUERY_LEN {
        return Err(ApiError::bad_request(format!(
            "query string longer than {MAX_QUERY_LEN} bytes"
        )));
    }
    let mut pairs = Vec::new();
    for piece in query.split('&').filter(|p| !p.is_empty()) {
        if pairs.len() == MAX_PARAMS {
            return Err(ApiError::bad_request(format!(
                "more than {MAX_PARAMS} query parameters"
            )));
        }
        let (k, v) = piece.split_once('=').unwrap_or((piece, ""));
        pairs.push((percent_decode(k)?, percent_decode(v)?));
    }
    Ok(pairs)
}

fn percent_decode(s: &str) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        ApiError::bad_request("malformed percent-encoding in the query string")
                    })?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| ApiError::bad_request("the query string is not UTF-8 once decoded"))
}

/// Unique keys of the levels (matchable at any level below their own).
const UNIQUE_KEYS: [Tag; 3] = [
    tags::STUDY_INSTANCE_UID,
    tags::SERIES_INSTANCE_UID,
    tags::SOP_INSTANCE_UID,
];

fn level_name(level: QueryLevel) -> &'static str {
    match level {
        QueryLevel::Study => "study",
        QueryLevel::Series => "series",
        QueryLevel::Instance => "instance",
    }
}

/// Builds the store query from the request's parameters, the level, and the UIDs the
/// path fixes (`/studies/{study}/series` fixes the study).
pub fn parse_search(
    level: QueryLevel,
    fixed: &[(Tag, &str)],
    pairs: &[(String, String)],
) -> Result<Search, ApiError> {
    let mut keys: Vec<MatchKey> = Vec::new();
    let mut include_all = false;
    let mut include: Vec<Tag> = Vec::new();
    let mut fuzzy = false;
    let mut limit = DEFAULT_LIMIT;
    let mut offset = 0u32;
    let mut warnings = Vec::new();

    for (tag, uid) in fixed {
        keys.push(MatchKey {
            tag: *tag,
            condition: Condition::Exact((*uid).to_owned()),
        });
    }

    for (name, value) in pairs {
        match name.as_str() {
            "includefield" => {
                for field in value.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                    if field.eq_ignore_ascii_case("all") {
                        include_all = true;
                    } else {
                        include.push(resolve(field)?);
                    }
                }
            }
            "fuzzymatching" => {
                fuzzy = parse_bool(name, value)?;
            }
            "limit" => {
                limit = parse_u32(name, value)?;
                if limit == 0 {
                    return Err(ApiError::bad_request("limit must be at least 1"));
                }
                if limit > MAX_LIMIT {
                    warnings.push(format!(
                        "limit {limit} is above the maximum; {MAX_LIMIT} results at most are returned"
                    ));
                    limit = MAX_LIMIT;
                }
            }
            "offset" => offset = parse_u32(name, value)?,
            // Other PS3.18 parameters that change nothing here.
            "emptyvaluematching" | "multiplevaluematching" => {
                warnings.push(format!(
                    "the {name} parameter is not supported and was ignored"
                ));
            }
            _ => {
                if name.contains('.') {
                    return Err(ApiError::bad_request(format!(
                        "matching on sequence attributes ({}) is not supported",
                        truncate(name, 80)
                    )));
                }
                let tag = resolve(name)?;
                if fixed.iter().any(|(t, _)| *t == tag) {
                    return Err(ApiError::bad_request(format!(
                        "{} is already fixed by the path",
                        truncate(name, 80)
                    )));
                }
                let condition = parse_condition(tag, value)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?;
                check_dates(tag, name, &condition)?;
                let matchable = UNIQUE_KEYS.contains(&tag) || matchable_keys(level).contains(&tag);
                if matchable {
                    keys.push(MatchKey { tag, condition });
                } else {
                    warnings.push(format!(
                        "{} cannot be matched at the {} level; it was returned but not matched",
                        truncate(name, 80),
                        level_name(level)
                    ));
                }
                // Matching keys are returned (PS3.18 §8.3.4.1).
                include.push(tag);
            }
        }
    }
    let include = if include_all {
        Include::All
    } else if include.is_empty() {
        Include::Default
    } else {
        include.sort();
        include.dedup();
        Include::Tags(include)
    };
    Ok(Search {
        query: Query {
            level,
            keys,
            include,
            fuzzy_matching: fuzzy,
            // QIDO-RS has no negotiation: a date and a time range always make one range.
            combined_datetime: true,
            limit: Some(limit),
            offset,
        },
        warnings,
    })
}

/// Rejects impossible calendar dates (month 13, 31 April) in DA matching values, which
/// a digits-only check lets through.
fn check_dates(tag: Tag, name: &str, condition: &Condition) -> Result<(), ApiError> {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
    let is_date = dicom_dictionary_std::StandardDataDictionary
        .by_tag(tag)
        .is_some_and(|e| matches!(e.vr(), VirtualVr::Exact(dicom_core::VR::DA)));
    if !is_date {
        return Ok(());
    }
    let dates: Vec<&str> = match condition {
        Condition::Exact(d) => vec![d.as_str()],
        Condition::Range { from, to } => [from, to]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect(),
        _ => Vec::new(),
    };
    for date in dates {
        if !valid_date(date) {
            return Err(ApiError::bad_request(format!(
                "invalid value {:?} for {}: not a date (YYYYMMDD)",
                truncate(date, 40),
                truncate(name, 80)
            )));
        }
    }
    Ok(())
}

/// `YYYYMMDD` naming a real day.
pub fn valid_date(d: &str) -> bool {
    if d.len() != 8 || !d.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let (Ok(y), Ok(m), Ok(day)) = (
        d[..4].parse::<u32>(),
        d[4..6].parse::<u32>(),
        d[6..].parse::<u32>(),
    ) else {
        return false;
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&day)
}

fn resolve(name: &str) -> Result<Tag, ApiError> {
    resolve_attribute(name).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn parse_bool(name: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "{name} must be true or false, not {:?}",
            truncate(value, 40)
        ))),
    }
}

fn parse_u32(name: &str, value: &str) -> Result<u32, ApiError> {
    value.parse::<u32>().map_err(|_| {
        ApiError::bad_request(format!(
            "{name} must be a non-negative integer, not {:?}",
            truncate(value, 40)
        ))
    })
}

/// Runs a search and answers it.
async fn search(
    state: &AppState,
    headers: &HeaderMap,
    level: QueryLevel,
    fixed: &[(Tag, &str)],
    raw_query: Option<String>,
) -> Result<Response, ApiError> {
    for (_, uid) in fixed {
        check_uid(uid)?;
    }
    if !media::accepts_dicom_json(&media::accept(headers)) {
        return Err(ApiError::not_acceptable(
            "search results are available as application/dicom+json only",
        ));
    }
    let pairs = parse_pairs(raw_query.as_deref().unwrap_or(""))?;
    let Search {
        mut query,
        mut warnings,
    } = parse_search(level, fixed, &pairs)?;
    // One more than asked: tells whether more results exist.
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    query.limit = Some(limit + 1);
    let mut results = state
        .archive
        .query(&query)
        .await
        .map_err(|e| ApiError::internal("search failed", e))?;
    if results.len() > limit as usize {
        results.truncate(limit as usize);
        warnings.push(format!(
            "there are more results: repeat the search with offset={}",
            u64::from(query.offset) + u64::from(limit)
        ));
    }
    let base = base_url(headers);
    let body: Vec<Value> = results
        .iter()
        .map(|set| {
            let url = retrieve_url(&base, level, set);
            let extra: Vec<(Tag, Value)> = url
                .map(|u| (stow_tags::RETRIEVE_URL, url_attribute(&u)))
                .into_iter()
                .collect();
            attributes_to_json(set, &extra)
        })
        .collect();
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/dicom+json")],
        serde_json::to_vec(&body).map_err(|e| ApiError::internal("cannot encode results", e))?,
    )
        .into_response();
    for warning in warnings {
        // Header values cannot hold control characters; ours never do, but be sure.
        let text = format!(
            "299 radserve: \"{}\"",
            warning.replace(['"', '\r', '\n'], "'")
        );
        if let Ok(value) = HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    Ok(response)
}

/// The RetrieveURL of one result, from its unique keys.
fn retrieve_url(base: &str, level: QueryLevel, set: &crate::store::AttributeSet) -> Option<String> {
    let uid = |tag: Tag| {
        set.get(&tag)
            .and_then(|a| a.values.first())
            .map(|v| v.trim_end_matches(['\0', ' ']).to_owned())
            .filter(|v| !v.is_empty())
    };
    let study = uid(tags::STUDY_INSTANCE_UID)?;
    match level {
        QueryLevel::Study => Some(format!("{base}/studies/{study}")),
        QueryLevel::Series => {
            let series = uid(tags::SERIES_INSTANCE_UID)?;
            Some(format!("{base}/studies/{study}/series/{series}"))
        }
        QueryLevel::Instance => {
            let series = uid(tags::SERIES_INSTANCE_UID)?;
            let sop = uid(tags::SOP_INSTANCE_UID)?;
            Some(format!(
                "{base}/studies/{study}/series/{series}/instances/{sop}"
            ))
        }
    }
}

macro_rules! qido_doc {
    () => {
        concat!(
            "Attribute matching: `{keyword or tag}={value}`; `includefield`, `fuzzymatching`, ",
            "`limit` (default 100, max 1000), `offset`."
        )
    };
}

/// Search for studies.
#[utoipa::path(get, path = "/dicomweb/studies", tag = "dicomweb", description = qido_doc!(),
    responses(
        (status = 200, description = "Matching studies (possibly none)", content_type = "application/dicom+json"),
        (status = 400, description = "Malformed query"),
        (status = 406, description = "Accept does not allow application/dicom+json")))]
pub async fn studies(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    search(&state, &headers, QueryLevel::Study, &[], q).await
}

/// Search for series in a study.
#[utoipa::path(get, path = "/dicomweb/studies/{study}/series", tag = "dicomweb", description = qido_doc!(),
    params(("study" = String, Path, description = "Study Instance UID")),
    responses(
        (status = 200, description = "Matching series", content_type = "application/dicom+json"),
        (status = 400, description = "Malformed query")))]
pub async fn study_series(
    State(state): State<AppState>,
    Path(study): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let fixed = [(tags::STUDY_INSTANCE_UID, study.as_str())];
    search(&state, &headers, QueryLevel::Series, &fixed, q).await
}

/// Search for instances in a study.
#[utoipa::path(get, path = "/dicomweb/studies/{study}/instances", tag = "dicomweb", description = qido_doc!(),
    params(("study" = String, Path, description = "Study Instance UID")),
    responses(
        (status = 200, description = "Matching instances", content_type = "application/dicom+json"),
        (status = 400, description = "Malformed query")))]
pub async fn study_instances(
    State(state): State<AppState>,
    Path(study): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let fixed = [(tags::STUDY_INSTANCE_UID, study.as_str())];
    search(&state, &headers, QueryLevel::Instance, &fixed, q).await
}

/// Search for instances in a series.
#[utoipa::path(get, path = "/dicomweb/studies/{study}/series/{series}/instances", tag = "dicomweb", description = qido_doc!(),
    params(("study" = String, Path, description = "Study Instance UID"),
           ("series" = String, Path, description = "Series Instance UID")),
    responses(
        (status = 200, description = "Matching instances", content_type = "application/dicom+json"),
        (status = 400, description = "Malformed query")))]
pub async fn series_instances(
    State(state): State<AppState>,
    Path((study, series)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let fixed = [
        (tags::STUDY_INSTANCE_UID, study.as_str()),
        (tags::SERIES_INSTANCE_UID, series.as_str()),
    ];
    search(&state, &headers, QueryLevel::Instance, &fixed, q).await
}

/// Search for series in every study.
#[utoipa::path(get, path = "/dicomweb/series", tag = "dicomweb", description = qido_doc!(),
    responses(
        (status = 200, description = "Matching series", content_type = "application/dicom+json"),
        (status = 400, description = "Malformed query")))]
pub async fn all_series(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    search(&state, &headers, QueryLevel::Series, &[], q).await
}

/// Search for instances in every study.
#[utoipa::path(get, path = "/dicomweb/instances", tag = "dicomweb", description = qido_doc!(),
    responses(
        (status = 200, description = "Matching instances", content_type = "application/dicom+json"),
        (status = 400, description = "Malformed query")))]
pub async fn all_instances(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    search(&state, &headers, QueryLevel::Instance, &[], q).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_decoded() {
        let p =
            parse_pairs("PatientName=wang*&includefield=00100020,StudyDate&x=%E7%8E%8B+a&&flag")
                .unwrap();
        assert_eq!(
            p,
            vec![
                ("PatientName".into(), "wang*".into()),
                ("includefield".into(), "00100020,StudyDate".into()),
                ("x".into(), "王 a".into()),
                ("flag".into(), "".into()),
            ]
        );
        assert!(parse_pairs("a=%E7%8E").is_err());
        assert!(parse_pairs("a=%zz").is_err());
        assert!(parse_pairs("a=%4").is_err());
        assert!(parse_pairs(&"a=1&".repeat(MAX_PARAMS + 1)).is_err());
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn control_parameters() {
        let s = parse_search(QueryLevel::Study, &[], &pairs(&[])).unwrap();
        assert_eq!(s.query.limit, Some(DEFAULT_LIMIT));
        assert_eq!(s.query.offset, 0);
        assert_eq!(s.query.include, Include::Default);
        assert!(!s.query.fuzzy_matching);

        let s = parse_search(
            QueryLevel::Study,
            &[],
            &pairs(&[
                ("limit", "5000"),
                ("offset", "20"),
                ("fuzzymatching", "true"),
                ("includefield", "all"),
            ]),
        )
        .unwrap();
        assert_eq!(s.query.limit, Some(MAX_LIMIT));
        assert_eq!(s.warnings.len(), 1);
        assert_eq!(s.query.offset, 20);
        assert!(s.query.fuzzy_matching);
        assert_eq!(s.query.include, Include::All);

        for bad in [
            ("limit", "-1"),
            ("limit", "0"),
            ("limit", "x"),
            ("offset", "1.5"),
            ("fuzzymatching", "yes"),
        ] {
            let e = parse_search(QueryLevel::Study, &[], &pairs(&[bad])).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad:?}");
        }
    }

    #[test]
    fn path_uids_become_keys_and_cannot_be_repeated() {
        let fixed = [(tags::STUDY_INSTANCE_UID, "1.2.3")];
        let s = parse_search(QueryLevel::Series, &fixed, &[]).unwrap();
        assert_eq!(
            s.query.keys,
            vec![MatchKey {
                tag: tags::STUDY_INSTANCE_UID,
                condition: Condition::Exact("1.2.3".into())
            }]
        );
        assert_eq!(s.query.level, QueryLevel::Series);
    }

    #[test]
    fn calendar_dates() {
        assert!(valid_date("20240229"));
        assert!(!valid_date("20230229"));
        assert!(!valid_date("20261399"));
        assert!(!valid_date("20260431"));
        assert!(!valid_date("2026-01-01"));
        let range = Condition::Range {
            from: Some("20260101".into()),
            to: Some("20261340".into()),
        };
        assert!(check_dates(tags::STUDY_DATE, "StudyDate", &range).is_err());
        assert!(
            check_dates(
                tags::PATIENT_ID,
                "PatientID",
                &Condition::Exact("20261399".into())
            )
            .is_ok()
        );
    }

    #[test]
    fn attributes_resolve_by_keyword_or_tag() {
        let s = parse_search(
            QueryLevel::Study,
            &[],
            &pairs(&[
                ("PatientName", "wu*"),
                ("00080020", "20260101-"),
                ("includefield", "00100020,StudyDescription"),
            ]),
        )
        .unwrap();
        assert_eq!(s.query.keys.len(), 2);
        assert_eq!(s.query.keys[0].tag, tags::PATIENT_NAME);
        assert_eq!(s.query.keys[1].tag, tags::STUDY_DATE);
        let Include::Tags(t) = &s.query.include else {
            panic!("{:?}", s.query.include)
        };
        assert!(
            t.contains(&tags::PATIENT_ID)
                && t.contains(&tags::STUDY_DESCRIPTION)
                && t.contains(&tags::PATIENT_NAME)
        );
        for bad in [
            ("NoSuchThing", "1"),
            ("StudyDate", "2026-13-45"),
            ("includefield", "Bogus"),
        ] {
            assert_eq!(
                parse_search(QueryLevel::Study, &[], &pairs(&[bad]))
                    .unwrap_err()
                    .status,
                StatusCode::BAD_REQUEST,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn sequence_paths_are_refused() {
        let e = parse_search(
            QueryLevel::Study,
            &[],
            &pairs(&[("ReferencedStudySequence.ReferencedSOPInstanceUID", "1")]),
        )
        .unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn retrieve_urls_by_level() {
        use crate::store::{Attribute, AttributeSet};
        let mut set = AttributeSet::new();
        for (tag, v) in [
            (tags::STUDY_INSTANCE_UID, "1"),
            (tags::SERIES_INSTANCE_UID, "2"),
            (tags::SOP_INSTANCE_UID, "3"),
        ] {
            set.insert(
                tag,
                Attribute {
                    vr: dicom_core::VR::UI,
                    values: vec![v.into()],
                },
            );
        }
        assert_eq!(
            retrieve_url("b", QueryLevel::Study, &set).as_deref(),
            Some("b/studies/1")
        );
        assert_eq!(
            retrieve_url("b", QueryLevel::Series, &set).as_deref(),
            Some("b/studies/1/series/2")
        );
        assert_eq!(
            retrieve_url("b", QueryLevel::Instance, &set).as_deref(),
            Some("b/studies/1/series/2/instances/3")
        );
        set.remove(&tags::SOP_INSTANCE_UID);
        assert_eq!(retrieve_url("b", QueryLevel::Instance, &set), None);
    }
}
