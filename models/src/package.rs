//! Model packages: a directory holding `model.toml` and the weights it names.
//!
//! `model.toml` says what the model is (name, version, architecture and its configuration),
//! what it takes (modality, body part, photometric handling, target size, intensity window or
//! HU clip, normalisation), what it gives (labels with SNOMED CT or RadLex codes, thresholds,
//! units), what it is for, what it was trained on, what it measured, and the weights file with
//! its SHA-256. Loading checks the hash and every tensor's shape before a model can serve.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::architecture::{ArchitectureConfig, ConfigError, OutputKind};
use crate::candidate_filter::PatchSpec;
use crate::weights::{self, WeightFormat, WeightsError};

/// The package manifest's file name.
pub const MANIFEST: &str = "model.toml";
/// Largest manifest read (a manifest is a page of text).
const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Largest weights file a package may name (DenseNet-121 in f32 is ~32 MB).
pub const MAX_WEIGHTS_BYTES: u64 = 2 << 30;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub model: ModelInfo,
    pub architecture: ArchitectureConfig,
    pub input: InputSpec,
    pub output: OutputSpec,
    pub training: TrainingInfo,
    /// Measured metrics by name (`auc.nodule`, `dice`, …), on the data `training.evaluation` names.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    pub weights: WeightsInfo,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    pub intended_use: String,
    /// Shown wherever the model's findings are: e.g. "demo model trained on synthetic data, not
    /// for clinical use".
    pub disclaimer: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// DICOM Modality values the model accepts (`CT`, `DX`, `CR`).
    pub modalities: Vec<String>,
    /// DICOM BodyPartExamined (`CHEST`).
    pub body_part: String,
    /// How the image reaches the network.
    pub photometric: Photometric,
    /// Rows, columns of the network's input.
    pub target_size: [usize; 2],
    pub intensity: Intensity,
    pub normalisation: Normalisation,
    /// CT models: the network sees one axial slice at a time.
    #[serde(default)]
    pub slice_by_slice: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Photometric {
    /// MONOCHROME1 images are inverted so that bright always means dense, as in MONOCHROME2.
    Monochrome2,
}

/// How modality values become the network's 0..1 range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Intensity {
    /// The image's own VOI window (WindowCenter/WindowWidth), linear, as a reader would see it.
    VoiWindow,
    /// A fixed window in modality units.
    Window { center: f64, width: f64 },
    /// Hounsfield units clipped to `min..max` and scaled to 0..1.
    HuClip { min: f64, max: f64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalisation {
    pub mean: f64,
    pub std: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub kind: OutputTask,
    pub labels: Vec<LabelSpec>,
    /// Segmentation: how the mask's connected components become findings (`[output.components]`);
    /// absent, components of at least [`DEFAULT_MIN_COMPONENT_VOLUME_MM3`] are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub components: Option<crate::postprocess::ComponentOptions>,
    /// Segmentation: a classifier that reviews each kept component in 3D and drops those it
    /// scores below its label's threshold (`[output.candidate_filter]`; see
    /// [`crate::candidate_filter`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_filter: Option<CandidateFilterSpec>,
    /// Segmentation: components are found at the label's threshold and drawn (and measured)
    /// by their voxels at or above this one; a component with none keeps all its voxels
    /// ([`crate::postprocess::two_threshold_mask`]). Absent: the label's threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outline_threshold: Option<f64>,
}

/// Where a segmentation package's candidate reviewer is and how its patches are sampled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CandidateFilterSpec {
    /// Sub-directory of this package holding the reviewer's own package (one plain name).
    pub package: String,
    /// Spacing of the patch samples (mm); the edge is the reviewer's `input.target_size`.
    pub patch_spacing_mm: f64,
}

/// Components smaller than this (mm³) are specks, when the package says nothing.
pub const DEFAULT_MIN_COMPONENT_VOLUME_MM3: f64 = 10.0;

