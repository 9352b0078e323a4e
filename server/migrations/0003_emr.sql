-- radserve index, version 3: EMR records and the study ↔ order/patient join.

-- FHIR resources as received (Patient, ServiceRequest, Encounter): the latest version of
-- each; an update replaces the body and bumps the version, never adds a second row.
CREATE TABLE emr_resources (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    body TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (resource_type, id)
);

-- The join's outcome per study. state: linked | ambiguous | unmatched.
CREATE TABLE study_links (
    study_instance_uid TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    patient TEXT,
    order_id TEXT,
    method TEXT,
    confidence REAL,
    reason TEXT,
    -- JSON: the candidate links of an ambiguous study
    candidates TEXT NOT NULL DEFAULT '[]',
    linked_at TEXT NOT NULL,
    -- who resolved it by hand (manual links are never replaced by the automatic join)
    resolved_by TEXT
);
CREATE INDEX study_links_patient ON study_links(patient);
CREATE INDEX study_links_order ON study_links(order_id);
CREATE INDEX study_links_state ON study_links(state);
