-- radserve archive index, version 1.
-- Text is UTF-8 (decoded with the full SpecificCharacterSet); `*_norm` columns hold the
-- upper-cased person name for case-insensitive matching. Multi-valued text is joined with `\`.

CREATE TABLE patients (
    id INTEGER PRIMARY KEY,
    -- PatientID + IssuerOfPatientID, or a per-study key when PatientID is empty
    patient_key TEXT NOT NULL UNIQUE,
    patient_id TEXT NOT NULL,
    issuer_of_patient_id TEXT NOT NULL,
    patient_name TEXT NOT NULL,
    patient_name_norm TEXT NOT NULL,
    patient_birth_date TEXT NOT NULL,
    patient_sex TEXT NOT NULL
);
CREATE INDEX patients_name_norm ON patients(patient_name_norm);
CREATE INDEX patients_patient_id ON patients(patient_id);

CREATE TABLE studies (
    id INTEGER PRIMARY KEY,
    patient_ref INTEGER NOT NULL REFERENCES patients(id),
    study_instance_uid TEXT NOT NULL UNIQUE,
    study_date TEXT NOT NULL,
    study_time TEXT NOT NULL,
    accession_number TEXT NOT NULL,
    study_id TEXT NOT NULL,
    study_description TEXT NOT NULL,
    referring_physician_name TEXT NOT NULL,
    referring_physician_name_norm TEXT NOT NULL,
    specific_character_set TEXT NOT NULL
);
CREATE INDEX studies_patient ON studies(patient_ref);
CREATE INDEX studies_date ON studies(study_date);
CREATE INDEX studies_accession ON studies(accession_number);

CREATE TABLE series (
    id INTEGER PRIMARY KEY,
    study_ref INTEGER NOT NULL REFERENCES studies(id),
    series_instance_uid TEXT NOT NULL UNIQUE,
    modality TEXT NOT NULL,
    series_number INTEGER,
    series_description TEXT NOT NULL,
    body_part_examined TEXT NOT NULL
);
CREATE INDEX series_study ON series(study_ref);
CREATE INDEX series_modality ON series(modality);

CREATE TABLE instances (
    id INTEGER PRIMARY KEY,
    series_ref INTEGER NOT NULL REFERENCES series(id),
    sop_instance_uid TEXT NOT NULL UNIQUE,
    sop_class_uid TEXT NOT NULL,
    instance_number INTEGER,
    rows INTEGER,
    columns INTEGER,
    number_of_frames INTEGER,
    transfer_syntax_uid TEXT NOT NULL,
    blob_key TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    received_at TEXT NOT NULL,
    source TEXT NOT NULL
);
CREATE INDEX instances_series ON instances(series_ref);
CREATE INDEX instances_blob ON instances(blob_key);

-- Different bytes received for a stored SOP Instance UID, and what the policy did.
CREATE TABLE duplicate_conflicts (
    id INTEGER PRIMARY KEY,
    sop_instance_uid TEXT NOT NULL,
    stored_sha256 TEXT NOT NULL,
    received_sha256 TEXT NOT NULL,
    received_size INTEGER NOT NULL,
    policy TEXT NOT NULL,
    action TEXT NOT NULL,
    source TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE INDEX duplicate_conflicts_sop ON duplicate_conflicts(sop_instance_uid);

CREATE TABLE api_tokens (
    id INTEGER PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    label TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    user TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    resource TEXT NOT NULL,
    client TEXT NOT NULL,
    outcome TEXT NOT NULL
);
