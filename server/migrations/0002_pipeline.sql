-- radserve index, version 2: the study pipeline (activity, jobs, findings).

-- One row per study: its newest instance, kept by a trigger in the same transaction as the
-- instance insert (so an acknowledged instance always counts as activity, even after a crash),
-- and how far the pipeline has routed it.
CREATE TABLE study_activity (
    study_instance_uid TEXT PRIMARY KEY,
    last_instance_id INTEGER NOT NULL,
    last_received_at TEXT NOT NULL,
    last_source TEXT NOT NULL,
    -- last_instance_id when jobs were last made for the study (0: never)
    routed_instance_id INTEGER NOT NULL DEFAULT 0,
    -- set by POST /api/v1/studies/{uid}/process: route now, do not wait for stability
    process_requested INTEGER NOT NULL DEFAULT 0,
    requested_priority INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX study_activity_pending ON study_activity(routed_instance_id, last_instance_id);

-- Studies already stored count as routed: models run on new arrivals, or when asked.
INSERT INTO study_activity (study_instance_uid, last_instance_id, last_received_at, last_source, routed_instance_id)
SELECT st.study_instance_uid, MAX(i.id), MAX(i.received_at), '', MAX(i.id)
FROM instances i JOIN series se ON se.id = i.series_ref JOIN studies st ON st.id = se.study_ref
GROUP BY st.id;

-- The pipeline's own results (SR, SEG; source `pipeline:<model>`) are not new activity.
CREATE TRIGGER instances_study_activity AFTER INSERT ON instances
WHEN NEW.source NOT LIKE 'pipeline:%'
BEGIN
    INSERT INTO study_activity (study_instance_uid, last_instance_id, last_received_at, last_source)
    SELECT st.study_instance_uid, NEW.id, NEW.received_at, NEW.source
    FROM series se JOIN studies st ON st.id = se.study_ref
    WHERE se.id = NEW.series_ref
    ON CONFLICT(study_instance_uid) DO UPDATE SET
        last_instance_id = excluded.last_instance_id,
        last_received_at = excluded.last_received_at,
        last_source = excluded.last_source;
END;

-- One model run on one series. state: queued → running → done | failed | cancelled.
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    study_instance_uid TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    model TEXT NOT NULL,
    -- 0 stat, 1 routine: lower runs first
    priority INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    last_error TEXT,
    -- a queued job is not claimed before this time (retry backoff)
    not_before TEXT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    -- the process running it, and until when its claim holds without a heartbeat
    lease_owner TEXT,
    lease_until TEXT,
    -- study_activity.last_instance_id when the job was made
    instances_through INTEGER NOT NULL,
    -- 1 for the first result of (study, series, model), then 2, 3, ...
    result_version INTEGER NOT NULL,
    -- per-stage timings of the run that finished it, JSON (milliseconds)
    timings TEXT,
    sr_sop_instance_uid TEXT,
    seg_sop_instance_uid TEXT
);
CREATE INDEX jobs_claim ON jobs(state, priority, id);
CREATE INDEX jobs_study ON jobs(study_instance_uid);

-- What a job found: one row per label output (classification) or per finding (segmentation).
CREATE TABLE findings (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    study_instance_uid TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    model TEXT NOT NULL,
    model_version TEXT NOT NULL,
    weights_sha256 TEXT NOT NULL,
    result_version INTEGER NOT NULL,
    superseded INTEGER NOT NULL DEFAULT 0,
    label TEXT NOT NULL,
    code_scheme TEXT NOT NULL,
    code_value TEXT NOT NULL,
    code_meaning TEXT NOT NULL,
    probability REAL NOT NULL,
    positive INTEGER NOT NULL,
    tracking_uid TEXT NOT NULL,
    -- JSON: source SOP Instance UIDs, measurements, location
    source_instances TEXT NOT NULL,
    measurements TEXT NOT NULL,
    location TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX findings_study ON findings(study_instance_uid);
CREATE INDEX findings_job ON findings(job_id);
