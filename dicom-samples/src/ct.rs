//! A CT chest phantom in Hounsfield units: body outline with subcutaneous fat, chest wall,
//! lungs with domed bases and tapered apices, mediastinum and heart, aorta, branching
//! pulmonary vessels, spine, ribs, sternum, the scanner table, noise — and 0–4 lung nodules
//! (solid or part-solid, spherical or ellipsoidal) whose geometry is the ground truth.
//!
//! Coordinates are DICOM patient coordinates (LPS, mm): x towards the patient's left, y
//! towards the back, z towards the head. Slices are axial (ImageOrientationPatient
//! `1\0\0\0\1\0`), ordered head to feet, contiguous (spacing = thickness).

use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

use crate::ground_truth::{NoduleKind, NoduleTruth, Side};

/// RescaleIntercept written with every slice: stored value = HU − intercept.
pub const RESCALE_INTERCEPT: f64 = -1024.0;
/// RescaleSlope written with every slice.
pub const RESCALE_SLOPE: f64 = 1.0;
/// Smallest and largest nodule diameter (mm) the issue asks for by default.
pub const DEFAULT_NODULE_DIAMETER_MM: (f64, f64) = (4.0, 30.0);
/// Largest nodule diameter the phantom's lungs can hold with a margin (mm).
pub const MAX_NODULE_DIAMETER_MM: f64 = 60.0;
/// At most this many nodules per scan.
pub const MAX_NODULES: usize = 4;

const HU_AIR: f32 = -1000.0;
const HU_FAT: f32 = -100.0;
const HU_SOFT_TISSUE: f32 = 40.0;
const HU_BLOOD: f32 = 42.0;
const HU_LIVER: f32 = 58.0;
const HU_CORTICAL_BONE: f32 = 750.0;
const HU_TRABECULAR_BONE: f32 = 230.0;
const HU_TABLE: f32 = 120.0;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CtError {
    #[error("a CT image needs at least 16×16 pixels, got {rows}×{columns}")]
    ImageTooSmall { rows: u32, columns: u32 },
    #[error("a CT series needs at least one slice")]
    NoSlices,
    #[error("slice thickness {0} mm is outside 0.5–10 mm")]
    SliceThickness(f64),
    #[error("pixel spacing {0} mm is outside 0.2–2 mm")]
    PixelSpacing(f64),
    #[error("at most {MAX_NODULES} nodules per scan, asked for {0}")]
    TooManyNodules(usize),
    #[error(
        "nodule diameters {min}–{max} mm: need 1 mm ≤ min ≤ max ≤ {MAX_NODULE_DIAMETER_MM} mm (a larger nodule would not fit in the lung)"
    )]
    NoduleDiameter { min: f64, max: f64 },
    #[error(
        "could not place a {diameter:.1} mm nodule inside the lungs within the scanned range ({coverage:.0} mm): scan more slices or ask for smaller nodules"
    )]
    NoduleDoesNotFit { diameter: f64, coverage: f64 },
}

/// What to scan.
#[derive(Debug, Clone, PartialEq)]
pub struct CtSpec {
    pub rows: u32,
    pub columns: u32,
    pub slices: usize,
    pub slice_thickness_mm: f64,
    pub pixel_spacing_mm: f64,
    pub nodule_count: usize,
    pub nodule_diameter_mm: (f64, f64),
}

impl CtSpec {
    /// A chest scan as the issue describes it: 512×512, `slices` slices, thickness drawn
    /// from the common reconstruction thicknesses (1–5 mm) so the scan covers the chest.
    pub fn random_chest(rng: &mut impl Rng, slices: usize, nodule_diameter_mm: (f64, f64)) -> Self {
        const THICKNESSES: [f64; 6] = [1.0, 1.25, 2.0, 2.5, 3.0, 5.0];
        // Longest coverage that still stays around the chest (lungs are ~260 mm long).
        let fitting: Vec<f64> = THICKNESSES
            .iter()
            .copied()
            .filter(|t| t * slices as f64 <= 340.0)
            .collect();
        let slice_thickness_mm = if fitting.is_empty() {
            THICKNESSES[0]
        } else {
            fitting[rng.random_range(0..fitting.len())]
        };
        CtSpec {
            rows: 512,
            columns: 512,
            slices,
            slice_thickness_mm,
            pixel_spacing_mm: rng.random_range(0.66..0.82),
            nodule_count: rng.random_range(0..=MAX_NODULES),
            nodule_diameter_mm,
        }
    }

    pub fn validate(&self) -> Result<(), CtError> {
        if self.rows < 16 || self.columns < 16 {
            return Err(CtError::ImageTooSmall {
                rows: self.rows,
                columns: self.columns,
            });
        }
        if self.slices == 0 {
            return Err(CtError::NoSlices);
        }
        if !(0.5..=10.0).contains(&self.slice_thickness_mm) {
            return Err(CtError::SliceThickness(self.slice_thickness_mm));
        }
        if !(0.2..=2.0).contains(&self.pixel_spacing_mm) {
            return Err(CtError::PixelSpacing(self.pixel_spacing_mm));
        }
        if self.nodule_count > MAX_NODULES {
            return Err(CtError::TooManyNodules(self.nodule_count));
        }
        validate_nodule_diameters(self.nodule_diameter_mm)
    }
}

