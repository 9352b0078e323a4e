//! `train ct-candidate-filter`: the segmenter's candidate reviewer
//! (`radserve_models::candidate_filter`), trained on the components a segmentation package
//! finds in synthetic scans it was not trained on, and added to a copy of that package.
//!
//! Steps: run the segmenter on the training scans at `--mask-threshold` and label each
//! component by whether it hits a true nodule (plus a few patches around each true nodule's
//! centre, so the reviewer sees every nodule, found or not); train a small DenseNet on the
//! three-plane patches; choose its threshold on validation scans; write the package and
//! measure it, reviewer included, on the held-out scans.

use radserve_models::candidate_filter::{PATCH_PLANES, PatchSpec, candidate_patches};
use radserve_models::evaluate::{
    DETECTION_MIN_DIAMETER_MM, SegmentedScan, hits_nodule, score_detection, segment_phantom,
    segment_scans,
};
use radserve_models::metrics::Overlap;
use radserve_models::package::CandidateFilterSpec;
use radserve_models::postprocess;
use rand::Rng;

use super::*;

/// Sub-directory of the segmentation package that holds the reviewer.
const FILTER_DIRECTORY: &str = "candidate-filter";

/// Thresholds tried on the validation scans, highest last.
const THRESHOLD_GRID: [f64; 9] = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8];

#[derive(Args, Clone)]
pub(super) struct FilterArgs {
    /// Segmentation package whose components the reviewer learns to sort (read only).
    #[arg(long)]
    segmenter: PathBuf,
    /// Package directory to write: the segmenter's package with the reviewer in
    /// `candidate-filter/` (may be `--segmenter` itself).
    #[arg(long)]
    out: PathBuf,
    /// Seed of the training scans (scan seeds from 10,000 × seed) and initial weights.
    #[arg(long, default_value_t = 5)]
    seed: u64,
    /// Training scans.
    #[arg(long, default_value_t = 48)]
    studies: usize,
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    #[arg(long, default_value_t = 2e-3)]
    learning_rate: f64,
    /// The segmenter's mask threshold, in the written package too: lower finds more
    /// nodules and more false candidates for the reviewer to sort out. Default: the package's.
    #[arg(long)]
    mask_threshold: Option<f64>,
    /// The threshold that draws and measures each component found at `--mask-threshold`
    /// (its voxels at or above it; a component with none keeps all), in the written package
    /// too. Default: the package's.
    #[arg(long)]
    outline_threshold: Option<f64>,
    /// Samples along each edge of a patch plane.
    #[arg(long, default_value_t = 48)]
    patch_edge: usize,
    /// Distance between samples (mm).
    #[arg(long, default_value_t = 0.75)]
    patch_spacing_mm: f64,
    /// Extra patches per candidate, each centred up to 2 mm off (and as many × 2 per true nodule).
    #[arg(long, default_value_t = 2)]
    jitter_copies: usize,
    /// Seed of the scans the threshold is chosen on (must differ from the others).
    #[arg(long, default_value_t = 2_000_003)]
    validation_seed: u64,
    #[arg(long, default_value_t = 8)]
    validation_studies: usize,
    /// The reviewer's threshold. Default: of 0.05, 0.1, 0.2, …, 0.8, those that keep every
    /// validation nodule ≥ 6 mm the segmenter found, the lowest with the fewest false
    /// positives.
    #[arg(long)]
    review_threshold: Option<f64>,
    /// Seed of the held-out scans the package is measured on.
    #[arg(long, default_value_t = 1_000_003)]
    eval_seed: u64,
    #[arg(long, default_value_t = 8)]
    eval_studies: usize,
    /// Version written into the segmentation package's `model.toml` (default: unchanged).
    #[arg(long)]
    model_version: Option<String>,
}

/// Patches laid end to end and a 0/1 label each.
#[derive(Default)]
struct Candidates {
    patches: Vec<f32>,
    labels: Vec<f32>,
}

/// A point up to `reach` mm from `centre` along each axis.
fn jittered(centre: [f64; 3], reach: f64, rng: &mut ChaCha8Rng) -> [f64; 3] {
    [
        centre[0] + rng.random_range(-reach..=reach),
        centre[1] + rng.random_range(-reach..=reach),
        centre[2] + rng.random_range(-reach..=reach),
    ]
}

