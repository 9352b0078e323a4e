-- radserve index, version 4: results sent out to the EMR (FHIR push, HL7 v2 ORU^R01).

-- The destinations configured now ('fhir', 'hl7'); rewritten at each start from `[emr]`.
-- A job that finishes while a destination is configured gets an outbox row for it.
CREATE TABLE emr_destinations (name TEXT PRIMARY KEY);

-- One row per (destination, job). state: pending | delivered | failed.
-- revision counts the versions of the content: it goes up when the study's EMR link
-- changes after a delivery, so the destination gets the result again with the new
-- patient and order. A send records its outcome only if the revision it sent is still
-- the current one.
CREATE TABLE emr_outbox (
    id INTEGER PRIMARY KEY,
    destination TEXT NOT NULL,
    job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    study_instance_uid TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    revision INTEGER NOT NULL DEFAULT 1,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_error TEXT,
    -- what the destination answered last (HTTP status and outcome, or the HL7 ACK)
    response TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    delivered_at TEXT,
    UNIQUE (destination, job_id)
);
CREATE INDEX emr_outbox_due ON emr_outbox(state, next_attempt_at);
CREATE INDEX emr_outbox_study ON emr_outbox(study_instance_uid);

-- In the job's own completion transaction: a finished job is never missed by a crash.
CREATE TRIGGER jobs_done_emr_outbox AFTER UPDATE OF state ON jobs
WHEN NEW.state = 'done' AND OLD.state != 'done'
BEGIN
    INSERT INTO emr_outbox (destination, job_id, study_instance_uid, next_attempt_at, created_at, updated_at)
    SELECT name, NEW.id, NEW.study_instance_uid,
        strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
        strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
    FROM emr_destinations WHERE true
    ON CONFLICT (destination, job_id) DO NOTHING;
END;

-- A study linked (or linked differently) after its results went out: send them again.
CREATE TRIGGER study_links_insert_emr_outbox AFTER INSERT ON study_links
WHEN NEW.state = 'linked'
BEGIN
    UPDATE emr_outbox SET state = 'pending', revision = revision + 1, attempts = 0,
        last_error = NULL, next_attempt_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
        updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
    WHERE study_instance_uid = NEW.study_instance_uid AND state IN ('delivered', 'failed');
END;

CREATE TRIGGER study_links_update_emr_outbox AFTER UPDATE ON study_links
WHEN NEW.state = 'linked' AND (OLD.state IS NOT 'linked' OR OLD.patient IS NOT NEW.patient
    OR OLD.order_id IS NOT NEW.order_id)
BEGIN
    UPDATE emr_outbox SET state = 'pending', revision = revision + 1, attempts = 0,
        last_error = NULL, next_attempt_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
        updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
    WHERE study_instance_uid = NEW.study_instance_uid AND state IN ('delivered', 'failed');
END;