/// Checks a nodule diameter range before anything is generated.
pub fn validate_nodule_diameters((min, max): (f64, f64)) -> Result<(), CtError> {
    if !(min.is_finite()
        && max.is_finite()
        && 1.0 <= min
        && min <= max
        && max <= MAX_NODULE_DIAMETER_MM)
    {
        return Err(CtError::NoduleDiameter { min, max });
    }
    Ok(())
}

/// A capsule: every point within `radius` of the segment `a`–`b` (vessels, aorta).
#[derive(Debug, Clone)]
struct Capsule {
    a: [f64; 3],
    b: [f64; 3],
    radius: f64,
}

impl Capsule {
    fn distance_to(&self, p: [f64; 3]) -> f64 {
        let ab = sub(self.b, self.a);
        let ap = sub(p, self.a);
        let t = (dot(ap, ab) / dot(ab, ab).max(1e-12)).clamp(0.0, 1.0);
        let closest = [
            self.a[0] + ab[0] * t,
            self.a[1] + ab[1] * t,
            self.a[2] + ab[2] * t,
        ];
        norm(sub(p, closest))
    }
    fn z_range(&self) -> (f64, f64) {
        (
            self.a[2].min(self.b[2]) - self.radius,
            self.a[2].max(self.b[2]) + self.radius,
        )
    }
}

/// An ellipsoidal nodule rotated about z.
#[derive(Debug, Clone)]
struct Nodule {
    center: [f64; 3],
    semi_axes: [f64; 3],
    rotation: f64,
    kind: NoduleKind,
    /// Fraction of the nodule's size taken by the solid core (1 for solid nodules).
    core_fraction: f64,
    solid_hu: f64,
    ground_glass_hu: f64,
    side: Side,
}

impl Nodule {
    /// Normalised ellipsoid radius of `p`: < 1 inside, 1 on the surface.
    fn normalised_radius(&self, p: [f64; 3]) -> f64 {
        let d = sub(p, self.center);
        let (s, c) = self.rotation.sin_cos();
        let u = c * d[0] + s * d[1];
        let v = -s * d[0] + c * d[1];
        ((u / self.semi_axes[0]).powi(2)
            + (v / self.semi_axes[1]).powi(2)
            + (d[2] / self.semi_axes[2]).powi(2))
        .sqrt()
    }
    fn bounding_radius(&self) -> f64 {
        self.semi_axes.iter().copied().fold(0.0, f64::max)
    }
}

/// The patient: anatomy parameters drawn once per study.
#[derive(Debug, Clone)]
struct Anatomy {
    body_center: [f64; 2],
    body_semi: [f64; 2],
    fat_mm: f64,
    /// z of the lung bases' lowest point (costophrenic recesses) and of the apices.
    lung_base_z: f64,
    lung_apex_z: f64,
    dome_height: f64,
    /// Extra height of the right hemidiaphragm (the liver pushes it up).
    right_dome_lift: f64,
    lung_center_x: f64,
    lung_center_y: f64,
    lung_semi: [f64; 2],
    heart_center: [f64; 3],
    heart_semi: [f64; 3],
    spine_y: f64,
    rib_phase: f64,
    table_y: f64,
    noise_hu: f32,
}

/// Geometry of the acquired series.
#[derive(Debug, Clone, PartialEq)]
pub struct CtGeometry {
    pub rows: u32,
    pub columns: u32,
    pub pixel_spacing_mm: f64,
    pub slice_thickness_mm: f64,
    /// ImagePositionPatient of the first (most superior) slice.
    pub first_position: [f64; 3],
    pub slices: usize,
}

impl CtGeometry {
    pub fn slice_position(&self, index: usize) -> [f64; 3] {
        [
            self.first_position[0],
            self.first_position[1],
            self.first_position[2] - index as f64 * self.slice_thickness_mm,
        ]
    }
    /// Patient coordinates of pixel (column, row) on slice `index`.
    pub fn pixel_to_patient(&self, column: f64, row: f64, index: usize) -> [f64; 3] {
        let p = self.slice_position(index);
        [
            p[0] + column * self.pixel_spacing_mm,
            p[1] + row * self.pixel_spacing_mm,
            p[2],
        ]
    }
    /// Fractional voxel coordinates (column, row, slice) of a patient-space point.
    pub fn patient_to_voxel(&self, p: [f64; 3]) -> [f64; 3] {
        [
            (p[0] - self.first_position[0]) / self.pixel_spacing_mm,
            (p[1] - self.first_position[1]) / self.pixel_spacing_mm,
            (self.first_position[2] - p[2]) / self.slice_thickness_mm,
        ]
    }
    pub fn coverage_mm(&self) -> f64 {
        self.slices as f64 * self.slice_thickness_mm
    }
}

/// One synthetic chest CT: anatomy, nodules and acquisition geometry, ready to render.
#[derive(Debug, Clone)]
pub struct CtPhantom {
    pub geometry: CtGeometry,
    anatomy: Anatomy,
    vessels: Vec<Capsule>,
    nodules: Vec<Nodule>,
    noise_seed: u64,
}

