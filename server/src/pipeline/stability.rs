//! Stability: route each study once it has rested (or when asked), and keep the job
//! gauges and expired leases in order.

use std::time::Duration;

use super::Pipeline;
use super::routing::route_study;
use crate::metrics;
use crate::shutdown::Shutdown;

/// Studies looked at per tick.
const STUDIES_PER_TICK: u32 = 256;

/// Runs until shutdown: every poll interval, routes the studies that are due.
pub async fn run(pipeline: Pipeline, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(pipeline.config.poll_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.requested() => return,
        }
        if let Err(e) = step(&pipeline).await {
            tracing::warn!(error = %e, "pipeline stability step failed; trying again");
        }
    }
}

/// One look at the pending studies, the leases and the gauges.
pub async fn step(pipeline: &Pipeline) -> Result<(), crate::store::StoreError> {
    let _one_pass = pipeline.routing.lock().await;
    let jobs = pipeline.archive.jobs();
    let reclaimed = jobs.reclaim_expired().await?;
    if reclaimed > 0 {
        tracing::warn!(
            jobs = reclaimed,
            "jobs whose worker stopped are queued again"
        );
        pipeline.jobs_created.notify_waiters();
    }
    let now = chrono::Utc::now();
    for study in jobs.pending_studies(STUDIES_PER_TICK).await? {
        let rested = chrono::DateTime::parse_from_rfc3339(&study.last_received_at)
            .map(|at| {
                (now - at.with_timezone(&chrono::Utc))
                    .to_std()
                    .unwrap_or(Duration::ZERO)
            })
            .unwrap_or(Duration::MAX);
        // Only the series that changed (all of them when reprocessing was asked).
        let series = jobs
            .series_of_study(&study.study_instance_uid, study.routed_instance_id)
            .await?;
        let route_wait = pipeline
            .routes
            .iter()
            .filter(|r| series.iter().any(|s| r.matches(s)))
            .filter_map(|r| r.stable_after)
            .max();
        if !study.process_requested
            && rested < pipeline.config.stable_after(&study.last_source, route_wait)
        {
            continue;
        }
        let new_jobs = route_study(
            &pipeline.routes,
            &series,
            study.requested_priority,
            pipeline.config.max_attempts,
        );
        match jobs
            .create_jobs(&study.study_instance_uid, study.last_instance_id, &new_jobs)
            .await?
        {
            Some(ids) if !ids.is_empty() => {
                tracing::info!(jobs = ids.len(), "study complete: jobs queued");
                tracing::debug!(study = %study.study_instance_uid, ?ids, "jobs created");
                pipeline.jobs_created.notify_waiters();
            }
            Some(_) => tracing::debug!(
                study = %study.study_instance_uid,
                "study complete: no route selects its series"
            ),
            None => continue, // an instance arrived meanwhile: wait for it to rest
        }
        // The study is complete: tie it to its order and patient (the EMR side may come
        // later; an ingest joins again).
        if let Some(emr) = &pipeline.emr
            && let Err(e) = emr.join_study(&study.study_instance_uid).await
        {
            tracing::warn!(error = %e, "EMR join of a complete study failed");
        }
    }
    for (state, count) in jobs.counts_by_state().await? {
        metrics::set_jobs(&state, count);
    }
    // Every served label gets a value, zero included, so a count that falls to zero shows.
    let counts = jobs.positive_findings_by_label().await?;
    for model in pipeline.models.list() {
        for label in &model.manifest.output.labels {
            let count = counts
                .iter()
                .find(|(m, l, _)| *m == model.name && *l == label.name)
                .map_or(0, |(_, _, n)| *n);
            metrics::set_findings(&model.name, &label.name, count);
        }
    }
    Ok(())
}
