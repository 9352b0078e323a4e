//! A whole synthetic set: plan the patients and studies from the seed (sequentially, so the
//! set is the same whatever the thread count), render and write the studies in parallel,
//! then the manifest, the EMR export and the true study↔order pairs.
//!
//! Layout of the output directory:
//! ```text
//! OUT/manifest.json                     patients and studies (ground_truth::Manifest)
//! OUT/emr_bundle.json                   FHIR R4 Bundle: Patient, ServiceRequest, Encounter
//! OUT/true_pairs.json                   which order each study answers
//! OUT/studies/0001_CT/CT0001.dcm …      one directory per study, one file per instance
//! OUT/studies/0001_CT/ground_truth.json the study's findings, in mm and in pixels
//! ```

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

use crate::ct::{self, CtError, CtPhantom, CtSpec};
use crate::dicom_write::{self, CtSlice, Radiograph, StudyContext, WriteError};
use crate::emr;
use crate::ground_truth::{
    CtGroundTruth, GROUND_TRUTH_FILE, MANIFEST_FILE, Manifest, Modality, RadiographGroundTruth,
    StudyGroundTruth, StudyRecord, XrayLabel,
};
use crate::patient::{self, Patient, TextEncoding};
use crate::radiograph::{self, RadiographError, RadiographSpec};
use crate::uid::random_uid;

/// Largest radiograph edge we write (pixels).
pub const MAX_XRAY_SIZE: u32 = 4096;
/// Smallest radiograph edge we write (pixels).
pub const MIN_XRAY_SIZE: u32 = 64;
/// Most slices in one CT series.
pub const MAX_CT_SLICES: usize = 2000;
/// Most studies in one set.
pub const MAX_STUDIES: usize = 100_000;
/// Width of the radiograph's field of view (mm); pixel spacing follows from the size.
const XRAY_FIELD_MM: f64 = 358.4;

#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    pub out: PathBuf,
    pub seed: u64,
    pub ct_studies: usize,
    pub xray_studies: usize,
    pub ct_slices: usize,
    pub xray_size: u32,
    pub nodule_diameter_mm: (f64, f64),
}

impl GenerateOptions {
    pub fn new(out: impl Into<PathBuf>) -> Self {
        GenerateOptions {
            out: out.into(),
            seed: 1,
            ct_studies: 1,
            xray_studies: 4,
            ct_slices: 100,
            xray_size: 1024,
            nodule_diameter_mm: ct::DEFAULT_NODULE_DIAMETER_MM,
        }
    }

    /// Refuses impossible parameters before anything is written.
    pub fn validate(&self) -> Result<(), GenerateError> {
        let invalid = |message: String| Err(GenerateError::InvalidOptions(message));
        if self.ct_studies + self.xray_studies == 0 {
            return invalid("nothing to generate: ask for at least one CT or X-ray study".into());
        }
        if self.ct_studies + self.xray_studies > MAX_STUDIES {
            return invalid(format!("at most {MAX_STUDIES} studies per set"));
        }
        if self.ct_studies > 0 && !(1..=MAX_CT_SLICES).contains(&self.ct_slices) {
            return invalid(format!(
                "CT slices must be between 1 and {MAX_CT_SLICES}, got {}",
                self.ct_slices
            ));
        }
        if self.xray_studies > 0 && !(MIN_XRAY_SIZE..=MAX_XRAY_SIZE).contains(&self.xray_size) {
            return invalid(format!(
                "radiograph size must be between {MIN_XRAY_SIZE} and {MAX_XRAY_SIZE} pixels, got {}",
                self.xray_size
            ));
        }
        ct::validate_nodule_diameters(self.nodule_diameter_mm)?;
        Ok(())
    }