impl OutputSpec {
    /// Segmentation: the thresholds that find components and that draw them.
    pub fn mask_thresholds(&self) -> (f32, f32) {
        let detect = self.labels.first().map_or(0.5, |l| l.threshold);
        (
            detect as f32,
            self.outline_threshold.unwrap_or(detect) as f32,
        )
    }

    /// The component rules in force: the package's, else the default minimum volume.
    pub fn component_options(&self) -> crate::postprocess::ComponentOptions {
        self.components
            .unwrap_or(crate::postprocess::ComponentOptions {
                min_volume_mm3: DEFAULT_MIN_COMPONENT_VOLUME_MM3,
                ..Default::default()
            })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputTask {
    /// Independent sigmoid per label.
    MultiLabel,
    /// Per-pixel sigmoid per label.
    Segmentation,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSpec {
    pub name: String,
    pub code: CodedConcept,
    /// Where the finding lies (SR Finding Site), when the label implies it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finding_site: Option<CodedConcept>,
    /// Probability at or above which the finding is reported present.
    pub threshold: f64,
    /// What the output value is (`probability`).
    pub units: String,
}

/// A concept from a coding scheme: DICOM's (CodeValue, CodingSchemeDesignator, CodeMeaning).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodedConcept {
    /// `SCT` (SNOMED CT) or `RADLEX`.
    pub scheme: String,
    pub value: String,
    pub meaning: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingInfo {
    pub data: String,
    pub command: String,
    #[serde(default)]
    pub duration_s: Option<f64>,
    /// The held-out set the metrics come from, in words.
    pub evaluation: String,
    /// Seed and size of the held-out set, so that anyone can recompute the metrics.
    #[serde(default)]
    pub evaluation_seed: Option<u64>,
    #[serde(default)]
    pub evaluation_studies: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightsInfo {
    /// Relative to the package directory.
    pub file: String,
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path}: not a valid model manifest: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Architecture {
        path: PathBuf,
        #[source]
        source: ConfigError,
    },
    #[error("{path}: {message}")]
    Spec { path: PathBuf, message: String },
    #[error("weights file {path} is missing")]
    MissingWeights { path: PathBuf },
    #[error("weights file {path} has SHA-256 {found}, the manifest says {expected}")]
    HashMismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("weights file {path}: {source}")]
    Weights {
        path: PathBuf,
        #[source]
        source: WeightsError,
    },
}

/// A package read from disk, weights not yet loaded.
#[derive(Debug, Clone)]
pub struct ModelPackage {
    pub directory: PathBuf,
    pub manifest: Manifest,
}

impl ModelPackage {
    /// Reads and checks `dir/model.toml`; does not touch the weights.
    pub fn open(directory: impl Into<PathBuf>) -> Result<Self, PackageError> {
        let directory = directory.into();
        let path = directory.join(MANIFEST);
        let io = |message: String| PackageError::Io {
            path: path.clone(),
            message,
        };
        let size = std::fs::metadata(&path)
            .map_err(|e| io(format!("cannot read the manifest: {e}")))?
            .len();
        if size > MAX_MANIFEST_BYTES {
            return Err(io(format!(
                "manifest is {size} bytes, more than the {MAX_MANIFEST_BYTES} allowed"
            )));
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| io(format!("cannot read the manifest: {e}")))?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| PackageError::Manifest {
            path: path.clone(),
            message: e.to_string(),
        })?;
        validate(&manifest, &path)?;
        Ok(ModelPackage {
            directory,
            manifest,
        })
    }

    /// The candidate reviewer's package, when the manifest names one; it must be a
    /// three-channel classifier with one output over a HU clip.
    pub fn candidate_filter(&self) -> Result<Option<(ModelPackage, PatchSpec)>, PackageError> {
        let Some(spec) = &self.manifest.output.candidate_filter else {
            return Ok(None);
        };
        let filter = ModelPackage::open(self.directory.join(&spec.package))?;
        let m = &filter.manifest;
        let [rows, columns] = m.input.target_size;
        let fits = m.output.kind == OutputTask::MultiLabel
            && m.architecture.in_channels() == crate::candidate_filter::PATCH_PLANES
            && m.output.labels.len() == 1
            && rows == columns
            && matches!(m.input.intensity, Intensity::HuClip { .. });
        if !fits {
            return Err(PackageError::Spec {
                path: filter.directory.join(MANIFEST),
                message: format!(
                    "a candidate filter must be a classifier with {} input channels, one label, a square input and a hu_clip intensity",
                    crate::candidate_filter::PATCH_PLANES
                ),
            });
        }
        let patch = PatchSpec {
            edge: rows,
            spacing_mm: spec.patch_spacing_mm,
        };
        patch.validate().map_err(|e| PackageError::Spec {
            path: filter.directory.join(MANIFEST),
            message: e.to_string(),
        })?;
        Ok(Some((filter, patch)))
    }

    pub fn weights_path(&self) -> PathBuf {
        self.directory.join(&self.manifest.weights.file)
    }

    /// Reads the weights, checks their SHA-256 against the manifest and returns the bytes.
    pub fn read_verified_weights(&self) -> Result<Vec<u8>, PackageError> {
        let path = self.weights_path();
        let metadata = std::fs::metadata(&path)
            .map_err(|_| PackageError::MissingWeights { path: path.clone() })?;
        if !metadata.is_file() {
            return Err(PackageError::MissingWeights { path });
        }
        if metadata.len() > MAX_WEIGHTS_BYTES {
            return Err(PackageError::Io {
                path,
                message: format!(
                    "weights are {} bytes, more than the {MAX_WEIGHTS_BYTES} allowed",
                    metadata.len()
                ),
            });
        }
        let bytes = std::fs::read(&path).map_err(|e| PackageError::Io {
            path: path.clone(),
            message: format!("cannot read weights: {e}"),
        })?;
        let found = sha256_hex(&bytes);
        let expected = self.manifest.weights.sha256.to_ascii_lowercase();
        if found != expected {
            return Err(PackageError::HashMismatch {
                path,
                expected,
                found,
            });
        }
        Ok(bytes)
    }
}

/// Lower-case hex SHA-256, as `sha256sum` prints it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn validate(manifest: &Manifest, path: &Path) -> Result<(), PackageError> {
    let spec = |message: String| PackageError::Spec {
        path: path.to_path_buf(),
        message,
    };
    manifest
        .architecture
        .validate()
        .map_err(|source| PackageError::Architecture {
            path: path.to_path_buf(),
            source,
        })?;
    let info = &manifest.model;
    if info.name.is_empty()
        || !info
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(spec(format!(
            "model name `{}` must be non-empty ASCII letters, digits, '-', '_' or '.'",
            info.name
        )));
    }
    let labels = &manifest.output.labels;
    let outputs = manifest.architecture.num_outputs();
    if labels.len() != outputs {
        return Err(spec(format!(
            "output.labels lists {} label(s), the architecture produces {outputs}",
            labels.len()
        )));
    }
    for label in labels {
        if !(0.0..=1.0).contains(&label.threshold) {
            return Err(spec(format!(
                "label `{}`: threshold {} is not a probability",
                label.name, label.threshold
            )));
        }
        if !matches!(label.code.scheme.as_str(), "SCT" | "RADLEX") {
            return Err(spec(format!(
                "label `{}`: coding scheme `{}` is not SCT or RADLEX",
                label.name, label.code.scheme
            )));
        }
    }
    if let Some(c) = &manifest.output.components {
        if manifest.output.kind != OutputTask::Segmentation {
            return Err(spec(
                "output.components applies to segmentation models only".into(),
            ));
        }
        c.validate()
            .map_err(|e| spec(format!("output.components: {e}")))?;
    }
    if let Some(outline) = manifest.output.outline_threshold {
        let detect = labels.first().map_or(0.0, |l| l.threshold);
        if manifest.output.kind != OutputTask::Segmentation || !(detect..=1.0).contains(&outline) {
            return Err(spec(format!(
                "output.outline_threshold {outline}: segmentation only, between the label's threshold ({detect}) and 1"
            )));
        }
    }
    if let Some(filter) = &manifest.output.candidate_filter {
        if manifest.output.kind != OutputTask::Segmentation {
            return Err(spec(
                "output.candidate_filter applies to segmentation models only".into(),
            ));
        }
        let plain = !filter.package.is_empty()
            && filter
                .package
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !plain {
            return Err(spec(format!(
                "output.candidate_filter.package `{}` must be one sub-directory name (ASCII letters, digits, '-', '_')",
                filter.package
            )));
        }
        if !(filter.patch_spacing_mm.is_finite()
            && (0.05..=20.0).contains(&filter.patch_spacing_mm))
        {
            return Err(spec(format!(
                "output.candidate_filter.patch_spacing_mm {} is outside 0.05..=20",
                filter.patch_spacing_mm
            )));
        }
    }
    let expected_task = match manifest.architecture.output_kind() {
        OutputKind::Scores => OutputTask::MultiLabel,
        OutputKind::Maps => OutputTask::Segmentation,
    };
    if manifest.output.kind != expected_task {
        return Err(spec(format!(
            "output.kind {:?} does not fit the architecture, which gives {:?}",
            manifest.output.kind, expected_task
        )));
    }
    let input = &manifest.input;
    let (min, multiple) = manifest.architecture.input_constraint();
    let [rows, columns] = input.target_size;
    if rows < min
        || columns < min
        || rows % multiple != 0
        || columns % multiple != 0
        || rows > 4096
        || columns > 4096
    {
        return Err(spec(format!(
            "input.target_size {rows}×{columns} does not fit the architecture (at least {min}, a multiple of {multiple}, at most 4096)"
        )));
    }
    if !(input.normalisation.std.is_finite()
        && input.normalisation.std > 0.0
        && input.normalisation.mean.is_finite())
    {
        return Err(spec(
            "input.normalisation needs a finite mean and a positive std".into(),
        ));
    }
    match input.intensity {
        Intensity::Window { center, width }
            if !(center.is_finite() && width.is_finite() && width > 0.0) =>
        {
            return Err(spec(
                "input.intensity window needs a finite center and a positive width".into(),
            ));
        }
        Intensity::HuClip { min, max } if !(min.is_finite() && max.is_finite() && min < max) => {
            return Err(spec(
                "input.intensity hu_clip needs finite min < max".into(),
            ));
        }
        _ => {}
    }
    if input.modalities.is_empty() {
        return Err(spec("input.modalities is empty".into()));
    }
    let weights = &manifest.weights;
    if weights.file.contains("..") || Path::new(&weights.file).is_absolute() {
        return Err(spec(format!(
            "weights.file `{}` must be a path inside the package",
            weights.file
        )));
    }
    WeightFormat::from_path(Path::new(&weights.file)).map_err(|e| spec(e.to_string()))?;
    if weights.sha256.len() != 64 || !weights.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(spec("weights.sha256 must be 64 hex digits".into()));
    }
    Ok(())
}

/// Loads the weights of `package` into a freshly built network on `device`.
pub fn load_network(
    package: &ModelPackage,
    device: &burn::tensor::Device,
) -> Result<crate::architecture::Network, PackageError> {
    let path = package.weights_path();
    let architecture = &package.manifest.architecture;
    let mut network = architecture
        .init(device)
        .map_err(|source| PackageError::Architecture {
            path: path.clone(),
            source,
        })?;
    let bytes = package.read_verified_weights()?;
    let weights_error = |source| PackageError::Weights {
        path: path.clone(),
        source,
    };
    match WeightFormat::from_path(&path).map_err(weights_error)? {
        WeightFormat::Burnpack => {
            weights::load_burnpack_bytes(&mut network, bytes, &path).map_err(weights_error)?;
        }
        // Foreign formats are read from the file; the hash above was over the same file.
        WeightFormat::PyTorch | WeightFormat::Safetensors => {
            weights::load_file(&mut network, architecture, &path).map_err(weights_error)?;
        }
    }
    Ok(network)
}