impl CtPhantom {
    pub fn new(spec: &CtSpec, rng: &mut impl Rng) -> Result<Self, CtError> {
        spec.validate()?;
        let scale = rng.random_range(0.9..1.1);
        let body_semi = [
            rng.random_range(150.0..175.0) * scale,
            rng.random_range(100.0..118.0) * scale,
        ];
        let lung_base_z = -125.0 * scale;
        let lung_apex_z = 135.0 * scale;
        let anatomy = Anatomy {
            body_center: [rng.random_range(-8.0..8.0), rng.random_range(-6.0..6.0)],
            body_semi,
            fat_mm: rng.random_range(8.0..22.0),
            lung_base_z,
            lung_apex_z,
            dome_height: rng.random_range(45.0..60.0) * scale,
            right_dome_lift: rng.random_range(10.0..20.0),
            lung_center_x: body_semi[0] * 0.47,
            lung_center_y: -4.0,
            lung_semi: [body_semi[0] * 0.36, body_semi[1] * 0.74],
            heart_center: [
                rng.random_range(18.0..30.0),
                -body_semi[1] * rng.random_range(0.12..0.22),
                lung_base_z + 60.0 * scale,
            ],
            heart_semi: [
                rng.random_range(52.0..62.0) * scale,
                rng.random_range(40.0..48.0) * scale,
                rng.random_range(55.0..65.0) * scale,
            ],
            spine_y: body_semi[1] * 0.62,
            rib_phase: rng.random_range(0.0..25.0),
            table_y: body_semi[1] + rng.random_range(6.0..14.0),
            noise_hu: rng.random_range(9.0..22.0),
        };

        // Scan centred on the lungs, with the patient a little off the isocentre.
        let coverage = spec.slices as f64 * spec.slice_thickness_mm;
        let lung_mid = (lung_base_z + lung_apex_z) / 2.0 + rng.random_range(-15.0..15.0);
        let spacing = spec.pixel_spacing_mm;
        let geometry = CtGeometry {
            rows: spec.rows,
            columns: spec.columns,
            pixel_spacing_mm: spacing,
            slice_thickness_mm: spec.slice_thickness_mm,
            first_position: [
                -(f64::from(spec.columns) - 1.0) / 2.0 * spacing,
                -(f64::from(spec.rows) - 1.0) / 2.0 * spacing + anatomy.body_center[1] * 0.3,
                lung_mid + (coverage - spec.slice_thickness_mm) / 2.0,
            ],
            slices: spec.slices,
        };

        let mut phantom = CtPhantom {
            geometry,
            anatomy,
            vessels: Vec::new(),
            nodules: Vec::new(),
            noise_seed: rng.random(),
        };
        phantom.vessels = phantom.grow_vessels(rng);
        for _ in 0..spec.nodule_count {
            let nodule = phantom.place_nodule(rng, spec.nodule_diameter_mm)?;
            phantom.nodules.push(nodule);
        }
        // Keep each nodule's ground truth clean: no vessel runs through or touches it.
        let nodules = phantom.nodules.clone();
        phantom.vessels.retain(|v| {
            nodules
                .iter()
                .all(|n| v.distance_to(n.center) > n.bounding_radius() + v.radius + 4.0)
        });
        Ok(phantom)
    }