/// The reviewer's input spec: the segmenter's intensity and normalisation, the patch size.
fn filter_input(segmenter: &Manifest, edge: usize) -> InputSpec {
    InputSpec {
        target_size: [edge, edge],
        slice_by_slice: false,
        ..segmenter.input.clone()
    }
}

/// Runs the segmenter on the training scans and collects labelled patches.
fn training_candidates(
    args: &FilterArgs,
    segmenter: &LoadedModel,
    input: &InputSpec,
    patch: PatchSpec,
    rng: &mut ChaCha8Rng,
) -> Result<Candidates> {
    let options = segmenter.package.manifest.output.component_options();
    let mut out = Candidates::default();
    let mut overlap = Overlap::default();
    let (mut scans, mut scan_seed) = (0, args.seed * 10_000);
    let bar = progress(args.studies as u64, "segmenting training scans");
    while scans < args.studies {
        scan_seed += 1;
        let Some(phantom) = synthetic::ct_phantom(scan_seed, synthetic::CT_SLICES) else {
            continue;
        };
        scans += 1;
        let segmented = segment_phantom(segmenter, &phantom, &mut overlap)?;
        let components = postprocess::measure_nodules(&segmented.volume(), &options)?;
        let truth = phantom.nodule_truth();
        let mut centres = Vec::new();
        for c in &components {
            let label = f32::from(u8::from(truth.iter().any(|n| hits_nodule(c.center_mm, n))));
            centres.push((c.center_mm, label));
            for _ in 0..args.jitter_copies {
                centres.push((jittered(c.center_mm, 2.0, rng), label));
            }
        }
        for n in &truth {
            for _ in 0..2 * args.jitter_copies + 1 {
                centres.push((jittered(n.center_mm, 2.0, rng), 1.0));
            }
        }
        let points: Vec<[f64; 3]> = centres.iter().map(|c| c.0).collect();
        out.patches.extend(candidate_patches(
            segmented.volume(),
            &points,
            patch,
            input,
        )?);
        out.labels.extend(centres.iter().map(|c| c.1));
        bar.inc(1);
    }
    bar.finish();
    Ok(out)
}

/// Flips each plane of a patch at random (both axes), and transposes the axial one: a
/// nodule or vessel looks the same mirrored.
fn augment(patch: &mut [f32], edge: usize, rng: &mut ChaCha8Rng) {
    for (plane, values) in patch.chunks_mut(edge * edge).enumerate() {
        if rng.random_bool(0.5) {
            for row in values.chunks_mut(edge) {
                row.reverse();
            }
        }
        if rng.random_bool(0.5) {
            for r in 0..edge / 2 {
                for c in 0..edge {
                    values.swap(r * edge + c, (edge - 1 - r) * edge + c);
                }
            }
        }
        if plane == 0 && rng.random_bool(0.5) {
            for r in 0..edge {
                for c in r + 1..edge {
                    values.swap(r * edge + c, c * edge + r);
                }
            }
        }
    }
}

fn filter_config() -> DenseNetConfig {
    DenseNetConfig {
        in_channels: PATCH_PLANES,
        num_outputs: 1,
        growth_rate: 12,
        block_config: [2, 4, 6, 4],
        num_init_features: 24,
        bn_size: 4,
        pooling: Pooling::Average,
    }
}

