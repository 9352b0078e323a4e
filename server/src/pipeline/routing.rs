//! Routing: which models a study's series go to, from `[[routes]]` in the config (or, when
//! there are none, from each model package's own `[input]`: modalities and body part).

use regex::Regex;
use serde::Deserialize;

use crate::store::Priority;
use crate::store::jobs::{NewJob, SeriesSummary};

/// A value or a list of values in a route's `when` table (`modality = "CT"` or
/// `modality = ["CT", "MR"]`); matched ignoring ASCII case.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn matches(&self, value: &str) -> bool {
        let value = value.trim();
        match self {
            OneOrMany::One(v) => v.trim().eq_ignore_ascii_case(value),
            OneOrMany::Many(vs) => vs.iter().any(|v| v.trim().eq_ignore_ascii_case(value)),
        }
    }
}

/// `when = { ... }` of a route: every key given must match.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCondition {
    pub modality: Option<OneOrMany>,
    pub body_part: Option<OneOrMany>,
    pub sop_class: Option<OneOrMany>,
    /// A regular expression searched in SeriesDescription.
    pub series_description: Option<String>,
    /// Smallest `[rows, columns]` accepted.
    pub min_size: Option<[i64; 2]>,
    /// Largest `[rows, columns]` accepted.
    pub max_size: Option<[i64; 2]>,
}

/// One `[[routes]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub when: RouteCondition,
    pub models: Vec<String>,
    /// `stat` or `routine` (default).
    #[serde(default)]
    pub priority: Option<String>,
    /// Seconds a study this route selects must rest before it counts as complete
    /// (default: `[pipeline] stable_after_s`; a per-caller setting wins over both).
    #[serde(default)]
    pub stable_after_s: Option<f64>,
}

/// A checked route.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub when: RouteCondition,
    series_description: Option<Regex>,
    pub models: Vec<String>,
    pub priority: Priority,
    pub stable_after: Option<std::time::Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[[routes]] entry {index}: {reason}")]
pub struct RouteError {
    pub index: usize,
    pub reason: String,
}

/// Longest accepted SeriesDescription pattern (regexes are compiled with a size limit too).
const MAX_PATTERN_LEN: usize = 1024;

impl Route {
    /// Parses one raw `[[routes]]` table; `known_models` are the configured models' names.
    pub fn parse(
        index: usize,
        table: &toml::Table,
        known_models: &[String],
    ) -> Result<Route, RouteError> {
        let invalid = |reason: String| RouteError { index, reason };
        let config: RouteConfig = table
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| invalid(e.message().to_owned()))?;
        if config.models.is_empty() {
            return Err(invalid("`models` is empty".into()));
        }
        if let Some(unknown) = config.models.iter().find(|m| !known_models.contains(m)) {
            return Err(invalid(format!(
                "model `{unknown}` is not configured (configured: {})",
                known_models.join(", ")
            )));
        }
        let priority = match &config.priority {
            None => Priority::Routine,
            Some(p) => Priority::parse(p)
                .ok_or_else(|| invalid(format!("priority {p:?}: expected stat or routine")))?,
        };
        let series_description = match &config.when.series_description {
            None => None,
            Some(pattern) if pattern.len() > MAX_PATTERN_LEN => {
                return Err(invalid(format!(
                    "series_description pattern is longer than {MAX_PATTERN_LEN} characters"
                )));
            }
            Some(pattern) => Some(
                regex::RegexBuilder::new(pattern)
                    .case_insensitive(true)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| invalid(format!("series_description: {e}")))?,
            ),
        };
        let stable_after = match config.stable_after_s {
            None => None,
            Some(s) if s.is_finite() && (0.0..=86_400.0).contains(&s) => {
                Some(std::time::Duration::from_secs_f64(s))
            }
            Some(s) => {
                return Err(invalid(format!(
                    "stable_after_s = {s} is outside 0..=86400 seconds"
                )));
            }
        };
        Ok(Route {
            name: config.name.unwrap_or_else(|| format!("route {index}")),
            stable_after,
            when: config.when,
            series_description,
            models: config.models,
            priority,
        })
    }

    /// The route a model package implies: its modalities and body part.
    pub fn for_package(manifest: &radserve_models::package::Manifest) -> Route {
        let input = &manifest.input;
        Route {
            name: format!("{} (from its package)", manifest.model.name),
            when: RouteCondition {
                modality: Some(OneOrMany::Many(input.modalities.clone())),
                body_part: (!input.body_part.is_empty())
                    .then(|| OneOrMany::One(input.body_part.clone())),
                ..RouteCondition::default()
            },
            series_description: None,
            models: vec![manifest.model.name.clone()],
            priority: Priority::Routine,
            stable_after: None,
        }
    }

    /// Whether this route takes the series.
    pub fn matches(&self, series: &SeriesSummary) -> bool {
        let when = &self.when;
        let size_ok = |bound: Option<[i64; 2]>, at_least: bool| {
            bound.is_none_or(|[rows, columns]| match (series.rows, series.columns) {
                (Some(r), Some(c)) if at_least => r >= rows && c >= columns,
                (Some(r), Some(c)) => r <= rows && c <= columns,
                _ => false,
            })
        };
        when.modality
            .as_ref()
            .is_none_or(|m| m.matches(&series.modality))
            && when
                .body_part
                .as_ref()
                .is_none_or(|b| b.matches(&series.body_part_examined))
            && when
                .sop_class
                .as_ref()
                .is_none_or(|s| s.matches(&series.sop_class_uid))
            && self
                .series_description
                .as_ref()
                .is_none_or(|re| re.is_match(&series.series_description))
            && size_ok(when.min_size, true)
            && size_ok(when.max_size, false)
    }
}