    /// Ground truth of every nodule, in patient and voxel coordinates.
    pub fn nodule_truth(&self) -> Vec<NoduleTruth> {
        self.nodules
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let voxel = self.geometry.patient_to_voxel(n.center);
                let t = self.geometry.slice_thickness_mm;
                let first = ((voxel[2] - n.semi_axes[2] / t).ceil().max(0.0)) as usize;
                let last = ((voxel[2] + n.semi_axes[2] / t).floor().max(0.0) as usize)
                    .min(self.geometry.slices.saturating_sub(1));
                NoduleTruth {
                    id: i as u32 + 1,
                    label: "lung_nodule".to_string(),
                    kind: n.kind,
                    spherical: n.semi_axes[0] == n.semi_axes[1] && n.semi_axes[1] == n.semi_axes[2],
                    side: n.side,
                    center_mm: n.center,
                    semi_axes_mm: n.semi_axes,
                    rotation_deg: n.rotation.to_degrees(),
                    diameter_mm: 2.0 * n.bounding_radius(),
                    solid_core_diameter_mm: (n.kind == NoduleKind::PartSolid)
                        .then(|| 2.0 * n.bounding_radius() * n.core_fraction),
                    center_voxel: voxel,
                    slice_range: [first, last.max(first)],
                    solid_hu: n.solid_hu,
                }
            })
            .collect()
    }

    /// The slice in Hounsfield units, row-major, noise included.
    pub fn render_slice_hu(&self, index: usize) -> Vec<f32> {
        let g = &self.geometry;
        let (rows, columns) = (g.rows as usize, g.columns as usize);
        let z = g.slice_position(index)[2];
        let mut hu = vec![HU_AIR; rows * columns];
        hu.par_chunks_mut(columns)
            .enumerate()
            .for_each(|(row, line)| {
                let y = g.slice_position(index)[1] + row as f64 * g.pixel_spacing_mm;
                for (column, value) in line.iter_mut().enumerate() {
                    let x = g.first_position[0] + column as f64 * g.pixel_spacing_mm;
                    *value = self.anatomy_hu(x, y, z);
                }
            });
        self.draw_capsules(&mut hu, index);
        self.draw_nodules(&mut hu, index);
        self.add_noise(&mut hu, index);
        hu
    }

    /// Stored pixel values (signed 16-bit) of a slice: HU − RescaleIntercept, clamped.
    pub fn render_slice_stored(&self, index: usize) -> Vec<i16> {
        self.render_slice_hu(index)
            .into_iter()
            .map(|h| {
                let stored = (f64::from(h) - RESCALE_INTERCEPT) / RESCALE_SLOPE;
                stored.round().clamp(-2048.0, 4095.0) as i16
            })
            .collect()
    }

    /// 1 where a nodule (solid or ground-glass part) covers the voxel centre, else 0.
    pub fn nodule_mask(&self, index: usize) -> Vec<u8> {
        let g = &self.geometry;
        let mut mask = vec![0u8; g.rows as usize * g.columns as usize];
        for n in &self.nodules {
            self.for_each_pixel_near(index, n.center, n.bounding_radius(), |i, p| {
                if n.normalised_radius(p) <= 1.0 {
                    mask[i] = 1;
                }
            });
        }
        mask
    }

    /// Window centre/width for display (mediastinal) and for lungs.
    pub fn windows() -> [(f64, f64, &'static str); 2] {
        [(40.0, 400.0, "MEDIASTINUM"), (-600.0, 1500.0, "LUNG")]
    }

    fn anatomy_hu(&self, x: f64, y: f64, z: f64) -> f32 {
        let a = &self.anatomy;
        let table_top = a.table_y;
        if (table_top..table_top + 12.0).contains(&y) && x.abs() < 230.0 {
            return HU_TABLE;
        }
        let (body_r, fat_r) = self.body_radius(x, y, z);
        if body_r > 1.0 {
            return HU_AIR;
        }
        if body_r > fat_r {
            return HU_FAT;
        }
        if let Some(bone) = self.bone_hu(x, y, z, body_r, fat_r) {
            return bone;
        }
        let heart = normalised_ellipsoid([x, y, z], a.heart_center, a.heart_semi);
        if heart <= 1.0 {
            // Epicardial fat rim, then blood pool and myocardium.
            return if heart > 0.93 { HU_FAT } else { HU_BLOOD };
        }
        if let Some(lung) = self.lung_hu(x, y, z) {
            return lung;
        }
        if z < a.lung_base_z + a.dome_height && x < -10.0 {
            // Liver under the right hemidiaphragm.
            return HU_LIVER;
        }
        HU_SOFT_TISSUE
    }

    /// Normalised radius of (x, y) in the body outline at height z (1 = skin), and the
    /// radius where subcutaneous fat gives way to the chest wall.
    fn body_radius(&self, x: f64, y: f64, z: f64) -> (f64, f64) {
        let a = &self.anatomy;
        // Above the apices the neck and shoulders narrow the body.
        let taper = if z > a.lung_apex_z - 20.0 {
            (1.0 - (z - (a.lung_apex_z - 20.0)) / 260.0).max(0.55)
        } else {
            1.0
        };
        let bx = (x - a.body_center[0]) / (a.body_semi[0] * taper);
        let by = (y - a.body_center[1]) / a.body_semi[1];
        ((bx * bx + by * by).sqrt(), 1.0 - a.fat_mm / a.body_semi[1])
    }

    /// Lung parenchyma HU when (x, y, z) is inside a lung, with the dependent (posterior)
    /// gradient real lungs show.
    fn lung_hu(&self, x: f64, y: f64, z: f64) -> Option<f32> {
        let inside = self.lung_membership(x, y, z)?;
        let posterior =
            ((y - self.anatomy.lung_center_y) / self.anatomy.lung_semi[1]).clamp(-1.0, 1.0);
        let parenchyma = -865.0 + 45.0 * posterior as f32;
        // A soft 1–2 pixel edge stands for partial volume at the pleura.
        Some(HU_SOFT_TISSUE + (parenchyma - HU_SOFT_TISSUE) * inside)
    }

    /// 0..1 membership of a point in either lung (1 well inside), None outside.
    fn lung_membership(&self, x: f64, y: f64, z: f64) -> Option<f32> {
        let a = &self.anatomy;
        if z > a.lung_apex_z || z < a.lung_base_z {
            return None;
        }
        let side = if x >= 0.0 { 1.0 } else { -1.0 };
        // Apices taper over their top 50 mm.
        let apex_scale = ((a.lung_apex_z - z) / 50.0)
            .clamp(0.0, 1.0)
            .sqrt()
            .max(0.05);
        let cx = side * a.lung_center_x + a.body_center[0];
        let u = (x - cx) / (a.lung_semi[0] * apex_scale);
        let v = (y - a.lung_center_y - a.body_center[1]) / (a.lung_semi[1] * apex_scale.max(0.4));
        let r2 = u * u + v * v;
        if r2 >= 1.0 {
            return None;
        }
        // Domed base: the lung reaches lowest at its periphery (costophrenic recesses).
        let lift = if side < 0.0 { a.right_dome_lift } else { 0.0 };
        let base = a.lung_base_z + lift + a.dome_height * (1.0 - r2);
        if z < base {
            return None;
        }
        if normalised_ellipsoid([x, y, z], a.heart_center, a.heart_semi) <= 1.06 {
            return None;
        }
        // The chest wall (muscle and ribs) bounds the lungs from outside.
        let (body_r, fat_r) = self.body_radius(x, y, z);
        let wall_limit = fat_r - 0.09;
        if body_r >= wall_limit {
            return None;
        }
        let wall_mm = (wall_limit - body_r) * a.body_semi[1];
        let edge_mm = ((1.0 - r2.sqrt()) * a.lung_semi[0] * apex_scale).min(wall_mm);
        Some(((edge_mm / 1.5).min((z - base) / 1.5)).clamp(0.0, 1.0) as f32)
    }

    fn bone_hu(&self, x: f64, y: f64, z: f64, body_r: f64, fat_r: f64) -> Option<f32> {
        let a = &self.anatomy;
        // Vertebral body with a cortical shell; discs every 27 mm.
        let (vx, vy) = (x - a.body_center[0], y - (a.body_center[1] + a.spine_y));
        let vr = (vx * vx + vy * vy).sqrt();
        let disc = (z + a.rib_phase).rem_euclid(27.0) < 5.0;
        if vr < 17.0 {
            return Some(if disc {
                80.0
            } else if vr > 14.5 {
                HU_CORTICAL_BONE
            } else {
                HU_TRABECULAR_BONE
            });
        }
        // Spinal canal behind it, ringed by the neural arch.
        let (cx, cy) = (vx, y - (a.body_center[1] + a.spine_y + 27.0));
        let cr = (cx * cx + cy * cy).sqrt();
        if cr < 8.0 {
            return Some(20.0);
        }
        if cr < 12.0 && !disc {
            return Some(HU_CORTICAL_BONE * 0.8);
        }
        // Sternum, anterior midline, over the upper chest.
        if z > a.lung_base_z + 40.0
            && (x - a.body_center[0]).abs() < 14.0
            && (y - (a.body_center[1] - a.body_semi[1] * (fat_r - 0.05))).abs() < 5.0
        {
            return Some(HU_TRABECULAR_BONE + 150.0);
        }
        // Ribs: oblique bands just inside the fat, cut by the slice every ~25 mm; their z
        // phase shifts with the angle because ribs run downwards from back to front.
        if z > a.lung_base_z - 20.0 && body_r > fat_r - 0.07 {
            let angle = (y - a.body_center[1]).atan2(x - a.body_center[0]);
            let posterior_weight = angle.sin(); // +1 at the back
            let phase = (z + a.rib_phase + 18.0 * posterior_weight).rem_euclid(25.0);
            if phase < 9.0 && angle.sin() > -0.85 {
                let across = (phase - 4.5).abs() / 4.5;
                return Some(if across > 0.65 {
                    HU_CORTICAL_BONE
                } else {
                    HU_TRABECULAR_BONE + 100.0
                });
            }
        }
        None
    }

    /// Aorta and pulmonary vessels, with partial volume at their edge.
    fn draw_capsules(&self, hu: &mut [f32], index: usize) {
        let z = self.geometry.slice_position(index)[2];
        let half = self.geometry.slice_thickness_mm / 2.0;
        for capsule in &self.vessels {
            let (lo, hi) = capsule.z_range();
            if z + half < lo || z - half > hi {
                continue;
            }
            let mid = [
                (capsule.a[0] + capsule.b[0]) / 2.0,
                (capsule.a[1] + capsule.b[1]) / 2.0,
                z,
            ];
            let reach = norm(sub(capsule.a, capsule.b)) / 2.0 + capsule.radius + 1.0;
            self.for_each_pixel_near(index, mid, reach, |i, p| {
                let d = capsule.distance_to(p);
                let cover = ((capsule.radius - d) / 0.6 + 0.5).clamp(0.0, 1.0) as f32;
                if cover > 0.0 {
                    hu[i] += (HU_BLOOD - hu[i]) * cover;
                }
            });
        }
    }

    fn draw_nodules(&self, hu: &mut [f32], index: usize) {
        for n in &self.nodules {
            let edge_mm = 0.5;
            self.for_each_pixel_near(index, n.center, n.bounding_radius() + 1.0, |i, p| {
                let r = n.normalised_radius(p);
                // Partial volume over ~0.5 mm at the nodule's surface.
                let cover = ((1.0 - r) * n.bounding_radius() / edge_mm + 0.5).clamp(0.0, 1.0);
                if cover <= 0.0 {
                    return;
                }
                let inner = if r <= n.core_fraction {
                    n.solid_hu
                } else {
                    n.ground_glass_hu
                };
                hu[i] += (inner as f32 - hu[i]) * cover as f32;
            });
        }
    }

    fn add_noise(&self, hu: &mut [f32], index: usize) {
        let sigma = self.anatomy.noise_hu;
        let columns = self.geometry.columns as usize;
        let slice_seed = self.noise_seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        hu.par_chunks_mut(columns)
            .enumerate()
            .for_each(|(row, line)| {
                let mut rng = ChaCha8Rng::seed_from_u64(slice_seed.wrapping_add(row as u64));
                for value in line.iter_mut() {
                    // Air outside the body is quieter than tissue on real scanners' images.
                    let n: f32 = StandardNormal.sample(&mut rng);
                    let scale = if *value <= HU_AIR + 1.0 { 0.4 } else { 1.0 };
                    *value += n * sigma * scale;
                }
            });
    }

    /// Calls `visit(pixel_index, patient_point)` for pixels of slice `index` within `reach`
    /// mm (in-plane) of `center`, when the slice is within `reach` of it in z.
    fn for_each_pixel_near(
        &self,
        index: usize,
        center: [f64; 3],
        reach: f64,
        mut visit: impl FnMut(usize, [f64; 3]),
    ) {
        let g = &self.geometry;
        let z = g.slice_position(index)[2];
        if (z - center[2]).abs() > reach {
            return;
        }
        let voxel = g.patient_to_voxel(center);
        let r_px = reach / g.pixel_spacing_mm;
        let last_column = f64::from(g.columns) - 1.0;
        let last_row = f64::from(g.rows) - 1.0;
        let c0 = (voxel[0] - r_px).floor().clamp(0.0, last_column) as usize;
        let c1 = (voxel[0] + r_px).ceil().clamp(0.0, last_column) as usize;
        let r0 = (voxel[1] - r_px).floor().clamp(0.0, last_row) as usize;
        let r1 = (voxel[1] + r_px).ceil().clamp(0.0, last_row) as usize;
        for row in r0..=r1 {
            for column in c0..=c1 {
                let p = g.pixel_to_patient(column as f64, row as f64, index);
                visit(row * g.columns as usize + column, p);
            }
        }
    }

    /// Pulmonary vessel trees from each hilum, plus the aorta.
    fn grow_vessels(&self, rng: &mut impl Rng) -> Vec<Capsule> {
        let a = &self.anatomy;
        let mut vessels = Vec::new();
        let hilum_z = a.heart_center[2] + a.heart_semi[2] * 0.9;
        // Ascending aorta, arch and descending aorta (patient's left of the spine).
        let asc_bottom = [
            a.body_center[0] + 8.0,
            a.heart_center[1] - 5.0,
            a.heart_center[2] + 20.0,
        ];
        let arch_top = [
            a.body_center[0] + 10.0,
            a.heart_center[1] + 20.0,
            hilum_z + 45.0,
        ];
        let desc_top = [a.body_center[0] + 22.0, a.spine_y - 22.0, hilum_z + 30.0];
        let desc_bottom = [
            a.body_center[0] + 18.0,
            a.spine_y - 20.0,
            a.lung_base_z - 40.0,
        ];
        vessels.push(Capsule {
            a: asc_bottom,
            b: arch_top,
            radius: 15.0,
        });
        vessels.push(Capsule {
            a: arch_top,
            b: desc_top,
            radius: 13.0,
        });
        vessels.push(Capsule {
            a: desc_top,
            b: desc_bottom,
            radius: 12.0,
        });
        for side in [-1.0f64, 1.0] {
            let hilum = [
                a.body_center[0] + side * (a.lung_center_x - a.lung_semi[0] * 0.55),
                a.lung_center_y,
                hilum_z,
            ];
            let mut frontier = vec![(hilum, 5.5f64, 0u32)];
            while let Some((start, radius, depth)) = frontier.pop() {
                let branches = if depth == 0 { 7 } else { 2 };
                for _ in 0..branches {
                    let mut direction = [
                        side * rng.random_range(0.2..1.0),
                        rng.random_range(-0.8..0.8),
                        rng.random_range(-1.0..1.0),
                    ];
                    let len = norm(direction).max(1e-6);
                    direction = [direction[0] / len, direction[1] / len, direction[2] / len];
                    let length = rng.random_range(25.0..50.0) * (0.75f64).powi(depth as i32);
                    let mut end = start;
                    // Walk outwards while inside the lung, so vessels never leave it.
                    let mut travelled = 0.0;
                    while travelled < length {
                        let next = [
                            end[0] + direction[0] * 2.0,
                            end[1] + direction[1] * 2.0,
                            end[2] + direction[2] * 2.0,
                        ];
                        if self.lung_membership(next[0], next[1], next[2]).is_none() && depth > 0 {
                            break;
                        }
                        end = next;
                        travelled += 2.0;
                    }
                    if travelled < 4.0 {
                        continue;
                    }
                    vessels.push(Capsule {
                        a: start,
                        b: end,
                        radius,
                    });
                    if depth < 3 {
                        frontier.push((end, radius * 0.68, depth + 1));
                    }
                }
            }
        }
        vessels
    }

    fn place_nodule(
        &self,
        rng: &mut impl Rng,
        (min_d, max_d): (f64, f64),
    ) -> Result<Nodule, CtError> {
        let g = &self.geometry;
        let diameter = if max_d > min_d {
            rng.random_range(min_d..=max_d)
        } else {
            min_d
        };
        let spherical = rng.random_bool(0.5);
        let r = diameter / 2.0;
        let semi_axes = if spherical {
            [r, r, r]
        } else {
            // The longest axis is the measured diameter; the others are shorter.
            [
                r,
                r * rng.random_range(0.6..0.9),
                r * rng.random_range(0.6..1.0),
            ]
        };
        let kind = if rng.random_bool(0.3) {
            NoduleKind::PartSolid
        } else {
            NoduleKind::Solid
        };
        let z_top = g.first_position[2];
        let z_bottom = g.slice_position(g.slices - 1)[2];
        for _ in 0..2000 {
            let side = if rng.random_bool(0.5) {
                Side::Left
            } else {
                Side::Right
            };
            let sign = if side == Side::Left { 1.0 } else { -1.0 };
            let a = &self.anatomy;
            let center = [
                a.body_center[0]
                    + sign * a.lung_center_x
                    + rng.random_range(-1.0..1.0) * a.lung_semi[0],
                a.lung_center_y + a.body_center[1] + rng.random_range(-1.0..1.0) * a.lung_semi[1],
                rng.random_range(z_bottom.min(z_top)..=z_top.max(z_bottom)),
            ];
            let nodule = Nodule {
                center,
                semi_axes,
                rotation: rng.random_range(0.0..std::f64::consts::PI),
                kind,
                core_fraction: if kind == NoduleKind::PartSolid {
                    rng.random_range(0.3..0.6)
                } else {
                    1.0
                },
                solid_hu: rng.random_range(15.0..60.0),
                ground_glass_hu: rng.random_range(-600.0..-400.0),
                side,
            };
            if self.fits_in_lung(&nodule) {
                return Ok(nodule);
            }
        }
        Err(CtError::NoduleDoesNotFit {
            diameter,
            coverage: g.coverage_mm(),
        })
    }

    /// The whole nodule, plus a 3 mm margin, lies in one lung and apart from other nodules.
    fn fits_in_lung(&self, nodule: &Nodule) -> bool {
        let margin = 3.0;
        let reach = nodule.bounding_radius() + margin;
        let same_side = |x: f64| (x >= 0.0) == (nodule.center[0] >= 0.0);
        let probes = sphere_directions();
        probes.iter().all(|d| {
            let p = [
                nodule.center[0] + d[0] * reach,
                nodule.center[1] + d[1] * reach,
                nodule.center[2] + d[2] * reach,
            ];
            same_side(p[0])
                && self
                    .lung_membership(p[0], p[1], p[2])
                    .is_some_and(|m| m >= 1.0)
        }) && self
            .lung_membership(nodule.center[0], nodule.center[1], nodule.center[2])
            .is_some()
            && self.nodules.iter().all(|other| {
                norm(sub(other.center, nodule.center))
                    > other.bounding_radius() + nodule.bounding_radius() + 5.0
            })
    }
}