fn fit_filter(args: &FilterArgs, data: &Candidates, patch: PatchSpec) -> Result<DenseNet> {
    let device = Device::flex().autodiff();
    device.seed(args.seed);
    let mut model = filter_config().init(&device)?;
    let mut optimizer = AdamConfig::new().init();
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed ^ 0xf11);
    let per = patch.len();
    let positives = data.labels.iter().filter(|&&l| l > 0.5).count();
    let negatives = data.labels.len() - positives;
    if positives == 0 || negatives == 0 {
        bail!(
            "the training scans gave {positives} nodule and {negatives} other candidates: need both"
        );
    }
    // Weighted so that both classes count alike, whatever their numbers.
    let positive_weight = negatives as f64 / positives as f64;
    println!("{positives} nodule and {negatives} other candidate patches");
    for epoch in 0..args.epochs {
        let mut order: Vec<usize> = (0..data.labels.len()).collect();
        order.shuffle(&mut rng);
        let lr = cosine_lr(args.learning_rate, epoch, args.epochs);
        let (mut scores, mut truth) = (Vec::new(), Vec::new());
        let bar = progress(
            order.len().div_ceil(args.batch) as u64,
            &format!("candidate filter, epoch {}/{}", epoch + 1, args.epochs),
        );
        for batch in order.chunks(args.batch) {
            let mut pixels = Vec::with_capacity(batch.len() * per);
            let mut targets = Vec::with_capacity(batch.len());
            for &i in batch {
                let start = pixels.len();
                pixels.extend_from_slice(&data.patches[i * per..(i + 1) * per]);
                augment(&mut pixels[start..], patch.edge, &mut rng);
                targets.push(data.labels[i]);
                truth.push(data.labels[i] > 0.5);
            }
            let images = Tensor::<4>::from_data(
                TensorData::new(pixels, [batch.len(), PATCH_PLANES, patch.edge, patch.edge]),
                &device,
            );
            let targets =
                Tensor::<2>::from_data(TensorData::new(targets, [batch.len(), 1]), &device);
            let logits = model.forward(images);
            scores.extend(logits_of(&logits));
            let loss = weighted_bce_with_logits(logits, targets, positive_weight);
            bar.set_prefix(format!("{:.4}", scalar(loss.clone())));
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(lr, model, grads);
            bar.inc(1);
        }
        bar.finish();
        println!(
            "candidate filter, epoch {}: training AUC {}",
            epoch + 1,
            roc_auc(&scores, &truth).map_or_else(|| "-".to_owned(), |auc| format!("{auc:.3}"))
        );
    }
    Ok(model)
}

fn filter_manifest(
    args: &FilterArgs,
    command: &str,
    segmenter: &Manifest,
    threshold: f64,
) -> Manifest {
    Manifest {
        model: ModelInfo {
            name: format!("{}-candidate-filter", segmenter.model.name),
            version: args
                .model_version
                .clone()
                .unwrap_or_else(|| segmenter.model.version.clone()),
            description: format!(
                "Reviews each component the {} segmenter finds: three orthogonal planes through its centre, scored nodule or not; components below the threshold are dropped.",
                segmenter.model.name
            ),
            intended_use:
                "False-positive reduction for radserve's demo nodule segmenter, on synthetic CT."
                    .into(),
            disclaimer: DISCLAIMER.into(),
        },
        architecture: ArchitectureConfig::Densenet(filter_config()),
        input: filter_input(segmenter, args.patch_edge),
        output: OutputSpec {
            kind: OutputTask::MultiLabel,
            labels: vec![LabelSpec {
                threshold,
                ..label(
                    "nodule",
                    "786838002",
                    "Pulmonary nodule",
                    ("39607008", "Lung structure"),
                )
            }],
            components: None,
            candidate_filter: None,
            outline_threshold: None,
        },
        training: TrainingInfo {
            data: format!(
                "components the {} {} segmenter (mask threshold {}, outline threshold {}) found in {} synthetic chest CTs from dicom-samples, seed {} (scan seeds from {}), labelled by whether they hit a true nodule, {} jittered copies each; and {} patches around each true nodule; flips and transposes at random; threshold chosen on {} scans of seed {}",
                segmenter.model.name,
                segmenter.model.version,
                segmenter.output.labels.first().map_or(0.5, |l| l.threshold),
                segmenter.output.mask_thresholds().1,
                args.studies,
                args.seed,
                args.seed * 10_000 + 1,
                args.jitter_copies,
                2 * args.jitter_copies + 1,
                args.validation_studies,
                args.validation_seed
            ),
            command: format!("cargo run -p radserve-models --bin train -- {command}"),
            duration_s: None,
            evaluation: format!(
                "the components of {} held-out synthetic CTs of 80 slices, seed {}: ROC AUC of the score for components hitting a nodule against the rest",
                args.eval_studies, args.eval_seed
            ),
            evaluation_seed: Some(args.eval_seed),
            evaluation_studies: Some(args.eval_studies),
        },
        metrics: BTreeMap::new(),
        weights: WeightsInfo {
            file: "weights.bpk".into(),
            sha256: String::new(),
        },
    }
}

