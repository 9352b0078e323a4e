use dicom_samples::ct::{CtPhantom, CtSpec, DEFAULT_NODULE_DIAMETER_MM};
use dicom_samples::dicom_write::*;
use dicom_samples::ground_truth::{Modality, StudyRecord};
use dicom_samples::patient::{TextEncoding, random_patient};
use rand::SeedableRng;

fn main() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let patient = random_patient(&mut rng, 0, true);
    for (modality, enc) in [
        (Modality::Ct, TextEncoding::Gb18030),
        (Modality::Dx, TextEncoding::Utf8),
        (Modality::Cr, TextEncoding::Gb18030),
    ] {
        let study = StudyRecord {
            study_instance_uid: "2.25.1234".into(),
            accession_number: "A10000001".into(),
            patient_index: 0,
            modality,
            study_date: "20260301".into(),
            study_time: "101530".into(),
            study_description: "CT CHEST".into(),
            body_part_examined: "CHEST".into(),
            referring_physician: "Okafor^Chidi^^Dr.".into(),
            encoding: enc,
            directory: "x".into(),
            series_instance_uid: "2.25.5678".into(),
            instance_count: 1,
        };
        let ctx = StudyContext {
            patient: &patient,
            study: &study,
            series_number: 1,
            series_description: "S",
        };
        let obj = if modality == Modality::Ct {
            let spec = CtSpec::random_chest(&mut rng, 5, DEFAULT_NODULE_DIAMETER_MM);
            let p = CtPhantom::new(&spec, &mut rng).unwrap();
            let stored = p.render_slice_stored(2);
            ct_slice_object(
                &ctx,
                &CtSlice {
                    geometry: &p.geometry,
                    frame_of_reference_uid: "2.25.99",
                    sop_instance_uid: "2.25.100",
                    index: 2,
                    stored: &stored,
                },
            )
        } else {
            let pixels = vec![1000u16; 1024 * 1024];
            radiograph_object(
                &ctx,
                &Radiograph {
                    sop_instance_uid: "2.25.101",
                    rows: 1024,
                    columns: 1024,
                    pixel_spacing_mm: 0.35,
                    bits_stored: 12,
                    monochrome1: modality == Modality::Cr,
                    pixels: &pixels,
                    window_center: 2000.0,
                    window_width: 4000.0,
                },
            )
        };
        write_part10(
            obj,
            std::path::Path::new(&format!("/tmp/scratch_{}.dcm", modality.code())),
        )
        .unwrap();
    }
}