    /// Number of DICOM instances the set will hold (for progress bars).
    pub fn instance_count(&self) -> u64 {
        (self.ct_studies * self.ct_slices + self.xray_studies) as u64
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("{0}")]
    InvalidOptions(String),
    #[error(transparent)]
    Ct(#[from] CtError),
    #[error(transparent)]
    Radiograph(#[from] RadiographError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("cannot write to {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write JSON to {path}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> GenerateError + '_ {
    move |source| GenerateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One planned study and the seed its pixels are drawn from.
#[derive(Debug, Clone)]
struct PlannedStudy {
    record: StudyRecord,
    seed: u64,
}

const REFERRING_PHYSICIANS: &[&str] = &[
    "Okafor^Chidi^^Dr.",
    "Lindqvist^Karin^^Dr.",
    "Moreau^Julien^^Dr.",
    "Tanaka^Yuki^^Dr.",
    "Hughes^Rebecca^^Dr.",
    "Ferreira^Paulo^^Dr.",
];

/// Decides patients and studies from the seed alone.
fn plan(options: &GenerateOptions) -> (Vec<Patient>, Vec<PlannedStudy>) {
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let mut modalities: Vec<Modality> = Vec::new();
    modalities.extend(std::iter::repeat_n(Modality::Ct, options.ct_studies));
    for i in 0..options.xray_studies {
        modalities.push(if i % 2 == 0 {
            Modality::Dx
        } else {
            Modality::Cr
        });
    }
    modalities.shuffle(&mut rng);

    let mut patients: Vec<Patient> = Vec::new();
    let mut studies = Vec::with_capacity(modalities.len());
    for (index, modality) in modalities.into_iter().enumerate() {
        // The first patient is Chinese and has the first two studies, one written in GB18030
        // and one in UTF-8, so every set shows the same name in both encodings.
        let patient_index = if index == 1 {
            0
        } else if !patients.is_empty() && rng.random_bool(0.3) {
            rng.random_range(0..patients.len())
        } else {
            let chinese = patients.is_empty() || rng.random_bool(0.3);
            patients.push(patient::random_patient(&mut rng, patients.len(), chinese));
            patients.len() - 1
        };
        let patient = &patients[patient_index];
        let encoding = match (index, patient.name.is_chinese()) {
            (0, _) => TextEncoding::Gb18030,
            (1, _) => TextEncoding::Utf8,
            (_, true) if rng.random_bool(0.5) => TextEncoding::Gb18030,
            (_, true) => TextEncoding::Utf8,
            (_, false) if rng.random_bool(0.2) => TextEncoding::Utf8,
            (_, false) => TextEncoding::Latin1,
        };
        let date = chrono::NaiveDate::from_ymd_opt(2026, 1, 5)
            .expect("fixed date")
            .checked_add_days(chrono::Days::new(rng.random_range(0..300)))
            .expect("within range");
        let (description, body_part) = match modality {
            Modality::Ct => ("CT CHEST WITHOUT CONTRAST", "CHEST"),
            Modality::Dx | Modality::Cr => ("XR CHEST PA", "CHEST"),
        };
        let record = StudyRecord {
            study_instance_uid: random_uid(&mut rng),
            accession_number: format!(
                "A{:08}",
                10_000_000 + index * 113 + rng.random_range(0..100)
            ),
            patient_index,
            modality,
            study_date: date.format("%Y%m%d").to_string(),
            study_time: format!(
                "{:02}{:02}{:02}",
                rng.random_range(7..19),
                rng.random_range(0..60),
                rng.random_range(0..60)
            ),
            study_description: description.to_string(),
            body_part_examined: body_part.to_string(),
            referring_physician: REFERRING_PHYSICIANS
                .choose(&mut rng)
                .expect("non-empty table")
                .to_string(),
            encoding,
            directory: format!("studies/{:04}_{}", index + 1, modality.code()),
            series_instance_uid: random_uid(&mut rng),
            instance_count: match modality {
                Modality::Ct => options.ct_slices,
                _ => 1,
            },
        };
        studies.push(PlannedStudy {
            record,
            seed: rng.random(),
        });
    }
    (patients, studies)
}

/// Generates the whole set described by `options`. `on_instance` is called once per DICOM
/// file written, from any thread (drive a progress bar with it).
pub fn generate(
    options: &GenerateOptions,
    on_instance: &(dyn Fn() + Sync),
) -> Result<Manifest, GenerateError> {
    options.validate()?;
    prepare_output_dir(&options.out)?;
    let (patients, studies) = plan(options);
    studies.par_iter().try_for_each(|planned| {
        let patient = &patients[planned.record.patient_index];
        let dir = options.out.join(&planned.record.directory);
        fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let truth = match planned.record.modality {
            Modality::Ct => write_ct_study(options, patient, planned, &dir, on_instance)?,
            Modality::Dx | Modality::Cr => {
                write_radiograph_study(options, patient, planned, &dir, on_instance)?
            }
        };
        write_json(&dir.join(GROUND_TRUTH_FILE), &truth)
    })?;

    let manifest = Manifest {
        generator: format!("dicom-samples {}", env!("CARGO_PKG_VERSION")),
        seed: options.seed,
        patients,
        studies: studies.into_iter().map(|s| s.record).collect(),
    };
    write_json(&options.out.join(MANIFEST_FILE), &manifest)?;
    // The EMR draws from its own stream so that adding EMR quirks never changes the images.
    let mut emr_rng = ChaCha8Rng::seed_from_u64(options.seed ^ 0x454D_5245_5850_4F52);
    let export = emr::build_emr_export(&manifest, &mut emr_rng);
    write_json(&options.out.join(emr::EMR_BUNDLE_FILE), &export.bundle)?;
    write_json(
        &options.out.join(emr::TRUE_PAIRS_FILE),
        &emr::true_pairs_document(&export),
    )?;
    Ok(manifest)
}

/// Creates the output directory and proves it is writable before any work starts.
fn prepare_output_dir(out: &Path) -> Result<(), GenerateError> {
    fs::create_dir_all(out).map_err(io_error(out))?;
    let probe = out.join(".dicom-samples-write-test");
    fs::write(&probe, b"ok").map_err(io_error(out))?;
    fs::remove_file(&probe).map_err(io_error(&probe))
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), GenerateError> {
    let file = fs::File::create(path).map_err(io_error(path))?;
    let mut writer = BufWriter::new(file);
    serde_json::to_writer_pretty(&mut writer, value).map_err(|source| GenerateError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    writer.write_all(b"\n").map_err(io_error(path))?;
    writer.flush().map_err(io_error(path))
}

fn write_ct_study(
    options: &GenerateOptions,
    patient: &Patient,
    planned: &PlannedStudy,
    dir: &Path,
    on_instance: &(dyn Fn() + Sync),
) -> Result<StudyGroundTruth, GenerateError> {
    let mut rng = ChaCha8Rng::seed_from_u64(planned.seed);
    let spec = CtSpec::random_chest(&mut rng, options.ct_slices, options.nodule_diameter_mm);
    let phantom = CtPhantom::new(&spec, &mut rng)?;
    let frame_of_reference_uid = random_uid(&mut rng);
    let sop_uids: Vec<String> = (0..spec.slices).map(|_| random_uid(&mut rng)).collect();
    let ctx = StudyContext {
        patient,
        study: &planned.record,
        series_number: 1,
        series_description: "CHEST 2.5 STANDARD",
    };
    (0..spec.slices).into_par_iter().try_for_each(|index| {
        let stored = phantom.render_slice_stored(index);
        let slice = CtSlice {
            geometry: &phantom.geometry,
            frame_of_reference_uid: &frame_of_reference_uid,
            sop_instance_uid: &sop_uids[index],
            index,
            stored: &stored,
        };
        let obj = dicom_write::ct_slice_object(&ctx, &slice);
        dicom_write::write_part10(obj, &dir.join(format!("CT{:04}.dcm", index + 1)))?;
        on_instance();
        Ok::<(), GenerateError>(())
    })?;
    let g = &phantom.geometry;
    Ok(StudyGroundTruth {
        study_instance_uid: planned.record.study_instance_uid.clone(),
        accession_number: planned.record.accession_number.clone(),
        patient_id: patient.patient_id.clone(),
        modality: Modality::Ct,
        ct: Some(CtGroundTruth {
            series_instance_uid: planned.record.series_instance_uid.clone(),
            frame_of_reference_uid,
            rows: g.rows,
            columns: g.columns,
            pixel_spacing_mm: [g.pixel_spacing_mm, g.pixel_spacing_mm],
            slice_thickness_mm: g.slice_thickness_mm,
            spacing_between_slices_mm: g.slice_thickness_mm,
            image_orientation_patient: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            slice_positions_mm: (0..g.slices).map(|i| g.slice_position(i)).collect(),
            sop_instance_uids: sop_uids,
            nodules: phantom.nodule_truth(),
        }),
        radiograph: None,
    })
}

fn write_radiograph_study(
    options: &GenerateOptions,
    patient: &Patient,
    planned: &PlannedStudy,
    dir: &Path,
    on_instance: &(dyn Fn() + Sync),
) -> Result<StudyGroundTruth, GenerateError> {
    let mut rng = ChaCha8Rng::seed_from_u64(planned.seed);
    let modality = planned.record.modality;
    // Computed radiography plates are often read out as MONOCHROME1.
    let monochrome1 = rng.random_bool(if modality == Modality::Cr { 0.6 } else { 0.2 });
    let mut findings = Vec::new();
    if !rng.random_bool(0.35) {
        let mut labels = XrayLabel::ALL.to_vec();
        labels.shuffle(&mut rng);
        findings = labels[..rng.random_range(1..=2)].to_vec();
    }
    let spec = RadiographSpec {
        rows: options.xray_size,
        columns: options.xray_size,
        pixel_spacing_mm: XRAY_FIELD_MM / f64::from(options.xray_size),
        monochrome1,
        findings,
    };
    let rendered = radiograph::render_radiograph(&spec, &mut rng)?;
    let sop_instance_uid = random_uid(&mut rng);
    let ctx = StudyContext {
        patient,
        study: &planned.record,
        series_number: 1,
        series_description: "CHEST PA",
    };
    let image = Radiograph {
        sop_instance_uid: &sop_instance_uid,
        rows: spec.rows,
        columns: spec.columns,
        pixel_spacing_mm: spec.pixel_spacing_mm,
        bits_stored: radiograph::BITS_STORED,
        monochrome1,
        pixels: &rendered.pixels,
        window_center: rendered.window_center,
        window_width: rendered.window_width,
    };
    let obj = dicom_write::radiograph_object(&ctx, &image);
    dicom_write::write_part10(obj, &dir.join(format!("{}0001.dcm", modality.code())))?;
    on_instance();
    Ok(StudyGroundTruth {
        study_instance_uid: planned.record.study_instance_uid.clone(),
        accession_number: planned.record.accession_number.clone(),
        patient_id: patient.patient_id.clone(),
        modality,
        ct: None,
        radiograph: Some(RadiographGroundTruth {
            sop_instance_uid,
            rows: spec.rows,
            columns: spec.columns,
            imager_pixel_spacing_mm: [spec.pixel_spacing_mm, spec.pixel_spacing_mm],
            photometric_interpretation: if monochrome1 {
                "MONOCHROME1"
            } else {
                "MONOCHROME2"
            }
            .to_string(),
            normal: rendered.findings.is_empty(),
            findings: rendered.findings,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_is_deterministic_and_puts_one_chinese_name_in_both_encodings() {
        let mut options = GenerateOptions::new("unused");
        options.ct_studies = 3;
        options.xray_studies = 5;
        let (patients_a, studies_a) = plan(&options);
        let (patients_b, studies_b) = plan(&options);
        assert_eq!(patients_a, patients_b);
        let records = |s: &[PlannedStudy]| s.iter().map(|p| p.record.clone()).collect::<Vec<_>>();
        assert_eq!(records(&studies_a), records(&studies_b));
        assert!(patients_a[0].name.is_chinese());
        assert_eq!(studies_a[0].record.patient_index, 0);
        assert_eq!(studies_a[1].record.patient_index, 0);
        assert_eq!(studies_a[0].record.encoding, TextEncoding::Gb18030);
        assert_eq!(studies_a[1].record.encoding, TextEncoding::Utf8);
        let uids: std::collections::HashSet<_> = studies_a
            .iter()
            .map(|s| s.record.study_instance_uid.clone())
            .collect();
        assert_eq!(uids.len(), 8);
        assert_eq!(
            studies_a
                .iter()
                .filter(|s| s.record.modality == Modality::Ct)
                .count(),
            3
        );
    }

    #[test]
    fn impossible_options_are_refused() {
        let base = GenerateOptions::new("unused");
        let mut o = base.clone();
        o.xray_size = 0;
        assert!(matches!(
            o.validate(),
            Err(GenerateError::InvalidOptions(_))
        ));
        let mut o = base.clone();
        o.ct_slices = 0;
        assert!(matches!(
            o.validate(),
            Err(GenerateError::InvalidOptions(_))
        ));
        let mut o = base.clone();
        o.ct_studies = 0;
        o.xray_studies = 0;
        assert!(o.validate().is_err());
        let mut o = base;
        o.nodule_diameter_mm = (5.0, 500.0);
        assert!(matches!(
            o.validate(),
            Err(GenerateError::Ct(CtError::NoduleDiameter { .. }))
        ));
    }
}