/// Sensitivity and false positives per scan of the validation scans at each threshold of
/// the grid, printed; returns the lowest threshold that loses no nodule the candidates hit
/// and has the fewest false positives among those that do not (the lowest, since a reviewer
/// that is sure of a false component is sure well below the top of the grid, while a faint
/// nodule's score can sit in the middle).
fn choose_threshold(scans: &[SegmentedScan], options: &postprocess::ComponentOptions) -> f64 {
    let unfiltered = score_detection(scans, 0.0, options, None);
    println!(
        "validation: {} nodules ≥ {DETECTION_MIN_DIAMETER_MM} mm in {} scans; without the reviewer sensitivity {:.3}, {:.2} false positives per scan",
        unfiltered.nodules,
        unfiltered.scans,
        unfiltered.sensitivity,
        unfiltered.false_positives_per_scan
    );
    println!("| review threshold | sensitivity | false positives per scan |\n|---:|---:|---:|");
    let mut chosen: Option<(f64, f64)> = None;
    for threshold in THRESHOLD_GRID {
        let m = score_detection(scans, 0.0, options, Some(threshold));
        println!(
            "| {threshold} | {:.3} | {:.2} |",
            m.sensitivity, m.false_positives_per_scan
        );
        let keeps_all = m.sensitivity >= unfiltered.sensitivity;
        let fewer = chosen.is_none_or(|(_, fp)| m.false_positives_per_scan < fp);
        if keeps_all && fewer {
            chosen = Some((threshold, m.false_positives_per_scan));
        }
    }
    chosen.map_or(THRESHOLD_GRID[0], |(threshold, _)| threshold)
}

/// Writes `manifest` and its card beside weights already in `directory`.
fn write_manifest(directory: &Path, manifest: &Manifest) -> Result<()> {
    let bytes = std::fs::metadata(directory.join(&manifest.weights.file))?.len();
    std::fs::write(
        directory.join("model.toml"),
        toml::to_string_pretty(manifest)?,
    )?;
    std::fs::write(
        directory.join("MODEL_CARD.md"),
        model_card(manifest, bytes as usize),
    )?;
    Ok(())
}

