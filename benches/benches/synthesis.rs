//! How fast the synthetic-study generator renders and writes pixels.
//!
//! `cargo bench -p radserve-benches --bench synthesis`
//!
//! The generator's budget (issue 2): 20 CT series of 100 slices plus 80 radiographs in under a
//! minute on 2 cores, i.e. about 25 ms per CT slice and 50 ms per radiograph, writing included.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dicom_samples::ct::{CtPhantom, CtSpec, DEFAULT_NODULE_DIAMETER_MM};
use dicom_samples::generate::{GenerateOptions, generate};
use dicom_samples::ground_truth::XrayLabel;
use dicom_samples::radiograph::{RadiographSpec, render_radiograph};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn ct_slice(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut spec = CtSpec::random_chest(&mut rng, 100, DEFAULT_NODULE_DIAMETER_MM);
    spec.nodule_count = 4;
    let phantom = CtPhantom::new(&spec, &mut rng).expect("valid spec");
    let mut group = c.benchmark_group("synthesis");
    group.throughput(Throughput::Elements(512 * 512));
    group.bench_function("ct_slice_512", |b| {
        b.iter(|| phantom.render_slice_stored(50))
    });
    group.finish();
}

fn radiograph(c: &mut Criterion) {
    let spec = RadiographSpec {
        rows: 1024,
        columns: 1024,
        pixel_spacing_mm: 0.35,
        monochrome1: false,
        findings: vec![XrayLabel::Nodule, XrayLabel::PleuralEffusion],
    };
    let mut group = c.benchmark_group("synthesis");
    group.throughput(Throughput::Elements(1024 * 1024));
    group.bench_function("radiograph_1024", |b| {
        b.iter(|| render_radiograph(&spec, &mut ChaCha8Rng::seed_from_u64(2)).expect("renders"))
    });
    group.finish();
}

fn whole_study_written(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut options = GenerateOptions::new(dir.path());
    options.ct_studies = 1;
    options.ct_slices = 20;
    options.xray_studies = 0;
    let mut group = c.benchmark_group("synthesis");
    group.sample_size(10);
    group.throughput(Throughput::Elements(20));
    group.bench_function("ct_series_20_slices_written", |b| {
        b.iter(|| generate(&options, &|| {}).expect("writes"))
    });
    group.finish();
}

criterion_group!(benches, ct_slice, radiograph, whole_study_written);
criterion_main!(benches);