/// The jobs for a study's series: one per (series, model) that some route selects; the
/// most urgent priority of the routes that select it (or `at_least`) wins.
pub fn route_study(
    routes: &[Route],
    series: &[SeriesSummary],
    at_least: Priority,
    max_attempts: u32,
) -> Vec<NewJob> {
    let mut jobs: Vec<NewJob> = Vec::new();
    for s in series {
        for route in routes.iter().filter(|r| r.matches(s)) {
            for model in &route.models {
                let priority = route.priority.min(at_least);
                match jobs
                    .iter_mut()
                    .find(|j| j.series_instance_uid == s.series_instance_uid && &j.model == model)
                {
                    Some(job) => job.priority = job.priority.min(priority),
                    None => jobs.push(NewJob {
                        series_instance_uid: s.series_instance_uid.clone(),
                        model: model.clone(),
                        priority,
                        max_attempts,
                    }),
                }
            }
        }
    }
    jobs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(modality: &str, body_part: &str, description: &str, size: i64) -> SeriesSummary {
        SeriesSummary {
            series_instance_uid: format!("1.2.{modality}.{size}"),
            modality: modality.into(),
            body_part_examined: body_part.into(),
            series_description: description.into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            rows: Some(size),
            columns: Some(size),
            instances: 10,
        }
    }

    fn route(text: &str) -> Result<Route, RouteError> {
        let models = vec![
            "ct-lung-nodule".to_owned(),
            "chest-xray-findings".to_owned(),
        ];
        Route::parse(0, &text.parse().unwrap(), &models)
    }

    #[test]
    fn routes_match_on_every_given_key() {
        let r = route(
            "models = [\"ct-lung-nodule\"]\npriority = \"stat\"\n\
             when = { modality = \"ct\", body_part = [\"CHEST\", \"LUNG\"], series_description = \"^axial\", min_size = [256, 256] }",
        )
        .unwrap();
        assert!(r.matches(&series("CT", "chest", "Axial 1mm", 512)));
        assert!(!r.matches(&series("MR", "CHEST", "Axial", 512)));
        assert!(!r.matches(&series("CT", "HEAD", "Axial", 512)));
        assert!(!r.matches(&series("CT", "CHEST", "Coronal", 512)));
        assert!(!r.matches(&series("CT", "CHEST", "Axial", 128)));
        let jobs = route_study(
            std::slice::from_ref(&r),
            &[
                series("CT", "CHEST", "axial", 512),
                series("CT", "HEAD", "axial", 512),
            ],
            Priority::Routine,
            3,
        );
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].priority, Priority::Stat);
    }

    #[test]
    fn the_design_documents_route_is_accepted() {
        let r = route(
            "when = { modality = \"CT\", body_part = \"CHEST\" }\nmodels = [\"ct-lung-nodule\"]\nstable_after_s = 30",
        )
        .unwrap();
        assert_eq!(r.stable_after, Some(std::time::Duration::from_secs(30)));
        assert!(r.matches(&series("CT", "CHEST", "", 512)));
        assert!(route("models = [\"ct-lung-nodule\"]\nstable_after_s = -2").is_err());
    }

    #[test]
    fn bad_routes_are_refused_with_the_reason() {
        for (text, needle) in [
            ("models = []", "`models` is empty"),
            ("models = [\"nope\"]", "model `nope` is not configured"),
            (
                "models = [\"ct-lung-nodule\"]\npriority = \"soon\"",
                "priority",
            ),
            (
                "models = [\"ct-lung-nodule\"]\nwhen = { series_description = \"(\" }",
                "series_description",
            ),
            (
                "models = [\"ct-lung-nodule\"]\nwhen = { colour = \"red\" }",
                "unknown field",
            ),
        ] {
            let err = route(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