pub(super) fn train_candidate_filter(args: &FilterArgs, command: &str) -> Result<()> {
    let seeds = [args.seed * 10_000, args.validation_seed, args.eval_seed];
    if seeds[0] == seeds[1] || seeds[1] == seeds[2] || seeds[0] == seeds[2] {
        bail!("--seed × 10,000, --validation-seed and --eval-seed must differ");
    }
    if args.batch == 0 || args.epochs == 0 || args.studies == 0 || args.validation_studies == 0 {
        bail!("--batch, --epochs, --studies and --validation-studies must be positive");
    }
    let patch = PatchSpec {
        edge: args.patch_edge,
        spacing_mm: args.patch_spacing_mm,
    };
    patch.validate()?;
    if args.patch_edge < 32 {
        bail!("--patch-edge must be at least 32 (the reviewer halves it five times)");
    }
    let started = Instant::now();
    let mut source = ModelPackage::open(&args.segmenter)?;
    if source.manifest.output.kind != OutputTask::Segmentation {
        bail!(
            "--segmenter {}: not a segmentation package",
            args.segmenter.display()
        );
    }
    // The candidates are the segmenter's alone, whatever reviewer the package had.
    source.manifest.output.candidate_filter = None;
    if let Some(threshold) = args.mask_threshold {
        if !(0.0..=1.0).contains(&threshold) {
            bail!("--mask-threshold must be a probability");
        }
        for label in &mut source.manifest.output.labels {
            label.threshold = threshold;
        }
    }
    if let Some(outline) = args.outline_threshold {
        let detect = source
            .manifest
            .output
            .labels
            .first()
            .map_or(0.0, |l| l.threshold);
        if !(detect..=1.0).contains(&outline) {
            bail!("--outline-threshold must lie between the mask threshold ({detect}) and 1");
        }
        source.manifest.output.outline_threshold = Some(outline);
    }
    let segmenter = LoadedModel::load(source.clone(), &Device::flex(), &[])?;
    let input = filter_input(&source.manifest, args.patch_edge);
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let data = training_candidates(args, &segmenter, &input, patch, &mut rng)?;
    let network = fit_filter(args, &data, patch)?;
    let training_s = started.elapsed().as_secs_f64().round();

    // The reviewer's package, at a provisional threshold until the validation scans speak.
    let filter_dir = args.out.join(FILTER_DIRECTORY);
    std::fs::create_dir_all(&filter_dir)
        .with_context(|| format!("creating {}", filter_dir.display()))?;
    let mut filter = filter_manifest(args, command, &source.manifest, 0.5);
    filter.training.duration_s = Some(training_s);
    let weights_path = filter_dir.join(&filter.weights.file);
    weights::save_burnpack(&Network::DenseNet(Box::new(network)), &weights_path)?;
    filter.weights.sha256 = sha256_hex(&std::fs::read(&weights_path)?);
    write_manifest(&filter_dir, &filter)?;

    // The segmentation package: the source's weights and manifest, naming the reviewer.
    let mut manifest = source.manifest.clone();
    if let Some(version) = &args.model_version {
        manifest.model.version.clone_from(version);
    }
    manifest.output.candidate_filter = Some(CandidateFilterSpec {
        package: FILTER_DIRECTORY.into(),
        patch_spacing_mm: args.patch_spacing_mm,
    });
    let target_weights = args.out.join(&manifest.weights.file);
    let same_file = std::fs::canonicalize(source.weights_path()).ok()
        == std::fs::canonicalize(&target_weights).ok();
    if !same_file {
        std::fs::copy(source.weights_path(), &target_weights)?;
    }
    write_manifest(&args.out, &manifest)?;

    let reviewed = LoadedModel::load(ModelPackage::open(&args.out)?, &Device::flex(), &[])?;
    let (validation, _) = segment_scans(&reviewed, args.validation_seed, args.validation_studies)?;
    let options = manifest.output.component_options();
    filter.output.labels[0].threshold = args
        .review_threshold
        .unwrap_or_else(|| choose_threshold(&validation, &options));
    println!("review threshold {}", filter.output.labels[0].threshold);

    let (held_out, overlap) = segment_scans(&reviewed, args.eval_seed, args.eval_studies)?;
    let (mut scores, mut truth) = (Vec::new(), Vec::new());
    for scan in &held_out {
        for (c, &score) in scan.components.iter().zip(&scan.review_scores) {
            scores.push(score);
            truth.push(scan.truth.iter().any(|n| hits_nodule(c.center_mm, n)));
        }
    }
    if let Some(auc) = roc_auc(&scores, &truth) {
        filter.metrics.insert("candidate_auc".into(), auc);
    }
    write_manifest(&filter_dir, &filter)?;
    let m = score_detection(
        &held_out,
        overlap.dice().unwrap_or(0.0),
        &options,
        Some(filter.output.labels[0].threshold),
    );
    manifest.metrics = BTreeMap::from([
        ("dice".to_string(), m.dice),
        ("dice_all_voxels".to_string(), m.dice_all_voxels),
        ("sensitivity_6mm".to_string(), m.sensitivity),
        (
            "false_positives_per_scan".to_string(),
            m.false_positives_per_scan,
        ),
    ]);
    write_manifest(&args.out, &manifest)?;
    println!(
        "wrote {}: held-out sensitivity {:.3}, {:.2} false positives per scan, Dice {:.3}; reviewer AUC {}",
        args.out.display(),
        m.sensitivity,
        m.false_positives_per_scan,
        m.dice,
        filter
            .metrics
            .get("candidate_auc")
            .map_or_else(|| "-".to_owned(), |a| format!("{a:.3}"))
    );
    Ok(())
}