/// 26 directions: the faces, edges and corners of a cube, normalised.
fn sphere_directions() -> Vec<[f64; 3]> {
    let mut out = Vec::with_capacity(26);
    for i in -1..=1 {
        for j in -1..=1 {
            for k in -1..=1 {
                if (i, j, k) == (0, 0, 0) {
                    continue;
                }
                let v = [f64::from(i), f64::from(j), f64::from(k)];
                let n = norm(v);
                out.push([v[0] / n, v[1] / n, v[2] / n]);
            }
        }
    }
    out
}

fn normalised_ellipsoid(p: [f64; 3], center: [f64; 3], semi: [f64; 3]) -> f64 {
    (((p[0] - center[0]) / semi[0]).powi(2)
        + ((p[1] - center[1]) / semi[1]).powi(2)
        + ((p[2] - center[2]) / semi[2]).powi(2))
    .sqrt()
}

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}
fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(slices: usize, nodules: usize) -> CtSpec {
        CtSpec {
            rows: 512,
            columns: 512,
            slices,
            slice_thickness_mm: 2.5,
            pixel_spacing_mm: 0.75,
            nodule_count: nodules,
            nodule_diameter_mm: DEFAULT_NODULE_DIAMETER_MM,
        }
    }

    /// Median HU of a (2·half+1)² patch around (cx, cy): robust to a vessel crossing it.
    fn median_hu(p: &CtPhantom, index: usize, cx: f64, cy: f64, half: usize) -> f32 {
        let hu = p.render_slice_hu(index);
        let v = p.geometry.patient_to_voxel([cx, cy, 0.0]);
        let (c, r) = (v[0].round() as usize, v[1].round() as usize);
        let mut patch: Vec<f32> = (r - half..=r + half)
            .flat_map(|row| (c - half..=c + half).map(move |col| (row, col)))
            .map(|(row, col)| hu[row * 512 + col])
            .collect();
        patch.sort_by(f32::total_cmp);
        patch[patch.len() / 2]
    }

    /// Normalised ellipsoid radius of a point, computed from the ground truth alone.
    fn truth_radius(n: &NoduleTruth, p: [f64; 3]) -> f64 {
        let d = sub(p, n.center_mm);
        let (s, c) = n.rotation_deg.to_radians().sin_cos();
        let u = c * d[0] + s * d[1];
        let v = -s * d[0] + c * d[1];
        ((u / n.semi_axes_mm[0]).powi(2)
            + (v / n.semi_axes_mm[1]).powi(2)
            + (d[2] / n.semi_axes_mm[2]).powi(2))
        .sqrt()
    }

    #[test]
    fn anatomy_has_realistic_hounsfield_units() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let p = CtPhantom::new(&spec(100, 0), &mut rng).unwrap();
        let a = p.anatomy.clone();
        // A slice in the upper chest, above the heart.
        let index = p.geometry.slices / 3;
        let z = p.geometry.slice_position(index)[2];
        assert!(
            z > a.heart_center[2] + a.heart_semi[2],
            "slice should be above the heart"
        );
        // Outside the body (top-left corner): air.
        let hu = p.render_slice_hu(index);
        let corner: f32 = hu[..64].iter().sum::<f32>() / 64.0;
        assert!((-1020.0..-980.0).contains(&corner), "air {corner}");
        // Lateral part of the left lung: parenchyma.
        let lung = median_hu(
            &p,
            index,
            a.lung_center_x + a.lung_semi[0] * 0.5,
            a.lung_center_y,
            10,
        );
        assert!((-930.0..-780.0).contains(&lung), "lung {lung}");
        // Vertebral body: bone.
        let bone = median_hu(&p, index, a.body_center[0], a.body_center[1] + a.spine_y, 3);
        assert!(bone > 150.0, "spine {bone}");
    }

    #[test]
    fn nodule_voxels_lie_where_the_truth_says() {
        for seed in 0..6 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let p = CtPhantom::new(&spec(120, 4), &mut rng).unwrap();
            let truth = p.nodule_truth();
            assert_eq!(truth.len(), 4);
            for n in &truth {
                let slice = n.center_voxel[2].round() as usize;
                let mask = p.nodule_mask(slice);
                let (c, r) = (
                    n.center_voxel[0].round() as usize,
                    n.center_voxel[1].round() as usize,
                );
                assert_eq!(mask[r * 512 + c], 1, "nodule {} centre not in mask", n.id);
                let hu = p.render_slice_hu(slice);
                let centre = hu[r * 512 + c];
                // What the truth predicts at that voxel: solid core, ground glass, or edge.
                let radius =
                    truth_radius(n, p.geometry.pixel_to_patient(c as f64, r as f64, slice));
                let core = n.solid_core_diameter_mm.map_or(1.0, |d| d / n.diameter_mm);
                let expected = if radius < core - 0.15 {
                    Some(n.solid_hu as f32)
                } else if radius > core + 0.15 && radius < 0.8 {
                    Some(-500.0) // ground glass is drawn between −600 and −400 HU
                } else {
                    None // on a boundary: partial volume
                };
                if let Some(expected) = expected {
                    assert!(
                        (centre - expected).abs() < 120.0,
                        "centre {centre} vs {expected}"
                    );
                }
                // Just beyond the surface along x, the lung is back.
                let out_mm = n.semi_axes_mm.iter().copied().fold(0.0, f64::max) + 2.5;
                let out_c = n.center_voxel[0] + out_mm / p.geometry.pixel_spacing_mm;
                let outside = hu[r * 512 + out_c.round() as usize];
                assert!(outside < -600.0, "outside {outside}");
                assert!(n.diameter_mm >= 4.0 && n.diameter_mm <= 30.0);
                assert!(n.slice_range[0] <= slice && slice <= n.slice_range[1]);
            }
        }
    }

    #[test]
    fn stored_values_apply_the_rescale() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let p = CtPhantom::new(&spec(10, 0), &mut rng).unwrap();
        let hu = p.render_slice_hu(3);
        let stored = p.render_slice_stored(3);
        for (h, s) in hu.iter().zip(&stored).step_by(997) {
            assert!(
                (f64::from(*s) * RESCALE_SLOPE + RESCALE_INTERCEPT - f64::from(*h)).abs() <= 0.5
            );
        }
    }

    #[test]
    fn same_seed_same_scan() {
        let a = CtPhantom::new(&spec(20, 2), &mut ChaCha8Rng::seed_from_u64(9)).unwrap();
        let b = CtPhantom::new(&spec(20, 2), &mut ChaCha8Rng::seed_from_u64(9)).unwrap();
        let c = CtPhantom::new(&spec(20, 2), &mut ChaCha8Rng::seed_from_u64(10)).unwrap();
        assert_eq!(a.render_slice_stored(7), b.render_slice_stored(7));
        assert_ne!(a.render_slice_stored(7), c.render_slice_stored(7));
        assert_eq!(a.nodule_truth(), b.nodule_truth());
    }

    #[test]
    fn impossible_specs_are_refused() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut s = spec(10, 1);
        s.rows = 0;
        assert!(matches!(
            CtPhantom::new(&s, &mut rng),
            Err(CtError::ImageTooSmall { .. })
        ));
        let mut s = spec(10, 1);
        s.nodule_diameter_mm = (10.0, 200.0);
        assert!(matches!(
            CtPhantom::new(&s, &mut rng),
            Err(CtError::NoduleDiameter { .. })
        ));
        assert!(matches!(
            CtPhantom::new(&spec(0, 0), &mut rng),
            Err(CtError::NoSlices)
        ));
        let mut s = spec(10, 1);
        s.nodule_count = 9;
        assert!(matches!(
            CtPhantom::new(&s, &mut rng),
            Err(CtError::TooManyNodules(9))
        ));
    }
}
