use dicom_samples::ct::{CtPhantom, CtSpec, DEFAULT_NODULE_DIAMETER_MM};
use rand::SeedableRng;
use rayon::prelude::*;
fn main() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut spec = CtSpec::random_chest(&mut rng, 100, DEFAULT_NODULE_DIAMETER_MM);
    spec.nodule_count = 4;
    let t = std::time::Instant::now();
    let p = CtPhantom::new(&spec, &mut rng).unwrap();
    println!("phantom {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let s: i64 = (0..100)
        .into_par_iter()
        .map(|i| {
            p.render_slice_stored(i)
                .iter()
                .map(|v| *v as i64)
                .sum::<i64>()
        })
        .sum();
    println!("100 slices {:?} {s}", t.elapsed());
}
