//! The demo model packages, embedded in the binary so that `radserve serve` runs them with no
//! configuration and no download. They are the packages committed under `models/zoo/`
//! (trained on synthetic data by this project's trainer; not for clinical use).

use std::path::Path;

use super::{ModelConfig, ModelsError};

/// One file of an embedded package.
struct EmbeddedFile {
    /// Path inside the package directory (`/`-separated).
    name: &'static str,
    bytes: &'static [u8],
}

/// The embedded packages: directory name and files.
const PACKAGES: &[(&str, &[EmbeddedFile])] = &[
    (
        "chest-xray-findings",
        &[
            EmbeddedFile {
                name: "model.toml",
                bytes: include_bytes!("../../../models/zoo/chest-xray-findings/model.toml"),
            },
            EmbeddedFile {
                name: "weights.bpk",
                bytes: include_bytes!("../../../models/zoo/chest-xray-findings/weights.bpk"),
            },
            EmbeddedFile {
                name: "MODEL_CARD.md",
                bytes: include_bytes!("../../../models/zoo/chest-xray-findings/MODEL_CARD.md"),
            },
        ],
    ),
    (
        "ct-lung-nodule",
        &[
            EmbeddedFile {
                name: "model.toml",
                bytes: include_bytes!("../../../models/zoo/ct-lung-nodule/model.toml"),
            },
            EmbeddedFile {
                name: "weights.bpk",
                bytes: include_bytes!("../../../models/zoo/ct-lung-nodule/weights.bpk"),
            },
            EmbeddedFile {
                name: "MODEL_CARD.md",
                bytes: include_bytes!("../../../models/zoo/ct-lung-nodule/MODEL_CARD.md"),
            },
            // The segmenter's candidate reviewer, a package of its own inside it.
            EmbeddedFile {
                name: "candidate-filter/model.toml",
                bytes: include_bytes!(
                    "../../../models/zoo/ct-lung-nodule/candidate-filter/model.toml"
                ),
            },
            EmbeddedFile {
                name: "candidate-filter/weights.bpk",
                bytes: include_bytes!(
                    "../../../models/zoo/ct-lung-nodule/candidate-filter/weights.bpk"
                ),
            },
            EmbeddedFile {
                name: "candidate-filter/MODEL_CARD.md",
                bytes: include_bytes!(
                    "../../../models/zoo/ct-lung-nodule/candidate-filter/MODEL_CARD.md"
                ),
            },
        ],
    ),
];

/// Writes the embedded packages under `root` (replacing files that differ, so an upgraded
/// binary brings its own models) and returns their configs with default batching.
pub fn install(root: &Path) -> Result<Vec<ModelConfig>, ModelsError> {
    let mut configs = Vec::with_capacity(PACKAGES.len());
    for (directory, files) in PACKAGES {
        let dir = root.join(directory);
        let failed = |reason| ModelsError::Demo {
            path: dir.clone(),
            reason,
        };
        std::fs::create_dir_all(&dir).map_err(failed)?;
        for file in *files {
            let path = dir.join(file.name);
            // A file of a nested package (the segmenter's candidate reviewer).
            let parent = path.parent().unwrap_or(&dir);
            std::fs::create_dir_all(parent).map_err(failed)?;
            if std::fs::read(&path).ok().as_deref() != Some(file.bytes) {
                // Written aside and renamed, so a crash never leaves half a weights file.
                let file_name = path.file_name().map_or_else(
                    || file.name.to_owned(),
                    |n| n.to_string_lossy().into_owned(),
                );
                let partial = parent.join(format!(".{file_name}.partial"));
                std::fs::write(&partial, file.bytes).map_err(failed)?;
                std::fs::rename(&partial, &path).map_err(failed)?;
            }
        }
        configs.push(ModelConfig {
            package: dir,
            max_batch_size: super::DEFAULT_MAX_BATCH_SIZE,
            max_queue_delay_ms: super::DEFAULT_MAX_QUEUE_DELAY_MS,
            preferred_batch_sizes: vec![4],
            max_queue_size: super::DEFAULT_MAX_QUEUE_SIZE,
        });
    }
    Ok(configs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use radserve_models::package::ModelPackage;

    #[test]
    fn the_demo_packages_install_with_the_segmenters_reviewer() {
        let root = tempfile::tempdir().expect("temp dir");
        let configs = install(root.path()).expect("install");
        assert_eq!(configs.len(), PACKAGES.len());
        let segmenter = ModelPackage::open(root.path().join("ct-lung-nodule")).expect("opens");
        let (reviewer, _) = segmenter
            .candidate_filter()
            .expect("the reviewer opens")
            .expect("the segmenter names one");
        reviewer
            .read_verified_weights()
            .expect("the reviewer's weights match their hash");
        // A damaged file is put right by the next start.
        let weights = root
            .path()
            .join("ct-lung-nodule/candidate-filter/weights.bpk");
        std::fs::write(&weights, b"damaged").expect("damage");
        install(root.path()).expect("install again");
        reviewer
            .read_verified_weights()
            .expect("restored by the second install");
    }
}
