//! Synthetic chest radiographs: a frontal (PA) "for presentation" image computed as a
//! projection. For every pixel the line integral of attenuation is summed analytically from
//! the thickness of each structure along the beam — torso with neck and shoulders, lungs
//! (air in place of tissue), heart, aortic knob, trachea and main bronchi, spine, ribs,
//! clavicles, humeral heads, pulmonary vessels, gastric bubble. Quantum noise is added with
//! the spread a detector gives (larger where fewer quanta get through), then the image is
//! processed as a DR system does for presentation (large-scale range compressed, finer
//! detail amplified) and log-compressed into 12-bit stored values.
//!
//! Findings (nodule, consolidation, pleural effusion, cardiomegaly) are drawn into the same
//! model and returned as ground truth, in pixels and in millimetres.
//!
//! Coordinates: the detector plane in mm from the image's top-left corner (x along columns,
//! y along rows; pixel `(column, row)` sits at `(column, row) × spacing`). The anatomy lives
//! in a patient frame `(u, v)`: u in mm from the midline towards the image's right (the
//! patient's left, since a PA image shows the patient's right on its left), v in mm down
//! from the lung apices. The patient frame is shifted and rotated by a few degrees on the
//! detector.
//!
//! Determinism: all geometry is drawn from the caller's RNG first; noise comes from
//! per-row ChaCha8 streams seeded from one number drawn from it, so rows render in parallel
//! and the image is the same whatever the thread count. Anatomy, exposure and noise are
//! drawn before the findings, so a study rendered with and without findings from the same
//! seed differs only around the findings (within the reach of the processing's smoothing).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

use crate::ground_truth::{Side, XrayFinding, XrayLabel};

/// BitsStored of the rendered pixels.
pub const BITS_STORED: u16 = 12;
/// Largest stored value.
pub const MAX_STORED_VALUE: u16 = (1 << BITS_STORED) - 1;
/// Smallest image edge (pixels).
pub const MIN_EDGE_PX: u32 = 64;
/// Largest image edge (pixels): bounds the memory one image takes.
pub const MAX_EDGE_PX: u32 = 16_384;
/// Smallest field of view (mm, each way). Fields narrower than an adult chest needs get a
/// proportionally smaller patient, down to this size.
pub const MIN_FIELD_MM: f64 = 250.0;
/// Range of the cardiothoracic ratio of a normal heart.
pub const NORMAL_CTR: (f64, f64) = (0.41, 0.48);
/// Range of the cardiothoracic ratio drawn for cardiomegaly.
pub const CARDIOMEGALY_CTR: (f64, f64) = (0.55, 0.65);
/// Range of nodule diameters (mm).
pub const NODULE_DIAMETER_MM: (f64, f64) = (8.0, 30.0);
/// Range of a consolidation's extent (mm).
pub const CONSOLIDATION_EXTENT_MM: (f64, f64) = (30.0, 80.0);
/// Range of an effusion's height at the lateral chest wall (mm).
pub const EFFUSION_HEIGHT_MM: (f64, f64) = (20.0, 60.0);

/// Linear attenuation of soft tissue at the effective energy of a 125 kVp chest beam (1/mm).
const MU_SOFT_TISSUE: f64 = 0.020;
/// Linear attenuation of aerated lung, about a quarter of tissue's density (1/mm).
const MU_LUNG: f64 = 0.005;
/// Attenuation lost per mm of aerated lung standing in for soft tissue.
const LUNG_AIR_DEFICIT: f64 = MU_SOFT_TISSUE - MU_LUNG;
/// Extra attenuation of cortical bone over the soft tissue it replaces (1/mm).
const CORTICAL_EXCESS: f64 = 0.032;
/// Extra attenuation of trabecular (cancellous) bone over soft tissue (1/mm).
const TRABECULAR_EXCESS: f64 = 0.008;
/// The heart displaces more lung than its own depth: the lungs wrap around it.
const HEART_DISPLACEMENT: f64 = 1.35;
/// Vessels run obliquely through the lung, so the beam crosses more blood than their
/// diameter.
const VESSEL_OBLIQUITY: f64 = 1.7;
/// Tabulation step of the outlines that depend on v (mm).
const PROFILE_STEP_MM: f64 = 0.5;
/// Patient-frame v covered by the tables (mm); outlines are constant beyond.
const PROFILE_V_RANGE: (f64, f64) = (-700.0, 900.0);
/// Ribs drawn per side (posterior and anterior arc each).
const RIBS_PER_SIDE: usize = 11;
/// Lungs of the average adult drawn (mm): widest extent from the midline, and apex to
/// costophrenic angle. They fit the generator's 358.4 mm detector with room to spare.
const NOMINAL_LUNG_HALF_WIDTH_MM: f64 = 136.0;
const NOMINAL_LUNG_HEIGHT_MM: f64 = 250.0;
/// Largest share of the lung's air a finding may replace along the beam.
const MAX_OCCUPANCY: f64 = 0.92;
/// Consolidation extent is measured where the blob sum reaches this fraction of its peak weight.
const CONSOLIDATION_LEVEL: f64 = 0.3;
/// Random placements tried before a finding is declared not to fit.
const PLACEMENT_ATTEMPTS: usize = 600;

/// What to render.
#[derive(Debug, Clone, PartialEq)]
pub struct RadiographSpec {
    pub rows: u32,
    pub columns: u32,
    /// ImagerPixelSpacing (mm), square pixels.
    pub pixel_spacing_mm: f64,
    /// Store values inverted (high attenuation → low value), as MONOCHROME1.
    pub monochrome1: bool,
    /// Findings to draw, each at most once; empty for a normal study.
    pub findings: Vec<XrayLabel>,
}

/// A rendered radiograph and its ground truth.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedRadiograph {
    /// Row-major stored values, 0..=[`MAX_STORED_VALUE`], already inverted for MONOCHROME1.
    pub pixels: Vec<u16>,
    /// One per requested label, in the order requested.
    pub findings: Vec<XrayFinding>,
    /// VOI window for display, in stored-value units.
    pub window_center: f64,
    pub window_width: f64,
    /// Cardiothoracic ratio of the heart drawn, measured in the patient's frame.
    pub cardiothoracic_ratio: f64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RadiographError {
    #[error("a radiograph needs at least {MIN_EDGE_PX}×{MIN_EDGE_PX} pixels, got {rows}×{columns}")]
    ImageTooSmall { rows: u32, columns: u32 },
    #[error("a radiograph has at most {MAX_EDGE_PX} pixels per edge, got {rows}×{columns}")]
    ImageTooLarge { rows: u32, columns: u32 },
    #[error("pixel spacing must be a positive, finite number of millimetres, got {0}")]
    InvalidPixelSpacing(f64),
    #[error(
        "a {width_mm:.0}×{height_mm:.0} mm field of view cannot hold a chest: it needs at least {MIN_FIELD_MM} mm each way"
    )]
    FieldOfViewTooSmall { width_mm: f64, height_mm: f64 },
    #[error("finding {0:?} is requested more than once")]
    DuplicateFinding(XrayLabel),
    #[error("found no room for a {0:?} finding in this chest")]
    NoRoomForFinding(XrayLabel),
}

/// Renders one chest radiograph with the findings `spec` asks for.
pub fn render_radiograph(
    spec: &RadiographSpec,
    rng: &mut impl Rng,
) -> Result<RenderedRadiograph, RadiographError> {
    let (scene, findings) = Scene::build(spec, rng)?;
    let mut pixels = scene.render();
    let (mut window_center, window_width) = display_window(&pixels);
    if spec.monochrome1 {
        // Inverting the rounded values keeps MONOCHROME1 exactly the complement of MONOCHROME2.
        for value in &mut pixels {
            *value = MAX_STORED_VALUE - *value;
        }
        window_center = f64::from(MAX_STORED_VALUE) - window_center;
    }
    Ok(RenderedRadiograph {
        pixels,
        findings,
        window_center,
        window_width,
        cardiothoracic_ratio: scene.cardiothoracic_ratio,
    })
}

fn validate(spec: &RadiographSpec) -> Result<(), RadiographError> {
    let (rows, columns) = (spec.rows, spec.columns);
    if rows < MIN_EDGE_PX || columns < MIN_EDGE_PX {
        return Err(RadiographError::ImageTooSmall { rows, columns });
    }
    if rows > MAX_EDGE_PX || columns > MAX_EDGE_PX {
        return Err(RadiographError::ImageTooLarge { rows, columns });
    }
    let spacing = spec.pixel_spacing_mm;
    let width_mm = f64::from(columns) * spacing;
    let height_mm = f64::from(rows) * spacing;
    if !(spacing.is_finite() && spacing > 0.0 && width_mm.is_finite() && height_mm.is_finite()) {
        return Err(RadiographError::InvalidPixelSpacing(spacing));
    }
    if width_mm < MIN_FIELD_MM || height_mm < MIN_FIELD_MM {
        return Err(RadiographError::FieldOfViewTooSmall {
            width_mm,
            height_mm,
        });
    }
    for (i, label) in spec.findings.iter().enumerate() {
        if spec.findings[..i].contains(label) {
            return Err(RadiographError::DuplicateFinding(*label));
        }
    }
    Ok(())
}

/// One uniform draw in `lo..hi`; always consumes one number and never panics on an empty range.
fn uniform(rng: &mut impl Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

fn smoothstep(x: f64) -> f64 {
    let t = x.clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

fn side_of(sign: f64) -> Side {
    if sign < 0.0 { Side::Right } else { Side::Left }
}

/// Axis-aligned box in the patient frame (mm), for cheap rejection.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    u_min: f64,
    u_max: f64,
    v_min: f64,
    v_max: f64,
}

impl Bounds {
    fn around(center: [f64; 2], half_u: f64, half_v: f64) -> Self {
        Bounds {
            u_min: center[0] - half_u,
            u_max: center[0] + half_u,
            v_min: center[1] - half_v,
            v_max: center[1] + half_v,
        }
    }
    fn contains(&self, u: f64, v: f64) -> bool {
        u >= self.u_min && u <= self.u_max && v >= self.v_min && v <= self.v_max
    }
    /// The same box for the mirror-image side: `sign` −1 flips u.
    fn lateral(sign: f64, lateral_min: f64, lateral_max: f64, v_min: f64, v_max: f64) -> Self {
        let (u_min, u_max) = if sign < 0.0 {
            (-lateral_max, -lateral_min)
        } else {
            (lateral_min, lateral_max)
        };
        Bounds {
            u_min,
            u_max,
            v_min,
            v_max,
        }
    }
}

/// Where the patient lies on the detector: pixel size, image size, and the shift and
/// rotation between the detector (x, y) and the patient frame (u, v).
#[derive(Debug, Clone)]
struct Frame {
    spacing: f64,
    rows: usize,
    columns: usize,
    /// Detector position (mm) of the patient frame's origin (midline at the apices).
    origin: [f64; 2],
    cos: f64,
    sin: f64,
}

impl Frame {
    fn to_patient(&self, x: f64, y: f64) -> [f64; 2] {
        let dx = x - self.origin[0];
        let dy = y - self.origin[1];
        [
            self.cos * dx + self.sin * dy,
            -self.sin * dx + self.cos * dy,
        ]
    }
    fn to_detector(&self, u: f64, v: f64) -> [f64; 2] {
        [
            self.origin[0] + self.cos * u - self.sin * v,
            self.origin[1] + self.sin * u + self.cos * v,
        ]
    }
    /// Image position (column, row; fractional pixels) of the patient point (u, v).
    fn to_pixel(&self, u: f64, v: f64) -> [f64; 2] {
        let [x, y] = self.to_detector(u, v);
        [x / self.spacing, y / self.spacing]
    }
    fn inside_image(&self, u: f64, v: f64, margin_px: f64) -> bool {
        let [column, row] = self.to_pixel(u, v);
        column >= margin_px
            && row >= margin_px
            && column <= self.columns as f64 - 1.0 - margin_px
            && row <= self.rows as f64 - 1.0 - margin_px
    }
    fn row_line(&self, row: usize) -> RowLine {
        let [u0, v0] = self.to_patient(0.0, row as f64 * self.spacing);
        let dv = -self.sin * self.spacing;
        let v_end = v0 + dv * (self.columns - 1) as f64;
        RowLine {
            u0,
            v0,
            du: self.cos * self.spacing,
            dv,
            last_column: self.columns - 1,
            v_min: v0.min(v_end),
            v_max: v0.max(v_end),
        }
    }
}

/// One image row as a line in the patient frame.
struct RowLine {
    u0: f64,
    v0: f64,
    du: f64,
    dv: f64,
    last_column: usize,
    /// Range of v the row covers, to drop most structures with two comparisons.
    v_min: f64,
    v_max: f64,
}

impl RowLine {
    fn at(&self, column: usize) -> (f64, f64) {
        let c = column as f64;
        (self.u0 + c * self.du, self.v0 + c * self.dv)
    }

    /// Columns of this row whose pixels fall inside `bounds`, if any.
    fn span(&self, bounds: &Bounds) -> Option<(usize, usize)> {
        if bounds.v_max < self.v_min || bounds.v_min > self.v_max {
            return None;
        }
        let mut lo = 0.0f64;
        let mut hi = self.last_column as f64;
        clip_interval(
            &mut lo,
            &mut hi,
            self.u0,
            self.du,
            bounds.u_min,
            bounds.u_max,
        );
        clip_interval(
            &mut lo,
            &mut hi,
            self.v0,
            self.dv,
            bounds.v_min,
            bounds.v_max,
        );
        if lo.is_nan() || hi.is_nan() || lo > hi {
            return None;
        }
        // Both ends are within 0..=last_column here, so casts truncate like floor; this
        // runs for every structure on every row, where libm's ceil and floor would show.
        let mut first = lo as usize;
        if (first as f64) < lo {
            first += 1;
        }
        let last = hi as usize;
        (first <= last).then_some((first, last))
    }

    /// Calls `visit(u, v, cell)` for the cells of `cells` (one per column) inside `bounds`.
    fn for_each_in(
        &self,
        bounds: &Bounds,
        cells: &mut [f64],
        mut visit: impl FnMut(f64, f64, &mut f64),
    ) {
        if let Some((first, last)) = self.span(bounds) {
            for (offset, cell) in cells[first..=last].iter_mut().enumerate() {
                let (u, v) = self.at(first + offset);
                visit(u, v, cell);
            }
        }
    }
}

/// Narrows `[lo, hi]` (in steps) to where `start + t·step` lies within `[min, max]`.
fn clip_interval(lo: &mut f64, hi: &mut f64, start: f64, step: f64, min: f64, max: f64) {
    if step.abs() < 1e-12 {
        if start < min || start > max {
            *lo = f64::INFINITY;
        }
        return;
    }
    let a = (min - start) / step;
    let b = (max - start) / step;
    *lo = lo.max(a.min(b));
    *hi = hi.min(a.max(b));
}

/// `N` functions of v tabulated together every [`PROFILE_STEP_MM`]: outlines are read per
/// pixel, and one lookup is cheaper than their square roots and blends.
#[derive(Debug, Clone)]
struct Profile<const N: usize> {
    values: Vec<[f64; N]>,
}

impl<const N: usize> Profile<N> {
    fn tabulate(f: impl Fn(f64) -> [f64; N]) -> Self {
        let (start, end) = PROFILE_V_RANGE;
        let count = ((end - start) / PROFILE_STEP_MM) as usize + 1;
        Profile {
            values: (0..count)
                .map(|i| f(start + i as f64 * PROFILE_STEP_MM))
                .collect(),
        }
    }

    fn at(&self, v: f64) -> [f64; N] {
        let x = (v - PROFILE_V_RANGE.0) / PROFILE_STEP_MM;
        let last = self.values.len() - 1;
        if x.is_nan() || x <= 0.0 {
            return self.values[0];
        }
        if x >= last as f64 {
            return self.values[last];
        }
        let i = x as usize;
        let f = x - i as f64;
        let (a, b) = (self.values[i], self.values[i + 1]);
        std::array::from_fn(|n| a[n] + (b[n] - a[n]) * f)
    }
}

/// Torso, neck, shoulders and upper arms: a rounded-box cross-section whose half-width and
/// half-depth change with v.
#[derive(Debug, Clone)]
struct Body {
    /// Reciprocal of the half-width, and the half-depth (mm).
    outline: Profile<2>,
    /// Thickness across the body, as a share of the full depth, per 1/CROSS_SECTION_STEPS
    /// of the half-width (tabulated: the body is evaluated at every pixel).
    cross_section: Vec<f64>,
}

const CROSS_SECTION_STEPS: usize = 1024;

impl Body {
    fn new(outline: Profile<2>) -> Self {
        // Between an ellipse and a superellipse of power 4: flatter sides than an ellipse.
        let cross_section = (0..=CROSS_SECTION_STEPS + 1)
            .map(|i| {
                let x2 = (i as f64 / CROSS_SECTION_STEPS as f64).min(1.0).powi(2);
                0.5 * ((1.0 - x2).sqrt() + (1.0 - x2 * x2).sqrt().sqrt())
            })
            .collect();
        Body {
            outline,
            cross_section,
        }
    }

    fn thickness(&self, u: f64, v: f64) -> f64 {
        let [inverse_half_width, half_depth] = self.outline.at(v);
        let x = u.abs() * inverse_half_width * CROSS_SECTION_STEPS as f64;
        if x.is_nan() || x >= CROSS_SECTION_STEPS as f64 {
            return 0.0;
        }
        let i = x as usize;
        let across = self.cross_section[i]
            + (self.cross_section[i + 1] - self.cross_section[i]) * (x - i as f64);
        2.0 * half_depth * across
    }
}

/// One lung's outline on the detector and its extent along the beam.
#[derive(Debug, Clone)]
struct Lung {
    /// −1 for the patient's right lung (image left), +1 for the left.
    sign: f64,
    /// Lateral distance (mm) of the medial and lateral borders from the midline, the
    /// extent of the lung along the beam in its middle (mm), and 1 / (lateral − medial).
    outline: Profile<4>,
    /// Costophrenic angle: lateral distance and v.
    costophrenic: [f64; 2],
    dome_peak_u: f64,
    dome_top_v: f64,
    medial_floor_u: f64,
    cardiophrenic_drop: f64,
    /// How far below the dome line the posterior recess still holds some lung (mm).
    recess_mm: f64,
    /// Hilum: lateral distance and v.
    hilum: [f64; 2],
    bounds: Bounds,
}

impl Lung {
    /// Lateral distance of the medial and lateral borders at `v`.
    fn borders(&self, v: f64) -> [f64; 2] {
        let [medial, lateral, _, _] = self.outline.at(v);
        [medial, lateral]
    }

    /// v of the diaphragm's upper border at lateral distance `lateral_u` (domed, lowest at
    /// the costophrenic angle).
    fn dome_v(&self, lateral_u: f64) -> f64 {
        if lateral_u >= self.dome_peak_u {
            let x = (lateral_u - self.dome_peak_u) / (self.costophrenic[0] - self.dome_peak_u);
            self.dome_top_v + (self.costophrenic[1] - self.dome_top_v) * x * x * (0.4 + 0.6 * x)
        } else {
            let x = (self.dome_peak_u - lateral_u) / (self.dome_peak_u - self.medial_floor_u);
            self.dome_top_v + self.cardiophrenic_drop * x * x
        }
    }

    /// How far (mm) the point lies below the dome line (negative above it).
    fn below_dome(&self, u: f64, v: f64) -> f64 {
        v - self.dome_v(self.sign * u)
    }

    /// Aerated thickness along the beam (mm) at (u, v), before the heart and findings.
    fn thickness(&self, u: f64, v: f64) -> f64 {
        if v <= 0.0 || !self.bounds.contains(u, v) {
            return 0.0;
        }
        let lateral_u = self.sign * u;
        let [medial, lateral, depth, inverse_width] = self.outline.at(v);
        if lateral_u <= medial || lateral_u >= lateral {
            return 0.0;
        }
        let s = (lateral_u - medial) * inverse_width;
        // Interpolating the reciprocal leaves s a hair outside 0..1 at the very borders.
        let q = (4.0 * s * (1.0 - s)).max(0.0);
        // Elliptic cross-section, flattened a little: lungs are kidney-shaped in axial cuts.
        let mut t = depth * q.sqrt() * (1.2 - 0.2 * q);
        let below = v - self.dome_v(lateral_u);
        if below > 0.0 {
            if below >= self.recess_mm {
                return 0.0;
            }
            // Posterior recess behind the dome, thinning downwards and absent laterally so
            // that the costophrenic angle stays sharp.
            t *= 0.45 * (1.0 - (below / self.recess_mm).sqrt()) * (1.0 - s * s);
        }
        t
    }
}

/// An ellipsoid seen along one of its axes: an ellipse in the image, rotated by an angle,
/// 2 × `half_depth` thick at its centre.
#[derive(Debug, Clone)]
struct Ellipsoid {
    center: [f64; 2],
    cos: f64,
    sin: f64,
    inv_semi: [f64; 2],
    half_depth: f64,
    /// Half of the horizontal extent (mm).
    half_width: f64,
    bounds: Bounds,
}

impl Ellipsoid {
    fn new(center: [f64; 2], semi: [f64; 2], angle: f64, half_depth: f64) -> Self {
        let (sin, cos) = angle.sin_cos();
        let half_width = ((semi[0] * cos).powi(2) + (semi[1] * sin).powi(2)).sqrt();
        let half_height = ((semi[0] * sin).powi(2) + (semi[1] * cos).powi(2)).sqrt();
        Ellipsoid {
            center,
            cos,
            sin,
            inv_semi: [1.0 / semi[0], 1.0 / semi[1]],
            half_depth,
            half_width,
            bounds: Bounds::around(center, half_width, half_height),
        }
    }

    /// Squared normalised radius of (u, v): below 1 inside the outline.
    fn radius2(&self, u: f64, v: f64) -> f64 {
        let du = u - self.center[0];
        let dv = v - self.center[1];
        let p = (du * self.cos + dv * self.sin) * self.inv_semi[0];
        let q = (-du * self.sin + dv * self.cos) * self.inv_semi[1];
        p * p + q * q
    }

    fn thickness(&self, u: f64, v: f64) -> f64 {
        if !self.bounds.contains(u, v) {
            return 0.0;
        }
        let r2 = self.radius2(u, v);
        if r2 >= 1.0 {
            0.0
        } else {
            2.0 * self.half_depth * (1.0 - r2).sqrt()
        }
    }
}

/// A cylinder of `radius` around the segment a–b, lying in the detector plane (vessels,
/// airways; a sphere when a = b).
#[derive(Debug, Clone)]
struct Capsule {
    a: [f64; 2],
    ab: [f64; 2],
    inv_length2: f64,
    /// Radius at a, and its change towards b (vessels taper).
    radius: f64,
    taper: f64,
    bounds: Bounds,
}

impl Capsule {
    fn new(a: [f64; 2], b: [f64; 2], radius: f64) -> Self {
        Capsule::tapered(a, b, radius, radius)
    }

    fn tapered(a: [f64; 2], b: [f64; 2], radius_a: f64, radius_b: f64) -> Self {
        let ab = [b[0] - a[0], b[1] - a[1]];
        let length2 = ab[0] * ab[0] + ab[1] * ab[1];
        let reach = radius_a.max(radius_b);
        Capsule {
            a,
            ab,
            inv_length2: if length2 > 1e-12 { 1.0 / length2 } else { 0.0 },
            radius: radius_a,
            taper: radius_b - radius_a,
            bounds: Bounds {
                u_min: a[0].min(b[0]) - reach,
                u_max: a[0].max(b[0]) + reach,
                v_min: a[1].min(b[1]) - reach,
                v_max: a[1].max(b[1]) + reach,
            },
        }
    }

    /// Path length (mm) of the beam through the cylinder at (u, v).
    fn chord(&self, u: f64, v: f64) -> f64 {
        if !self.bounds.contains(u, v) {
            return 0.0;
        }
        let ap = [u - self.a[0], v - self.a[1]];
        let t = ((ap[0] * self.ab[0] + ap[1] * self.ab[1]) * self.inv_length2).clamp(0.0, 1.0);
        let d = [ap[0] - self.ab[0] * t, ap[1] - self.ab[1] * t];
        let d2 = d[0] * d[0] + d[1] * d[1];
        let radius = self.radius + self.taper * t;
        let r2 = radius * radius;
        if d2 >= r2 {
            0.0
        } else {
            2.0 * (r2 - d2).sqrt()
        }
    }
}

/// Extra attenuation through a bone of elliptic cross-section (half-height across the beam,
/// half-depth along it): a cortical shell around a trabecular core, so bones show the
/// bright margins they have on real films. `offset` is the distance from the bone's axis.
fn bone_excess(offset: f64, half_height: f64, half_depth: f64, cortex: f64) -> f64 {
    let n = offset / half_height;
    if n.abs() >= 1.0 {
        return 0.0;
    }
    let outer = 2.0 * half_depth * (1.0 - n * n).sqrt();
    let inner_height = half_height - cortex;
    let inner_depth = half_depth - cortex;
    let inner = if inner_height > 0.0 && inner_depth > 0.0 && offset.abs() < inner_height {
        let m = offset / inner_height;
        2.0 * inner_depth * (1.0 - m * m).sqrt()
    } else {
        0.0
    };
    CORTICAL_EXCESS * (outer - inner) + TRABECULAR_EXCESS * inner
}

/// A long bone seen from the front (rib arc, clavicle): its axis is the cubic
/// `v = c0 + c1·t + c2·t² + c3·t³` with `t = (lateral_u − u_start) / length` in 0..1.
#[derive(Debug, Clone)]
struct BoneBand {
    sign: f64,
    u_start: f64,
    length: f64,
    coeffs: [f64; 4],
    half_height: f64,
    half_depth: f64,
    cortex: f64,
    /// Length over which the ends fade (mm): cartilage and joints take over there.
    taper: f64,
    /// The band cut along its length into pieces with tight bounds: (first t, last t, bounds).
    pieces: Vec<(f64, f64, Bounds)>,
}

impl BoneBand {
    fn axis(&self, t: f64) -> (f64, f64) {
        let c = self.coeffs;
        let v = c[0] + t * (c[1] + t * (c[2] + t * c[3]));
        let slope = (c[1] + t * (2.0 * c[2] + 3.0 * t * c[3])) / self.length;
        (v, slope)
    }

    /// Cuts the band into pieces with tight bounds; call once after building. A row then
    /// visits only the few pixels near the band instead of its whole bounding box.
    fn with_pieces(mut self) -> Self {
        const PIECES: u32 = 12;
        const SAMPLES: u32 = 4;
        self.pieces = (0..PIECES)
            .map(|piece| {
                let (t0, t1) = (
                    f64::from(piece) / f64::from(PIECES),
                    f64::from(piece + 1) / f64::from(PIECES),
                );
                let (mut v_min, mut v_max) = (f64::INFINITY, f64::NEG_INFINITY);
                for i in 0..=SAMPLES {
                    let (v, slope) = self.axis(t0 + (t1 - t0) * f64::from(i) / f64::from(SAMPLES));
                    let reach = self.half_height * (1.0 + slope * slope).sqrt() + 1.0;
                    v_min = v_min.min(v - reach);
                    v_max = v_max.max(v + reach);
                }
                let lateral = |t: f64| self.u_start + t * self.length;
                (
                    t0,
                    t1,
                    Bounds::lateral(
                        self.sign,
                        lateral(t0) - 0.5,
                        lateral(t1) + 0.5,
                        v_min,
                        v_max,
                    ),
                )
            })
            .collect();
        self
    }

    /// Extra attenuation at (u, v) from the part of the band with `t` in `[t0, t1)`, so that
    /// pieces sharing an edge never count a pixel twice.
    fn excess(&self, u: f64, v: f64, t0: f64, t1: f64) -> f64 {
        let along = self.sign * u - self.u_start;
        let t = along / self.length;
        if t < t0 || t >= t1 {
            return 0.0;
        }
        let (axis_v, slope) = self.axis(t);
        let offset2 = (v - axis_v).powi(2) / (1.0 + slope * slope);
        if offset2 >= self.half_height * self.half_height {
            return 0.0;
        }
        let offset = offset2.sqrt();
        let end_fade = smoothstep(along.min(self.length - along) / self.taper);
        bone_excess(offset, self.half_height, self.half_depth, self.cortex) * end_fade
    }
}

/// A roughly spherical bone end (humeral head).
#[derive(Debug, Clone)]
struct BoneBall {
    center: [f64; 2],
    radius: f64,
    cortex: f64,
    bounds: Bounds,
}

impl BoneBall {
    fn excess(&self, u: f64, v: f64) -> f64 {
        if !self.bounds.contains(u, v) {
            return 0.0;
        }
        let d = ((u - self.center[0]).powi(2) + (v - self.center[1]).powi(2)).sqrt();
        bone_excess(d, self.radius, self.radius, self.cortex)
    }
}

/// The vertebral column: bodies separated by discs, with endplates, pedicles and spinous
/// processes.
#[derive(Debug, Clone)]
struct Spine {
    half_width: Profile<1>,
    /// (top, bottom) v of every vertebral body, top to bottom.
    vertebrae: Vec<(f64, f64)>,
    scale: f64,
    bounds: Bounds,
}

impl Spine {
    fn excess(&self, u: f64, v: f64) -> f64 {
        let [half_width] = self.half_width.at(v);
        if u.abs() >= half_width {
            return 0.0;
        }
        let next = self.vertebrae.partition_point(|&(top, _)| top <= v);
        let Some(&(top, bottom)) = next.checked_sub(1).and_then(|i| self.vertebrae.get(i)) else {
            return 0.0;
        };
        if v >= bottom {
            return 0.0; // intervertebral disc: soft tissue
        }
        let k = self.scale;
        // Cancellous vertebral bodies behind a dense mediastinum: the spine is faint on a
        // well-exposed chest film. Endplates are concave, so the body fades in over a
        // couple of millimetres rather than starting at a hard line.
        let to_plate = (v - top).min(bottom - v);
        let half_depth = 0.35 * half_width;
        let mut excess =
            bone_excess(u, half_width, half_depth, 1.0 * k) * smoothstep(to_plate / (2.0 * k));
        let height = bottom - top;
        // Pedicles: oval cortical rings at the body's upper lateral corners.
        let pedicle_v = top + 0.35 * height;
        for side in [-1.0, 1.0] {
            let pedicle_u = side * (half_width - 5.0 * k);
            let r2 =
                ((u - pedicle_u) / (4.0 * k)).powi(2) + ((v - pedicle_v) / (0.3 * height)).powi(2);
            if r2 < 1.0 {
                excess += 1.0 * k * (TRABECULAR_EXCESS + CORTICAL_EXCESS * ring(r2.sqrt()));
            }
        }
        // Spinous process: a teardrop in the midline over the lower half of the body.
        let r2 =
            (u / (3.2 * k)).powi(2) + ((v - (bottom - 0.3 * height)) / (0.28 * height)).powi(2);
        if r2 < 1.0 {
            excess += 1.5 * k * (TRABECULAR_EXCESS + CORTICAL_EXCESS * ring(r2.sqrt()));
        }
        excess
    }
}

/// A soft ring profile peaking near the rim of a normalised radius.
fn ring(radius: f64) -> f64 {
    (1.0 - ((radius - 0.8) / 0.2).powi(2)).max(0.0)
}

/// Smooth random texture on a square grid, read with bilinear interpolation: the mottle of
/// small vessels and overlapping lobules in the lung fields.
#[derive(Debug, Clone)]
struct Texture {
    origin: [f64; 2],
    inverse_cell: f64,
    columns: usize,
    rows: usize,
    values: Vec<f64>,
}

impl Texture {
    /// Mottle of relative amplitude about ±`amplitudes[0]` at `cells[0]` mm plus
    /// ±`amplitudes[1]` at `cells[1]` mm, pre-summed on the finer grid so that reading it
    /// costs one lookup.
    fn mottle(rng: &mut impl Rng, bounds: Bounds, cells: [f64; 2], amplitudes: [f64; 2]) -> Self {
        let coarse = Texture::draw(rng, bounds, cells[0]);
        let mut fine = Texture::draw(rng, bounds, cells[1]);
        for j in 0..fine.rows {
            for i in 0..fine.columns {
                let u = bounds.u_min + i as f64 * cells[1];
                let v = bounds.v_min + j as f64 * cells[1];
                let value = &mut fine.values[j * fine.columns + i];
                *value = amplitudes[0] * coarse.at(u, v) + amplitudes[1] * *value;
            }
        }
        fine
    }

    fn draw(rng: &mut impl Rng, bounds: Bounds, cell: f64) -> Self {
        let columns = ((bounds.u_max - bounds.u_min) / cell).ceil() as usize + 2;
        let rows = ((bounds.v_max - bounds.v_min) / cell).ceil() as usize + 2;
        Texture {
            origin: [bounds.u_min, bounds.v_min],
            inverse_cell: 1.0 / cell,
            columns,
            rows,
            values: (0..columns * rows)
                .map(|_| uniform(rng, -1.0, 1.0))
                .collect(),
        }
    }

    fn at(&self, u: f64, v: f64) -> f64 {
        let x = ((u - self.origin[0]) * self.inverse_cell).clamp(0.0, (self.columns - 2) as f64);
        let y = ((v - self.origin[1]) * self.inverse_cell).clamp(0.0, (self.rows - 2) as f64);
        let (i, j) = (x as usize, y as usize);
        let (fx, fy) = (x - i as f64, y - j as f64);
        let at = |i: usize, j: usize| self.values[j * self.columns + i];
        let top = at(i, j) + (at(i + 1, j) - at(i, j)) * fx;
        let bottom = at(i, j + 1) + (at(i + 1, j + 1) - at(i, j + 1)) * fx;
        top + (bottom - top) * fy
    }
}

/// A smooth blob of consolidation.
#[derive(Debug, Clone)]
struct Blob {
    center: [f64; 2],
    sigma: f64,
    weight: f64,
}

/// Air-space opacity: alveoli filled with fluid over a hazy region, as a sum of blobs.
#[derive(Debug, Clone)]
struct Consolidation {
    lung: usize,
    blobs: Vec<Blob>,
    /// Share of the lung's air replaced where the blob sum is 1.
    amplitude: f64,
    bounds: Bounds,
}

/// Weighted sum of Gaussian blobs at (u, v), each cut off at 3σ.
fn blob_sum(blobs: &[Blob], u: f64, v: f64) -> f64 {
    blobs
        .iter()
        .map(|b| {
            let d2 = (u - b.center[0]).powi(2) + (v - b.center[1]).powi(2);
            let s2 = b.sigma * b.sigma;
            if d2 > 9.0 * s2 {
                0.0
            } else {
                b.weight * (-0.5 * d2 / s2).exp()
            }
        })
        .sum()
}

impl Consolidation {
    fn level(&self, u: f64, v: f64) -> f64 {
        blob_sum(&self.blobs, u, v)
    }

    fn occupancy(&self, u: f64, v: f64) -> f64 {
        if !self.bounds.contains(u, v) {
            return 0.0;
        }
        // Saturates smoothly: a hard cap would draw a plateau with a rim.
        MAX_OCCUPANCY * (1.0 - (-self.amplitude * self.level(u, v) / MAX_OCCUPANCY).exp())
    }
}

/// Pleural fluid in the lateral-basal corner of one hemithorax, under a concave-up meniscus.
#[derive(Debug, Clone)]
struct Effusion {
    lung: usize,
    sign: f64,
    /// Height of the meniscus at the lateral wall above the costophrenic angle (mm).
    height: f64,
    /// Lateral distance where the meniscus starts (the dome's peak) and reaches full height.
    start_u: f64,
    wall_u: f64,
    base_v: f64,
    /// Thickness of the hazy upper edge (mm).
    ramp: f64,
    bounds: Bounds,
}

impl Effusion {
    fn occupancy(&self, u: f64, v: f64) -> f64 {
        if !self.bounds.contains(u, v) {
            return 0.0;
        }
        let x = ((self.sign * u - self.start_u) / (self.wall_u - self.start_u)).max(0.0);
        let meniscus_v = self.base_v - self.height * x * (0.25 + 0.75 * x);
        let depth = ((v - meniscus_v) / self.ramp).clamp(0.0, 1.0);
        MAX_OCCUPANCY * depth * (2.0 - depth)
    }
}

/// Line integrals covered by the exposure tables; larger ones saturate.
const TABLE_MAX_LINE_INTEGRAL: f64 = 12.0;
/// Table entries per unit of line integral.
const TABLE_RESOLUTION: f64 = 256.0;

/// The detector and its "for presentation" processing, as on a DR system: quantum noise,
/// then the large-scale brightness (a blurred copy of the image) compressed above the lung
/// range while finer detail is amplified, then a log-compression curve. The curves are
/// tabulated: exponentials per pixel would cost more than the anatomy.
#[derive(Debug, Clone)]
struct Exposure {
    /// Stored value (before rounding) per processed line integral: through black for no
    /// attenuation, mid-grey at the curve's level.
    stored_table: Vec<f64>,
    /// Noise σ of the line integral per line integral: σ = 1/√N with N = N₀·e^(−L).
    sigma_table: Vec<f64>,
    /// Processed value minus the amplified detail, per large-scale line integral:
    /// `knee(base) − (1 + gain)·base`, so that processing is one lookup and one multiply-add.
    base_table: Vec<f64>,
    detail_gain: f64,
    /// Side of the blocks averaged before smoothing (pixels), and the Gaussian's σ in blocks.
    smoothing_block: usize,
    smoothing_sigma: f64,
    noise_seed: u64,
}

/// What the detector and its processing are set to.
#[derive(Debug, Clone)]
struct ExposureSettings {
    /// Processed line integral shown mid-grey, and the spread of the curve around it.
    level: f64,
    width: f64,
    /// Detected quanta per mm² behind no attenuation.
    quanta_per_mm2: f64,
    /// Extra gain of detail finer than the smoothing (0 = none).
    detail_gain: f64,
    /// Share of the large-scale range above the knee taken out (mediastinum, abdomen).
    compression: f64,
    knee: f64,
    smoothing_mm: f64,
}

impl Exposure {
    fn new(settings: &ExposureSettings, frame: &Frame, noise_seed: u64) -> Self {
        let spacing = frame.spacing;
        let s = settings;
        let curve = |l: f64| 1.0 / (1.0 + (-(l - s.level) / s.width).exp());
        let floor = curve(0.0);
        let entries = (TABLE_MAX_LINE_INTEGRAL * TABLE_RESOLUTION) as usize + 2;
        let at = |i: usize| i as f64 / TABLE_RESOLUTION;
        let quanta_per_pixel = s.quanta_per_mm2 * spacing * spacing;
        // Soft knee: unchanged below it, slope (1 − compression) well above it.
        let knee = |b: f64| {
            let over = b - s.knee;
            let soft = 0.5 * (over + (over * over + 0.25).sqrt());
            b - s.compression * soft
        };
        // Blocks of about 3 mm carry the large-scale brightness at a fraction of the cost;
        // larger ones on huge images, so that the block grid stays small.
        let largest_edge = frame.rows.max(frame.columns);
        let smoothing_block = ((3.0 / spacing).round() as usize)
            .max(largest_edge.div_ceil(512))
            .max(1);
        Exposure {
            stored_table: (0..entries)
                .map(|i| (curve(at(i)) - floor) / (1.0 - floor) * f64::from(MAX_STORED_VALUE))
                .collect(),
            sigma_table: (0..entries)
                .map(|i| (0.5 * at(i)).exp() / quanta_per_pixel.sqrt())
                .collect(),
            base_table: (0..entries)
                .map(|i| knee(at(i)) - (1.0 + s.detail_gain) * at(i))
                .collect(),
            detail_gain: s.detail_gain,
            smoothing_block,
            smoothing_sigma: s.smoothing_mm / (smoothing_block as f64 * spacing),
            noise_seed,
        }
    }

    /// How far (pixels) processing carries a change to one pixel: the smoothing radius,
    /// plus a block for the averaging and one for the interpolation.
    #[cfg(test)]
    fn reach_px(&self) -> usize {
        (gaussian_radius(self.smoothing_sigma) + 2) * self.smoothing_block
    }

    /// Processed line integral of a pixel whose large-scale surroundings integrate to `base`.
    fn process(&self, line_integral: f64, base: f64) -> f64 {
        Exposure::lookup(&self.base_table, base) + (1.0 + self.detail_gain) * line_integral
    }

    fn lookup(table: &[f64], line_integral: f64) -> f64 {
        let x = (line_integral * TABLE_RESOLUTION).clamp(0.0, (table.len() - 2) as f64);
        let i = x as usize;
        table[i] + (table[i + 1] - table[i]) * (x - i as f64)
    }

    fn sigma(&self, line_integral: f64) -> f64 {
        Exposure::lookup(&self.sigma_table, line_integral)
    }

    fn stored(&self, line_integral: f64) -> u16 {
        let value = Exposure::lookup(&self.stored_table, line_integral);
        // Non-negative and bounded by the table, so adding ½ and truncating rounds.
        (value + 0.5).min(f64::from(MAX_STORED_VALUE)) as u16
    }
}

/// Shape of the heart before it is sized to a cardiothoracic ratio.
#[derive(Debug, Clone)]
struct HeartShape {
    axis_ratio: f64,
    angle: f64,
    depth_ratio: f64,
    shift_u: f64,
    lift_v: f64,
}

/// Everything drawn for one radiograph.
#[derive(Debug, Clone)]
struct Scene {
    frame: Frame,
    scale: f64,
    body: Body,
    /// Patient's right lung (image left), then left.
    lungs: [Lung; 2],
    thoracic_width: f64,
    heart_shape: HeartShape,
    heart: Ellipsoid,
    cardiothoracic_ratio: f64,
    /// Coarse and fine mottle of the lung fields.
    lung_texture: Texture,
    /// Aortic knob and hila: soft tissue that pushes the lung aside.
    mediastinum: Vec<Ellipsoid>,
    gastric_bubble: Option<Ellipsoid>,
    airways: Vec<Capsule>,
    vessels: Vec<Capsule>,
    spine: Spine,
    bones: Vec<BoneBand>,
    humeral_heads: Vec<BoneBall>,
    exposure: Exposure,
    nodule: Option<Capsule>,
    consolidation: Option<Consolidation>,
    effusion: Option<Effusion>,
}

impl Scene {
    /// Draws the patient, the exposure, the noise seed and then the findings, in that order.
    fn build(
        spec: &RadiographSpec,
        rng: &mut impl Rng,
    ) -> Result<(Scene, Vec<XrayFinding>), RadiographError> {
        validate(spec)?;
        let mut scene = Scene::draw_normal(spec, rng);
        // Cardiomegaly first: the others avoid the heart it draws; the nodule comes last
        // so it can avoid every other opacity.
        let order = [
            XrayLabel::Cardiomegaly,
            XrayLabel::PleuralEffusion,
            XrayLabel::Consolidation,
            XrayLabel::Nodule,
        ];
        let mut truths: Vec<XrayFinding> = Vec::with_capacity(spec.findings.len());
        for label in order {
            if !spec.findings.contains(&label) {
                continue;
            }
            let truth = match label {
                XrayLabel::Cardiomegaly => scene.enlarge_heart(rng),
                XrayLabel::PleuralEffusion => scene.add_effusion(rng),
                XrayLabel::Consolidation => scene.add_consolidation(rng),
                XrayLabel::Nodule => scene.add_nodule(rng),
            };
            truths.push(truth.ok_or(RadiographError::NoRoomForFinding(label))?);
        }
        let findings = spec
            .findings
            .iter()
            .filter_map(|label| truths.iter().find(|t| t.label == *label).cloned())
            .collect();
        Ok((scene, findings))
    }

    fn draw_normal(spec: &RadiographSpec, rng: &mut impl Rng) -> Scene {
        let spacing = spec.pixel_spacing_mm;
        let field = [
            f64::from(spec.columns) * spacing,
            f64::from(spec.rows) * spacing,
        ];
        // An adult chest, shrunk when the field is too small to hold it with a margin.
        let fit = ((field[0] / 2.0 - 14.0) / (NOMINAL_LUNG_HALF_WIDTH_MM * 1.04))
            .min((field[1] - 45.0) / (NOMINAL_LUNG_HEIGHT_MM * 1.05));
        let scale = uniform(rng, 0.92, 1.08).min(fit);
        let k = scale;

        // Lungs.
        let lung_half_width = NOMINAL_LUNG_HALF_WIDTH_MM * k * uniform(rng, 0.96, 1.04);
        let left_height = NOMINAL_LUNG_HEIGHT_MM * k * uniform(rng, 0.95, 1.05);
        // The liver lifts the right hemidiaphragm.
        let right_height = left_height - uniform(rng, 12.0, 22.0) * k;
        let habitus = uniform(rng, 0.9, 1.15);
        let chest_half_depth = uniform(rng, 92.0, 106.0) * k * habitus.sqrt();
        let lung_depth = 2.0 * chest_half_depth - uniform(rng, 48.0, 58.0) * k;
        let right_half_width = lung_half_width * uniform(rng, 0.98, 1.02);
        let left_half_width = lung_half_width * uniform(rng, 0.98, 1.02);
        let right = Lung::draw(rng, -1.0, k, right_half_width, right_height, lung_depth);
        let left = Lung::draw(rng, 1.0, k, left_half_width, left_height, lung_depth);
        let lungs = [right, left];
        let thoracic_width = thoracic_width(&lungs);
        let widest_lung =
            lungs[0].borders(0.7 * right_height)[1].max(lungs[1].borders(0.7 * left_height)[1]);

        // Body outline.
        let body = draw_body(rng, k, widest_lung, chest_half_depth, habitus);

        // Placement on the detector.
        let room_v = field[1] - left_height;
        let apex_y = room_v * (0.40 + uniform(rng, -0.06, 0.06));
        let room_u = (field[0] / 2.0 - widest_lung - 10.0).max(0.0);
        let midline_x = field[0] / 2.0 + uniform(rng, -1.0, 1.0) * room_u.min(8.0) * 0.5;
        let rotation = uniform(rng, -3.0, 3.0).to_radians();
        let frame = Frame {
            spacing,
            rows: spec.rows as usize,
            columns: spec.columns as usize,
            origin: [midline_x, apex_y],
            cos: rotation.cos(),
            sin: rotation.sin(),
        };

        // Heart, aorta, stomach.
        let heart_shape = HeartShape {
            axis_ratio: uniform(rng, 0.68, 0.8),
            angle: uniform(rng, 28.0, 42.0).to_radians(),
            depth_ratio: uniform(rng, 0.95, 1.1),
            shift_u: uniform(rng, -4.0, 4.0) * k,
            lift_v: uniform(rng, 0.0, 6.0) * k,
        };
        let cardiothoracic_ratio = uniform(rng, NORMAL_CTR.0, NORMAL_CTR.1);
        let heart = heart_for(
            &heart_shape,
            cardiothoracic_ratio,
            thoracic_width,
            &lungs[1],
            k,
        );
        let knob_radius = uniform(rng, 14.0, 18.0) * k;
        let aortic_knob = Ellipsoid::new(
            [
                uniform(rng, 25.0, 31.0) * k,
                uniform(rng, 0.25, 0.31) * left_height,
            ],
            [knob_radius, knob_radius * 1.1],
            0.0,
            knob_radius,
        );
        let mut mediastinum = vec![aortic_knob];
        for lung in &lungs {
            // Pulmonary arteries, veins and bronchi crowd the hilum into an oval density.
            let semi = [uniform(rng, 11.0, 15.0) * k, uniform(rng, 20.0, 27.0) * k];
            let center = [
                lung.sign * (lung.hilum[0] - 4.0 * k),
                lung.hilum[1] - 4.0 * k,
            ];
            mediastinum.push(Ellipsoid::new(
                center,
                semi,
                lung.sign * uniform(rng, 0.1, 0.35),
                semi[0] * 1.2,
            ));
        }
        let chest = Bounds::around(
            [0.0, 0.5 * left_height],
            widest_lung + 10.0,
            0.5 * left_height + 60.0 * k,
        );
        let lung_texture = Texture::mottle(rng, chest, [9.0 * k, 3.5 * k], [0.035, 0.03]);
        let has_bubble = rng.random_bool(0.85);
        let bubble_semi = [uniform(rng, 20.0, 34.0) * k, uniform(rng, 11.0, 18.0) * k];
        let bubble_u = uniform(rng, 55.0, 80.0) * k;
        let bubble_v = lungs[1].dome_top_v + bubble_semi[1] + uniform(rng, 6.0, 14.0) * k;
        let gastric_bubble = has_bubble.then(|| {
            Ellipsoid::new(
                [bubble_u, bubble_v],
                bubble_semi,
                uniform(rng, -0.2, 0.2),
                bubble_semi[1] * 1.2,
            )
        });

        let airways = draw_airways(rng, k);
        let vessels = grow_vessels(rng, &lungs, k);
        let spine = draw_spine(rng, k);
        let mut bones = draw_ribs(rng, &lungs, k);
        bones.extend(draw_clavicles(rng, k));
        let humeral_heads = lungs
            .iter()
            .map(|lung| {
                let radius = uniform(rng, 21.0, 25.0) * k;
                let center = [
                    lung.sign * (lung_half_width + uniform(rng, 45.0, 55.0) * k),
                    uniform(rng, 2.0, 18.0) * k,
                ];
                BoneBall {
                    center,
                    radius,
                    cortex: 1.2 * k,
                    bounds: Bounds::around(center, radius, radius),
                }
            })
            .collect();

        let settings = ExposureSettings {
            level: uniform(rng, 2.2, 2.4),
            width: uniform(rng, 0.8, 0.9),
            quanta_per_mm2: uniform(rng, 3.0e5, 7.0e5),
            detail_gain: uniform(rng, 0.45, 0.7),
            compression: uniform(rng, 0.25, 0.4),
            knee: uniform(rng, 2.0, 2.4),
            smoothing_mm: uniform(rng, 20.0, 28.0),
        };
        let exposure = Exposure::new(&settings, &frame, rng.random());

        Scene {
            frame,
            scale,
            body,
            lungs,
            thoracic_width,
            heart_shape,
            heart,
            cardiothoracic_ratio,
            lung_texture,
            mediastinum,
            gastric_bubble,
            airways,
            vessels,
            spine,
            bones,
            humeral_heads,
            exposure,
            nodule: None,
            consolidation: None,
            effusion: None,
        }
    }

    /// Aerated thickness of lung `index` at (u, v) once the heart and aorta have taken
    /// their room, before any finding.
    fn base_air(&self, index: usize, u: f64, v: f64) -> f64 {
        let lung = &self.lungs[index];
        let t = lung.thickness(u, v);
        if t <= 0.0 {
            return 0.0;
        }
        // The heart rests on the diaphragm: below the dome line it takes no lung.
        let heart = if lung.below_dome(u, v) < 0.0 {
            HEART_DISPLACEMENT * self.heart.thickness(u, v)
        } else {
            0.0
        };
        let mediastinum: f64 = self.mediastinum.iter().map(|e| e.thickness(u, v)).sum();
        (t - heart - mediastinum).max(0.0)
    }

    /// Aerated thickness with texture, effusion and consolidation in place.
    fn air(&self, index: usize, u: f64, v: f64) -> f64 {
        let mut air = self.base_air(index, u, v);
        if air <= 0.0 {
            return 0.0;
        }
        air *= 1.0 + self.lung_texture.at(u, v);
        if let Some(effusion) = self.effusion.as_ref().filter(|e| e.lung == index) {
            air *= 1.0 - effusion.occupancy(u, v);
        }
        if let Some(consolidation) = self.consolidation.as_ref().filter(|c| c.lung == index) {
            air *= 1.0 - consolidation.occupancy(u, v);
        }
        air
    }

    /// MONOCHROME2 stored values: line integrals with noise, then the detector's
    /// "for presentation" processing and log-compression curve.
    fn render(&self) -> Vec<u16> {
        let columns = self.frame.columns;
        let mut integrals = vec![0.0f32; self.frame.rows * columns];
        integrals
            .par_chunks_mut(columns)
            .enumerate()
            .for_each(|(row, out)| self.line_integral_row(row, out));
        let base = SmoothField::new(
            &integrals,
            columns,
            self.exposure.smoothing_block,
            self.exposure.smoothing_sigma,
        );
        let mut pixels = vec![0u16; integrals.len()];
        pixels
            .par_chunks_mut(columns)
            .zip(integrals.par_chunks(columns))
            .enumerate()
            .for_each(|(row, (out, line))| {
                let base_row = base.row(row);
                for ((value, &integral), &base) in out.iter_mut().zip(line).zip(&base_row) {
                    let processed = self.exposure.process(f64::from(integral), base);
                    *value = self.exposure.stored(processed);
                }
            });
        pixels
    }

    /// Line integrals of one row (noise included).
    fn line_integral_row(&self, row: usize, out: &mut [f32]) {
        let line = self.frame.row_line(row);
        let columns = out.len();
        let everywhere = Bounds {
            u_min: f64::NEG_INFINITY,
            u_max: f64::INFINITY,
            v_min: f64::NEG_INFINITY,
            v_max: f64::INFINITY,
        };
        // Line integral without the lungs' air, and the lungs' air thickness, per column.
        let mut attenuation = vec![0.0f64; columns];
        let mut air = vec![0.0f64; columns];
        // Vessel and airway chords combine by maximum, not sum: a branch's end cap overlaps
        // its children's, and summing would string beads along every tree.
        let mut blood = vec![0.0f64; columns];
        let mut airway_air = vec![0.0f64; columns];
        line.for_each_in(&everywhere, &mut attenuation, |u, v, a| {
            *a = MU_SOFT_TISSUE * self.body.thickness(u, v)
        });
        for (index, lung) in self.lungs.iter().enumerate() {
            line.for_each_in(&lung.bounds, &mut air, |u, v, a| {
                *a += self.air(index, u, v)
            });
        }
        // Vessels and the nodule are tissue standing in for air inside the lung.
        for vessel in &self.vessels {
            line.for_each_in(&vessel.bounds, &mut blood, |u, v, b| {
                *b = b.max(vessel.chord(u, v))
            });
        }
        for (a, b) in air.iter_mut().zip(&blood) {
            *a = (*a - VESSEL_OBLIQUITY * b).max(0.0);
        }
        if let Some(nodule) = &self.nodule {
            line.for_each_in(&nodule.bounds, &mut air, |u, v, a| {
                *a = (*a - nodule.chord(u, v)).max(0.0)
            });
        }
        for airway in &self.airways {
            line.for_each_in(&airway.bounds, &mut airway_air, |u, v, a| {
                *a = a.max(airway.chord(u, v))
            });
        }
        for (a, lumen) in attenuation.iter_mut().zip(&airway_air) {
            *a -= 0.9 * MU_SOFT_TISSUE * lumen;
        }
        if let Some(bubble) = &self.gastric_bubble {
            line.for_each_in(&bubble.bounds, &mut attenuation, |u, v, a| {
                *a -= MU_SOFT_TISSUE * bubble.thickness(u, v)
            });
        }
        line.for_each_in(&self.spine.bounds, &mut attenuation, |u, v, a| {
            *a += self.spine.excess(u, v)
        });
        for bone in &self.bones {
            for (t0, t1, bounds) in &bone.pieces {
                line.for_each_in(bounds, &mut attenuation, |u, v, a| {
                    *a += bone.excess(u, v, *t0, *t1)
                });
            }
        }
        for head in &self.humeral_heads {
            line.for_each_in(&head.bounds, &mut attenuation, |u, v, a| {
                *a += head.excess(u, v)
            });
        }

        // Quantum noise: fewer quanta get through where attenuation is high, so the
        // log signal is noisier there (σ = 1/√N with N = N₀·e^(−L)).
        let exposure = &self.exposure;
        let mut noise = ChaCha8Rng::seed_from_u64(exposure.noise_seed.wrapping_add(row as u64));
        for ((value, a), air) in out.iter_mut().zip(&attenuation).zip(&air) {
            let line_integral = (a - LUNG_AIR_DEFICIT * air).max(0.0);
            let n: f64 = StandardNormal.sample(&mut noise);
            *value = (line_integral + exposure.sigma(line_integral) * n) as f32;
        }
    }

    /// Bounding box (pixels, inclusive, clamped to the image) and centroid of the grid
    /// points of `search` (stepped by about half a pixel) where `inside` holds.
    fn region_truth(
        &self,
        search: Bounds,
        inside: impl Fn(f64, f64) -> bool,
    ) -> Option<([u32; 4], [f64; 2])> {
        let step = (0.7 * self.frame.spacing).clamp(0.25, 2.0);
        let (mut min, mut max) = ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]);
        let (mut sum, mut count) = ([0.0; 2], 0usize);
        let mut v = search.v_min;
        while v <= search.v_max {
            let mut u = search.u_min;
            while u <= search.u_max {
                if inside(u, v) && self.frame.inside_image(u, v, 0.0) {
                    let p = self.frame.to_pixel(u, v);
                    for axis in 0..2 {
                        min[axis] = min[axis].min(p[axis]);
                        max[axis] = max[axis].max(p[axis]);
                        sum[axis] += p[axis];
                    }
                    count += 1;
                }
                u += step;
            }
            v += step;
        }
        if count == 0 {
            return None;
        }
        let centroid = [sum[0] / count as f64, sum[1] / count as f64];
        Some((self.pixel_box(min, max), centroid))
    }

    /// Smallest inclusive pixel box holding every pixel centre within `radius` (pixels) of
    /// `center`, and the centre itself, in the image.
    fn tight_box(&self, center: [f64; 2], radius: f64) -> [u32; 4] {
        let last = [
            self.frame.columns as f64 - 1.0,
            self.frame.rows as f64 - 1.0,
        ];
        let low = |axis: usize| {
            let first = (center[axis] - radius).ceil().min(center[axis].floor());
            first.clamp(0.0, last[axis]) as u32
        };
        let high = |axis: usize| {
            let end = (center[axis] + radius).floor().max(center[axis].ceil());
            end.clamp(0.0, last[axis]) as u32
        };
        [low(0), low(1), high(0), high(1)]
    }

    /// Inclusive pixel box covering the continuous extent `min..max` (pixels), in the image.
    fn pixel_box(&self, min: [f64; 2], max: [f64; 2]) -> [u32; 4] {
        let last = [
            self.frame.columns as f64 - 1.0,
            self.frame.rows as f64 - 1.0,
        ];
        let low = |axis: usize| min[axis].floor().clamp(0.0, last[axis]) as u32;
        let high = |axis: usize| max[axis].ceil().clamp(0.0, last[axis]) as u32;
        [low(0), low(1), high(0), high(1)]
    }

    fn finding(
        &self,
        label: XrayLabel,
        side: Option<Side>,
        center_px: [f64; 2],
        size_mm: f64,
        bbox_px: [u32; 4],
    ) -> XrayFinding {
        // Keep the centre inside its box even when the box was clamped to the image.
        let center_px = [
            center_px[0].clamp(f64::from(bbox_px[0]), f64::from(bbox_px[2])),
            center_px[1].clamp(f64::from(bbox_px[1]), f64::from(bbox_px[3])),
        ];
        XrayFinding {
            label,
            side,
            center_px,
            center_mm: [
                center_px[0] * self.frame.spacing,
                center_px[1] * self.frame.spacing,
            ],
            size_mm,
            bbox_px,
            cardiothoracic_ratio: None,
        }
    }

    /// Cardiomegaly: the same heart, drawn to a cardiothoracic ratio of 0.55–0.65.
    fn enlarge_heart(&mut self, rng: &mut impl Rng) -> Option<XrayFinding> {
        let ratio = uniform(rng, CARDIOMEGALY_CTR.0, CARDIOMEGALY_CTR.1);
        self.heart = heart_for(
            &self.heart_shape,
            ratio,
            self.thoracic_width,
            &self.lungs[1],
            self.scale,
        );
        self.cardiothoracic_ratio = ratio;
        // The silhouette is the part of the heart above the diaphragm.
        let heart = &self.heart;
        let above_diaphragm = |u: f64, v: f64| {
            let lung = if u < 0.0 {
                &self.lungs[0]
            } else {
                &self.lungs[1]
            };
            heart.radius2(u, v) < 1.0 && lung.below_dome(u, v) <= 0.0
        };
        let (bbox, _) = self.region_truth(heart.bounds, above_diaphragm)?;
        let center = self.frame.to_pixel(heart.center[0], heart.center[1]);
        let mut truth = self.finding(
            XrayLabel::Cardiomegaly,
            None,
            center,
            2.0 * heart.half_width,
            bbox,
        );
        truth.cardiothoracic_ratio = Some(ratio);
        Some(truth)
    }

    /// Effusion: fluid in one costophrenic angle, 20–60 mm high at the lateral wall.
    fn add_effusion(&mut self, rng: &mut impl Rng) -> Option<XrayFinding> {
        let index = usize::from(rng.random_bool(0.5));
        let height = uniform(rng, EFFUSION_HEIGHT_MM.0, EFFUSION_HEIGHT_MM.1);
        let ramp = uniform(rng, 5.0, 10.0) * self.scale;
        let lung = &self.lungs[index];
        let [wall_u, base_v] = lung.costophrenic;
        let lateral_max = lung.sign
            * if lung.sign < 0.0 {
                lung.bounds.u_min
            } else {
                lung.bounds.u_max
            };
        let effusion = Effusion {
            lung: index,
            sign: lung.sign,
            height,
            start_u: lung.dome_peak_u,
            wall_u,
            base_v,
            ramp,
            bounds: Bounds::lateral(
                lung.sign,
                lung.dome_peak_u,
                lateral_max,
                base_v - 1.6 * height - ramp,
                base_v + lung.recess_mm,
            ),
        };
        // The visible fluid: where it replaces a noticeable amount of air.
        let visible = |u: f64, v: f64| {
            LUNG_AIR_DEFICIT * self.base_air(index, u, v) * effusion.occupancy(u, v) >= 0.06
        };
        let (bbox, centroid) = self.region_truth(effusion.bounds, visible)?;
        let truth = self.finding(
            XrayLabel::PleuralEffusion,
            Some(side_of(lung.sign)),
            centroid,
            height,
            bbox,
        );
        self.effusion = Some(effusion);
        Some(truth)
    }

    /// Consolidation: a hazy opacity of 30–80 mm in one zone of one lung.
    fn add_consolidation(&mut self, rng: &mut impl Rng) -> Option<XrayFinding> {
        let mut extent = uniform(rng, 34.0, 76.0);
        let amplitude = uniform(rng, 0.4, 0.6);
        let mut shape = consolidation_shape(rng, extent);
        let mut footprint = level_set_points(&shape, extent, 3.0);
        for attempt in 0..PLACEMENT_ATTEMPTS {
            if attempt > 0 && attempt % 150 == 0 && extent > 36.0 {
                // Crowded chest: try a smaller opacity of the same shape.
                let smaller = (extent * 0.85).max(CONSOLIDATION_EXTENT_MM.0 + 2.0);
                for blob in &mut shape {
                    blob.center = [
                        blob.center[0] * smaller / extent,
                        blob.center[1] * smaller / extent,
                    ];
                    blob.sigma *= smaller / extent;
                }
                extent = smaller;
                footprint = level_set_points(&shape, extent, 3.0);
            }
            let index = usize::from(rng.random_bool(0.5));
            let zone = rng.random_range(0..3usize);
            let lung = &self.lungs[index];
            let base_v = lung.costophrenic[1];
            let zone_v = match zone {
                0 => (0.14 * base_v, 0.38 * base_v),
                1 => (0.38 * base_v, 0.6 * base_v),
                _ => (0.6 * base_v, lung.dome_top_v - 0.3 * extent),
            };
            let v = uniform(rng, zone_v.0, zone_v.1);
            let [medial, lateral] = lung.borders(v);
            let lateral_u = uniform(rng, medial, lateral);
            let center = [lung.sign * lateral_u, v];
            // Every point of the opacity's core must lie in aerated lung, clear of the heart,
            // the diaphragm and an effusion, inside the image.
            let fits = footprint.iter().all(|offset| {
                let (u, v) = (center[0] + offset[0], center[1] + offset[1]);
                self.base_air(index, u, v) >= 35.0
                    && lung.below_dome(u, v) <= -3.0
                    && self
                        .effusion
                        .as_ref()
                        .is_none_or(|e| e.occupancy(u, v) == 0.0)
                    && self.frame.inside_image(u, v, 2.0)
            });
            if !fits {
                continue;
            }
            let blobs: Vec<Blob> = shape
                .iter()
                .map(|b| Blob {
                    center: [center[0] + b.center[0], center[1] + b.center[1]],
                    ..b.clone()
                })
                .collect();
            let reach = blobs
                .iter()
                .map(|b| {
                    (b.center[0] - center[0])
                        .abs()
                        .max((b.center[1] - center[1]).abs())
                        + 3.0 * b.sigma
                })
                .fold(0.0, f64::max);
            let candidate = Consolidation {
                lung: index,
                blobs,
                amplitude,
                bounds: Bounds::around(center, reach, reach),
            };
            let in_core = |u: f64, v: f64| candidate.level(u, v) >= CONSOLIDATION_LEVEL;
            let (bbox, centroid) = self.region_truth(candidate.bounds, in_core)?;
            let truth = self.finding(
                XrayLabel::Consolidation,
                Some(side_of(lung.sign)),
                centroid,
                extent,
                bbox,
            );
            self.consolidation = Some(candidate);
            return Some(truth);
        }
        None
    }

    /// Nodule: a sphere of soft tissue, 8–30 mm, inside one lung field.
    fn add_nodule(&mut self, rng: &mut impl Rng) -> Option<XrayFinding> {
        let diameter = uniform(rng, NODULE_DIAMETER_MM.0, NODULE_DIAMETER_MM.1);
        let radius = diameter / 2.0;
        for _ in 0..PLACEMENT_ATTEMPTS {
            let index = usize::from(rng.random_bool(0.5));
            let lung = &self.lungs[index];
            let v = uniform(rng, 0.1 * lung.costophrenic[1], lung.dome_top_v);
            let [medial, lateral] = lung.borders(v);
            let lateral_u = uniform(rng, medial, lateral);
            let center = [lung.sign * lateral_u, v];
            if !self.nodule_fits(index, center, radius) {
                continue;
            }
            let [column, row] = self.frame.to_pixel(center[0], center[1]);
            let r_px = radius / self.frame.spacing;
            let bbox = self.tight_box([column, row], r_px);
            self.nodule = Some(Capsule::new(center, center, radius));
            return Some(self.finding(
                XrayLabel::Nodule,
                Some(side_of(lung.sign)),
                [column, row],
                diameter,
                bbox,
            ));
        }
        None
    }

    /// The sphere and a margin lie in aerated lung deep enough to hold it, off the heart,
    /// aorta, spine and diaphragm, clear of other opacities, inside the image.
    fn nodule_fits(&self, index: usize, center: [f64; 2], radius: f64) -> bool {
        let lung = &self.lungs[index];
        let reach = radius + 3.0;
        let [spine_half_width] = self.spine.half_width.at(center[1]);
        if center[0].abs() - reach < spine_half_width + 3.0 {
            return false;
        }
        (0..=16).all(|i| {
            let (u, v) = if i == 16 {
                (center[0], center[1])
            } else {
                let angle = f64::from(i) * std::f64::consts::TAU / 16.0;
                (
                    center[0] + reach * angle.cos(),
                    center[1] + reach * angle.sin(),
                )
            };
            self.base_air(index, u, v) >= 2.0 * radius + 10.0
                && self.heart.thickness(u, v) == 0.0
                && self.mediastinum.iter().all(|e| e.thickness(u, v) == 0.0)
                && lung.below_dome(u, v) < -3.0
                && self
                    .effusion
                    .as_ref()
                    .is_none_or(|e| e.occupancy(u, v) == 0.0)
                && self
                    .consolidation
                    .as_ref()
                    .is_none_or(|c| c.occupancy(u, v) < 0.01)
                && self.frame.inside_image(u, v, 1.0)
        })
    }
}

impl Lung {
    /// One lung: `sign` −1 right, +1 left; `half_width` is the widest lateral extent from
    /// the midline, `height` the apex-to-costophrenic-angle distance.
    fn draw(
        rng: &mut impl Rng,
        sign: f64,
        k: f64,
        half_width: f64,
        height: f64,
        depth: f64,
    ) -> Lung {
        let apex_u = uniform(rng, 55.0, 62.0) * k;
        let widest_v = uniform(rng, 0.66, 0.74) * height;
        let basal_tuck = uniform(rng, 4.0, 8.0) * k;
        // The aortic side of the upper mediastinum is a little wider.
        let medial_upper = if sign > 0.0 { 26.0 } else { 23.0 } * k * uniform(rng, 0.92, 1.08);
        let medial_lower = uniform(rng, 13.0, 17.0) * k;
        let medial_turn_v = uniform(rng, 36.0, 44.0) * k;
        let depth_ramp_v = uniform(rng, 80.0, 100.0) * k;
        let dome_height = uniform(rng, 26.0, 38.0) * k;
        let cardiophrenic_drop = uniform(rng, 15.0, 24.0) * k;
        let recess_mm = uniform(rng, 35.0, 45.0) * k;
        let hilum = [
            uniform(rng, 40.0, 48.0) * k,
            height * if sign < 0.0 { 0.53 } else { 0.46 },
        ];

        let lateral = |v: f64| {
            if v <= 0.0 {
                apex_u
            } else if v < widest_v {
                // Rounded at the apex, widening gradually downwards.
                let x = 1.0 - v / widest_v;
                apex_u + (half_width - apex_u) * (1.0 - x.powf(1.6)).powf(0.7)
            } else {
                // The lower ribs tuck the lateral wall in slightly towards the base.
                let x = ((v - widest_v) / (height - widest_v)).min(2.0);
                half_width - basal_tuck * x * x
            }
        };
        let medial = |v: f64| {
            if v <= 0.0 {
                apex_u
            } else if v < medial_turn_v {
                let x = 1.0 - v / medial_turn_v;
                apex_u - (apex_u - medial_upper) * (1.0 - x * x).sqrt()
            } else {
                // Lower down the lungs wrap behind the heart, closer to the spine.
                let blend = smoothstep((v - medial_turn_v - 10.0 * k) / (110.0 * k));
                medial_upper + (medial_lower - medial_upper) * blend
            }
        };
        let depth_at = |v: f64| {
            let apex_taper = (v / depth_ramp_v).clamp(0.0, 1.0).sqrt();
            depth * apex_taper * (1.0 + 0.08 * smoothstep(v / height))
        };
        let costophrenic = [half_width - basal_tuck, height];
        let dome_peak_u = medial_lower + 0.45 * (costophrenic[0] - medial_lower);
        Lung {
            sign,
            outline: Profile::tabulate(|v| {
                let (medial, lateral) = (medial(v), lateral(v));
                [
                    medial,
                    lateral,
                    depth_at(v),
                    1.0 / (lateral - medial).max(1e-3),
                ]
            }),
            costophrenic,
            dome_peak_u,
            dome_top_v: height - dome_height,
            medial_floor_u: medial_lower,
            cardiophrenic_drop,
            recess_mm,
            hilum,
            bounds: Bounds::lateral(
                sign,
                medial_lower - 1.0,
                half_width + 1.0,
                0.0,
                height + recess_mm + 40.0 * k,
            ),
        }
    }
}

/// Widest inner thoracic width (mm): the largest sum of both lungs' lateral extents at one
/// height, the denominator of the cardiothoracic ratio.
fn thoracic_width(lungs: &[Lung; 2]) -> f64 {
    let bottom = lungs[0].costophrenic[1].min(lungs[1].costophrenic[1]);
    (0..=bottom.max(0.0) as usize)
        .map(|v| lungs[0].borders(v as f64)[1] + lungs[1].borders(v as f64)[1])
        .fold(0.0, f64::max)
}

/// The heart sized to `ratio`, a third of its width right of the midline, its apex resting
/// on the left hemidiaphragm so that its widest points stay visible above it.
fn heart_for(
    shape: &HeartShape,
    ratio: f64,
    thoracic_width: f64,
    left_lung: &Lung,
    k: f64,
) -> Ellipsoid {
    let half_width = ratio * thoracic_width / 2.0;
    let (sin, cos) = shape.angle.sin_cos();
    let long = half_width / (cos * cos + (shape.axis_ratio * sin).powi(2)).sqrt();
    let short = long * shape.axis_ratio;
    let center_u = half_width / 3.0 + shape.shift_u;
    // How far below the centre lies the apex, the heart's point furthest towards the
    // image's right (the patient's left).
    let apex_drop = (long * long - short * short) * sin * cos / half_width;
    let center_v = left_lung.dome_v(center_u + half_width) - 2.0 * k - apex_drop - shape.lift_v;
    Ellipsoid::new(
        [center_u, center_v],
        [long, short],
        shape.angle,
        short * shape.depth_ratio,
    )
}

/// Outline of neck, shoulders, arms and trunk around lungs as wide as `widest_lung`.
fn draw_body(
    rng: &mut impl Rng,
    k: f64,
    widest_lung: f64,
    chest_half_depth: f64,
    habitus: f64,
) -> Body {
    let chest_half_width = widest_lung + uniform(rng, 20.0, 28.0) * k * habitus;
    let shoulder_half_width = chest_half_width + uniform(rng, 35.0, 50.0) * k;
    let neck_half_width = uniform(rng, 50.0, 58.0) * k;
    let neck_half_depth = uniform(rng, 50.0, 58.0) * k;
    let neck_base_v = -uniform(rng, 85.0, 100.0) * k;
    let shoulder_v = -uniform(rng, 12.0, 24.0) * k;
    let half_width = |v: f64| {
        if v <= neck_base_v {
            neck_half_width
        } else if v < shoulder_v {
            // The trapezius slope: steep beside the neck, flattening over the shoulder.
            let t = (v - neck_base_v) / (shoulder_v - neck_base_v);
            neck_half_width + (shoulder_half_width - neck_half_width) * t * t
        } else {
            // The arms beside the upper chest fade into the lateral chest wall, which
            // narrows a little towards the waist.
            let arms = smoothstep((v - shoulder_v) / (110.0 * k));
            let waist = 1.0 - 0.06 * smoothstep((v - 220.0 * k) / (200.0 * k));
            (shoulder_half_width + (chest_half_width - shoulder_half_width) * arms) * waist
        }
    };
    let half_depth = |v: f64| {
        let chest = smoothstep((v - neck_base_v) / (60.0 * k - neck_base_v));
        let abdomen = 1.0 + 0.06 * smoothstep((v - 180.0 * k) / (150.0 * k));
        (neck_half_depth + (chest_half_depth - neck_half_depth) * chest) * abdomen
    };
    Body::new(Profile::tabulate(|v| [1.0 / half_width(v), half_depth(v)]))
}

/// Trachea down to the carina, then the two main bronchi (the right one steeper).
fn draw_airways(rng: &mut impl Rng, k: f64) -> Vec<Capsule> {
    let midline = uniform(rng, -3.0, 1.0) * k;
    let carina = [midline, uniform(rng, 88.0, 105.0) * k];
    let trachea_radius = uniform(rng, 7.5, 9.5) * k;
    let right_end = [
        carina[0] - uniform(rng, 20.0, 26.0) * k,
        carina[1] + uniform(rng, 22.0, 28.0) * k,
    ];
    let left_end = [
        carina[0] + uniform(rng, 30.0, 36.0) * k,
        carina[1] + uniform(rng, 24.0, 30.0) * k,
    ];
    vec![
        Capsule::new([midline, -800.0], carina, trachea_radius),
        Capsule::new(carina, right_end, trachea_radius * 0.75),
        Capsule::new(carina, left_end, trachea_radius * 0.68),
    ]
}

/// A vessel still to be grown: where it starts, its direction (radians from the lateral
/// horizontal, positive downwards), its intended length and starting radius (mm).
struct Branch {
    start: [f64; 2],
    angle: f64,
    length: f64,
    radius: f64,
    generation: u32,
}

/// Pulmonary vessel trees from each hilum: a few lobar trunks, each branching three times,
/// tapering and staying inside the lung.
fn grow_vessels(rng: &mut impl Rng, lungs: &[Lung; 2], k: f64) -> Vec<Capsule> {
    // Trunk directions from the lateral horizontal (degrees, positive downwards).
    const TRUNK_ANGLES: [f64; 6] = [-78.0, -42.0, -8.0, 28.0, 58.0, 86.0];
    let mut vessels = Vec::new();
    for lung in lungs {
        let hilum = [lung.sign * lung.hilum[0], lung.hilum[1]];
        let mut frontier: Vec<Branch> = TRUNK_ANGLES
            .iter()
            .map(|&angle| {
                let lower = if angle > 15.0 { 1.1 } else { 0.9 };
                let angle = (angle + uniform(rng, -12.0, 12.0)).to_radians();
                // Trunks leave from the rim of the hilar density, not all from one point.
                let start = [
                    hilum[0] + lung.sign * angle.cos() * 8.0 * k,
                    hilum[1] + angle.sin() * 8.0 * k,
                ];
                Branch {
                    start,
                    angle,
                    length: uniform(rng, 28.0, 42.0) * k,
                    radius: uniform(rng, 4.8, 6.2) * k * lower,
                    generation: 0,
                }
            })
            .collect();
        while let Some(Branch {
            start,
            angle,
            length,
            radius,
            generation,
        }) = frontier.pop()
        {
            let direction = [lung.sign * angle.cos(), angle.sin()];
            let mut end = start;
            let mut travelled = 0.0;
            // Walk outwards while inside the lung, so vessels never leave it.
            while travelled < length {
                let next = [end[0] + direction[0] * 2.0, end[1] + direction[1] * 2.0];
                if lung.thickness(next[0], next[1]) < 20.0
                    || lung.below_dome(next[0], next[1]) > -2.0
                {
                    break;
                }
                end = next;
                travelled += 2.0;
            }
            if travelled < 5.0 {
                continue;
            }
            // Each branch narrows to its children's calibre.
            vessels.push(Capsule::tapered(start, end, radius, radius * 0.72));
            if generation < 3 {
                for turn in [-1.0, 1.0] {
                    frontier.push(Branch {
                        start: end,
                        angle: angle + turn * uniform(rng, 12.0, 32.0).to_radians(),
                        length: length * uniform(rng, 0.65, 0.85),
                        radius: radius * 0.7,
                        generation: generation + 1,
                    });
                }
            }
        }
    }
    vessels
}

/// Vertebral column from the neck down, widening and with taller bodies towards the lumbar
/// spine.
fn draw_spine(rng: &mut impl Rng, k: f64) -> Spine {
    let width_jitter = uniform(rng, 0.93, 1.07);
    let half_width = Profile::tabulate(|v| {
        let thoracic = smoothstep((v + 60.0 * k) / (360.0 * k));
        [(13.0 + 11.0 * thoracic) * k * width_jitter]
    });
    let period = |v: f64| (17.0 + 9.0 * smoothstep((v + 100.0 * k) / (400.0 * k))) * k;
    let mut vertebrae = Vec::new();
    let mut top = PROFILE_V_RANGE.0 + uniform(rng, 0.0, period(PROFILE_V_RANGE.0));
    while top < PROFILE_V_RANGE.1 {
        let p = period(top);
        vertebrae.push((top, top + 0.8 * p));
        top += p;
    }
    let max_half_width = 24.0 * k * width_jitter + 1.0;
    Spine {
        half_width,
        vertebrae,
        scale: k,
        bounds: Bounds {
            u_min: -max_half_width,
            u_max: max_half_width,
            v_min: f64::NEG_INFINITY,
            v_max: f64::INFINITY,
        },
    }
}

/// Posterior rib arcs (from the spine, rising a little then falling to the lateral wall)
/// and anterior arcs (from the lateral wall down and inwards to the costal cartilage).
fn draw_ribs(rng: &mut impl Rng, lungs: &[Lung; 2], k: f64) -> Vec<BoneBand> {
    let mut bands = Vec::with_capacity(4 * RIBS_PER_SIDE);
    let first_v = uniform(rng, -12.0, -4.0) * k;
    for lung in lungs {
        let mut spine_v = first_v + uniform(rng, -2.0, 2.0) * k;
        for index in 0..RIBS_PER_SIDE {
            let i = index as f64;
            let drop = (20.0 + 1.6 * i) * k * uniform(rng, 0.9, 1.1);
            let rise = uniform(rng, 4.0, 7.0) * k;
            let inner = 17.0 * k;
            let outer = lung.borders((spine_v + drop).max(6.0 * k))[1] + 6.0 * k;
            // v = spine_v − a·t + b·t², lowest laterally by `drop`, highest by `rise`.
            let a = 2.0 * rise + (4.0 * rise * rise + 4.0 * rise * drop).sqrt();
            let b = a + drop;
            bands.push(
                BoneBand {
                    sign: lung.sign,
                    u_start: inner,
                    length: outer - inner,
                    coeffs: [spine_v, -a, b, 0.0],
                    half_height: (4.3 + 0.12 * i) * k,
                    half_depth: 5.5 * k,
                    cortex: 1.3 * k,
                    taper: 4.0 * k,
                    pieces: Vec::new(),
                }
                .with_pieces(),
            );
            let lateral_v = spine_v + drop;
            let medial_end = outer * uniform(rng, 0.34, 0.42);
            let length = outer - medial_end;
            let fall = length * uniform(rng, 0.55, 0.7);
            // t runs from the medial end (0) to the lateral wall (1).
            bands.push(
                BoneBand {
                    sign: lung.sign,
                    u_start: medial_end,
                    length,
                    coeffs: [lateral_v + fall, -1.3 * fall, 0.3 * fall, 0.0],
                    half_height: 3.8 * k,
                    half_depth: 2.5 * k,
                    cortex: 0.8 * k,
                    taper: 6.0 * k,
                    pieces: Vec::new(),
                }
                .with_pieces(),
            );
            spine_v += (19.5 + 0.7 * i) * k * uniform(rng, 0.97, 1.03);
        }
    }
    bands
}

/// Clavicles: from the sternal notch out over the apices, a gentle S, higher laterally.
fn draw_clavicles(rng: &mut impl Rng, k: f64) -> Vec<BoneBand> {
    [-1.0, 1.0]
        .into_iter()
        .map(|sign| {
            let medial_u = uniform(rng, 14.0, 19.0) * k;
            let lateral_u = uniform(rng, 145.0, 158.0) * k;
            let medial_v = uniform(rng, 32.0, 44.0) * k;
            let lateral_v = uniform(rng, -2.0, 10.0) * k;
            let s_curve = uniform(rng, 20.0, 30.0) * k;
            // v(t) = medial + (lateral − medial)·t + s·t(1 − t)(1 − 2t)
            let coeffs = [
                medial_v,
                lateral_v - medial_v + s_curve,
                -3.0 * s_curve,
                2.0 * s_curve,
            ];
            BoneBand {
                sign,
                u_start: medial_u,
                length: lateral_u - medial_u,
                coeffs,
                half_height: uniform(rng, 5.8, 7.0) * k,
                half_depth: 6.5 * k,
                cortex: 1.8 * k,
                taper: 5.0 * k,
                pieces: Vec::new(),
            }
            .with_pieces()
        })
        .collect()
}

/// Blobs of a consolidation around (0, 0), scaled so that the region where their sum
/// reaches [`CONSOLIDATION_LEVEL`] spans `extent` mm at its widest.
fn consolidation_shape(rng: &mut impl Rng, extent: f64) -> Vec<Blob> {
    let main_sigma = 0.22 * extent;
    let mut blobs = vec![Blob {
        center: [0.0, 0.0],
        sigma: main_sigma,
        weight: 1.0,
    }];
    let satellites = rng.random_range(2..=3);
    for _ in 0..satellites {
        let angle = uniform(rng, 0.0, std::f64::consts::TAU);
        let distance = uniform(rng, 0.15, 0.3) * extent;
        blobs.push(Blob {
            center: [distance * angle.cos(), distance * angle.sin()],
            sigma: main_sigma * uniform(rng, 0.6, 0.9),
            weight: uniform(rng, 0.6, 1.0),
        });
    }
    // Small patches give the opacity its mottled texture.
    let patches = rng.random_range(6..=9);
    for _ in 0..patches {
        let angle = uniform(rng, 0.0, std::f64::consts::TAU);
        let distance = uniform(rng, 0.0, 0.35) * extent;
        blobs.push(Blob {
            center: [distance * angle.cos(), distance * angle.sin()],
            sigma: uniform(rng, 0.05, 0.1) * extent,
            weight: uniform(rng, 0.2, 0.4),
        });
    }
    let measured = level_set_extent(&blobs, extent);
    if measured > 0.0 {
        let factor = extent / measured;
        for blob in &mut blobs {
            blob.center = [blob.center[0] * factor, blob.center[1] * factor];
            blob.sigma *= factor;
        }
    }
    blobs
}

/// Offsets from the centre, on a grid of `step` mm, where the blob sum reaches the level.
fn level_set_points(blobs: &[Blob], extent: f64, step: f64) -> Vec<[f64; 2]> {
    let steps = (3.0 * extent / step).ceil() as usize;
    let mut points = Vec::new();
    for i in 0..=steps {
        for j in 0..=steps {
            let (u, v) = (
                -1.5 * extent + i as f64 * step,
                -1.5 * extent + j as f64 * step,
            );
            if blob_sum(blobs, u, v) >= CONSOLIDATION_LEVEL {
                points.push([u, v]);
            }
        }
    }
    points
}

/// Widest extent (mm, along u or v) of the region where the blob sum reaches the level.
fn level_set_extent(blobs: &[Blob], extent: f64) -> f64 {
    let points = level_set_points(blobs, extent, extent / 60.0);
    let (mut min, mut max) = ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]);
    for [u, v] in points {
        min = [min[0].min(u), min[1].min(v)];
        max = [max[0].max(u), max[1].max(v)];
    }
    (max[0] - min[0]).max(max[1] - min[1]).max(0.0)
}

/// Large-scale brightness of the image: block means of the line integrals, blurred with a
/// Gaussian, read back with bilinear interpolation.
struct SmoothField {
    block: usize,
    rows: usize,
    columns: usize,
    values: Vec<f64>,
    /// Interpolation of every image column between two block columns.
    column_weights: Vec<(usize, usize, f64)>,
}

impl SmoothField {
    fn new(integrals: &[f32], image_columns: usize, block: usize, sigma: f64) -> Self {
        let image_rows = integrals.len() / image_columns;
        let (rows, columns) = (image_rows.div_ceil(block), image_columns.div_ceil(block));
        let mut means = vec![0.0f64; rows * columns];
        means
            .par_chunks_mut(columns)
            .enumerate()
            .for_each(|(block_row, out)| {
                let first = block_row * block;
                let last = (first + block).min(image_rows);
                let mut counts = vec![0usize; columns];
                for line in
                    integrals[first * image_columns..last * image_columns].chunks(image_columns)
                {
                    for ((sum, count), chunk) in
                        out.iter_mut().zip(&mut counts).zip(line.chunks(block))
                    {
                        *sum += chunk.iter().map(|&value| f64::from(value)).sum::<f64>();
                        *count += chunk.len();
                    }
                }
                for (mean, count) in out.iter_mut().zip(&counts) {
                    *mean /= *count as f64;
                }
            });
        let radius = gaussian_radius(sigma);
        let kernel: Vec<f64> = {
            let raw: Vec<f64> = (0..=2 * radius)
                .map(|i| (-0.5 * ((i as f64 - radius as f64) / sigma).powi(2)).exp())
                .collect();
            let total: f64 = raw.iter().sum();
            raw.iter().map(|w| w / total).collect()
        };
        // Separable blur; the edges are extended by repeating the outermost blocks.
        let mut horizontal = vec![0.0f64; rows * columns];
        for row in 0..rows {
            let source = &means[row * columns..(row + 1) * columns];
            for column in 0..columns {
                horizontal[row * columns + column] = kernel
                    .iter()
                    .enumerate()
                    .map(|(k, w)| w * source[(column + k).saturating_sub(radius).min(columns - 1)])
                    .sum();
            }
        }
        let mut values = vec![0.0f64; rows * columns];
        for row in 0..rows {
            for column in 0..columns {
                values[row * columns + column] = kernel
                    .iter()
                    .enumerate()
                    .map(|(k, w)| {
                        let source_row = (row + k).saturating_sub(radius).min(rows - 1);
                        w * horizontal[source_row * columns + column]
                    })
                    .sum();
            }
        }
        let mut field = SmoothField {
            block,
            rows,
            columns,
            values,
            column_weights: Vec::new(),
        };
        field.column_weights = (0..image_columns)
            .map(|c| field.position(c, columns))
            .collect();
        field
    }

    /// Fractional block index of pixel `index` along an axis of `count` blocks.
    fn position(&self, index: usize, count: usize) -> (usize, usize, f64) {
        let x = ((index as f64 + 0.5) / self.block as f64 - 0.5).clamp(0.0, (count - 1) as f64);
        let first = x as usize;
        (first, (first + 1).min(count - 1), x - first as f64)
    }

    /// The field along image row `row`, one value per pixel.
    fn row(&self, row: usize) -> Vec<f64> {
        let (r0, r1, f) = self.position(row, self.rows);
        let (a, b) = (
            &self.values[r0 * self.columns..(r0 + 1) * self.columns],
            &self.values[r1 * self.columns..(r1 + 1) * self.columns],
        );
        let blocks: Vec<f64> = a.iter().zip(b).map(|(a, b)| a + (b - a) * f).collect();
        self.column_weights
            .iter()
            .map(|&(c0, c1, f)| blocks[c0] + (blocks[c1] - blocks[c0]) * f)
            .collect()
    }
}

/// Radius (in blocks) at which the smoothing Gaussian is cut off.
fn gaussian_radius(sigma: f64) -> usize {
    (3.0 * sigma).ceil().max(1.0) as usize
}

/// VOI window (centre, width) of a MONOCHROME2 image, from the image itself: black at
/// the direct-exposure background, the densest tissue a light grey rather than clipped.
fn display_window(pixels: &[u16]) -> (f64, f64) {
    let mut histogram = vec![0usize; usize::from(MAX_STORED_VALUE) + 1];
    for &value in pixels {
        histogram[usize::from(value.min(MAX_STORED_VALUE))] += 1;
    }
    let percentile = |fraction: f64| {
        let target = (pixels.len() as f64 * fraction) as usize;
        let mut seen = 0;
        for (value, count) in histogram.iter().enumerate() {
            seen += count;
            if seen > target {
                return value as f64;
            }
        }
        f64::from(MAX_STORED_VALUE)
    };
    let low = percentile(0.005);
    let high = percentile(0.999);
    let width = ((high - low) * 1.1).max(64.0);
    (low + width / 2.0, width)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator's detector width (mm); spacing follows from the image size.
    const FIELD_MM: f64 = 358.4;

    fn spec(size: u32, findings: Vec<XrayLabel>) -> RadiographSpec {
        RadiographSpec {
            rows: size,
            columns: size,
            pixel_spacing_mm: FIELD_MM / f64::from(size),
            monochrome1: false,
            findings,
        }
    }

    fn render(spec: &RadiographSpec, seed: u64) -> RenderedRadiograph {
        render_radiograph(spec, &mut ChaCha8Rng::seed_from_u64(seed)).expect("a valid spec renders")
    }

    /// Mean value of the pixels whose distance from `center` (pixels) is in `inner..outer`.
    fn mean_in_ring(
        pixels: &[u16],
        columns: usize,
        center: [f64; 2],
        inner: f64,
        outer: f64,
    ) -> f64 {
        let (mut sum, mut count) = (0.0, 0usize);
        for (i, value) in pixels.iter().enumerate() {
            let d = ((i % columns) as f64 - center[0]).hypot((i / columns) as f64 - center[1]);
            if d >= inner && d < outer {
                sum += f64::from(*value);
                count += 1;
            }
        }
        assert!(count > 0, "empty ring at {center:?}");
        sum / count as f64
    }

    fn mean_in_box(pixels: &[u16], columns: usize, bbox: [u32; 4]) -> f64 {
        let (mut sum, mut count) = (0.0, 0usize);
        for row in bbox[1]..=bbox[3] {
            for column in bbox[0]..=bbox[2] {
                sum += f64::from(pixels[row as usize * columns + column as usize]);
                count += 1;
            }
        }
        sum / count as f64
    }

    /// Mean of a (2·half+1)² patch of a MONOCHROME2 image around patient point (u, v).
    fn patch_mean(scene: &Scene, pixels: &[u16], u: f64, v: f64, half: i64) -> f64 {
        let [column, row] = scene.frame.to_pixel(u, v);
        let (column, row) = (column.round() as i64, row.round() as i64);
        let columns = scene.frame.columns as i64;
        let values: Vec<f64> = (row - half..=row + half)
            .flat_map(|r| (column - half..=column + half).map(move |c| (r, c)))
            .map(|(r, c)| f64::from(pixels[(r * columns + c) as usize]))
            .collect();
        values.iter().sum::<f64>() / values.len() as f64
    }

    fn finding(rendered: &RenderedRadiograph, label: XrayLabel) -> &XrayFinding {
        rendered
            .findings
            .iter()
            .find(|f| f.label == label)
            .expect("requested finding is reported")
    }

    #[test]
    fn same_seed_same_radiograph_other_seed_other_pixels() {
        let s = spec(256, XrayLabel::ALL.to_vec());
        let a = render(&s, 7);
        let b = render(&s, 7);
        let c = render(&s, 8);
        assert_eq!(a, b);
        assert_ne!(a.pixels, c.pixels);
        assert_ne!(a.findings, c.findings);
    }

    #[test]
    fn thread_count_does_not_change_the_image() {
        let s = spec(256, vec![XrayLabel::Consolidation]);
        let parallel = render(&s, 21);
        let single_thread = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("a one-thread pool")
            .install(|| render(&s, 21));
        assert_eq!(parallel, single_thread);
    }

    #[test]
    fn values_fit_twelve_bits_and_monochrome1_is_the_exact_inverse() {
        let m2_spec = spec(512, vec![XrayLabel::Nodule, XrayLabel::PleuralEffusion]);
        let m1_spec = RadiographSpec {
            monochrome1: true,
            ..m2_spec.clone()
        };
        let m2 = render(&m2_spec, 3);
        let m1 = render(&m1_spec, 3);
        assert!(m2.pixels.iter().all(|&p| p <= MAX_STORED_VALUE));
        assert!(m1.pixels.iter().all(|&p| p <= MAX_STORED_VALUE));
        assert!(
            m2.pixels
                .iter()
                .zip(&m1.pixels)
                .all(|(a, b)| a + b == MAX_STORED_VALUE)
        );
        assert_eq!(m1.findings, m2.findings);
        assert_eq!(
            m1.window_center,
            f64::from(MAX_STORED_VALUE) - m2.window_center
        );
        assert_eq!(m1.window_width, m2.window_width);
        // The image uses the 12 bits: black background, bright abdomen.
        let (min, max) = (m2.pixels.iter().min(), m2.pixels.iter().max());
        assert!(
            min < Some(&200) && max > Some(&3000),
            "range {min:?}..{max:?}"
        );
        assert!(
            m2.window_width > 1000.0 && m2.window_width <= 4096.0 * 1.1,
            "{}",
            m2.window_width
        );
    }

    #[test]
    fn lungs_are_darker_than_mediastinum_spine_and_heart() {
        for seed in 0..5 {
            let s = spec(512, Vec::new());
            let (scene, _) =
                Scene::build(&s, &mut ChaCha8Rng::seed_from_u64(seed)).expect("valid spec");
            let pixels = render(&s, seed).pixels;
            let mediastinum = patch_mean(
                &scene,
                &pixels,
                0.0,
                0.3 * scene.lungs[1].costophrenic[1],
                4,
            );
            let heart = patch_mean(
                &scene,
                &pixels,
                scene.heart.center[0],
                scene.heart.center[1],
                4,
            );
            for lung in &scene.lungs {
                let v = 0.45 * lung.costophrenic[1];
                let [medial, lateral] = lung.borders(v);
                let lung_mean =
                    patch_mean(&scene, &pixels, lung.sign * (medial + lateral) / 2.0, v, 4);
                assert!(
                    lung_mean + 800.0 < mediastinum,
                    "seed {seed}: lung {lung_mean} vs mediastinum {mediastinum}"
                );
                assert!(
                    lung_mean + 800.0 < heart,
                    "seed {seed}: lung {lung_mean} vs heart {heart}"
                );
                // Below the dome: liver or spleen, as bright as the mediastinum.
                let abdomen_v = lung.costophrenic[1] + 30.0;
                let abdomen = patch_mean(&scene, &pixels, lung.sign * 0.6 * lateral, abdomen_v, 4);
                assert!(
                    lung_mean + 800.0 < abdomen,
                    "seed {seed}: lung {lung_mean} vs abdomen {abdomen}"
                );
            }
        }
    }

    #[test]
    fn nodule_is_drawn_where_the_truth_says_and_nowhere_else() {
        let with_spec = spec(512, vec![XrayLabel::Nodule]);
        let without_spec = spec(512, Vec::new());
        for seed in 0..8 {
            let with = render(&with_spec, seed);
            let without = render(&without_spec, seed);
            let nodule = finding(&with, XrayLabel::Nodule);
            let spacing = with_spec.pixel_spacing_mm;
            let radius_px = nodule.size_mm / 2.0 / spacing;
            let [c0, r0, c1, r1] = nodule.bbox_px;
            // Tight box: the pixel centres within the diameter.
            for extent in [f64::from(c1 - c0), f64::from(r1 - r0)] {
                assert!(
                    extent <= 2.0 * radius_px && extent > 2.0 * radius_px - 2.0,
                    "seed {seed}: {nodule:?}"
                );
            }
            // Same seed without the nodule: identical beyond its box and the reach of the
            // detector's processing (which spreads a faint halo around any detail).
            let (scene, _) =
                Scene::build(&with_spec, &mut ChaCha8Rng::seed_from_u64(seed)).expect("valid spec");
            let reach = scene.exposure.reach_px() as u32;
            assert!(
                f64::from(reach) * spacing < 100.0,
                "processing reach {reach} px"
            );
            for (i, (a, b)) in with.pixels.iter().zip(&without.pixels).enumerate() {
                let (column, row) = ((i % 512) as u32, (i / 512) as u32);
                let far = column + reach < c0
                    || column > c1 + reach
                    || row + reach < r0
                    || row > r1 + reach;
                assert!(
                    !far || a == b,
                    "seed {seed}: pixel ({column}, {row}) changed far from {:?}",
                    nodule.bbox_px
                );
            }
            // The nodule brightens its circle, and much more than the ring around it (ribs
            // and vessels may make the ring itself brighter, so compare the changes).
            let change = |inner: f64, outer: f64| {
                mean_in_ring(&with.pixels, 512, nodule.center_px, inner, outer)
                    - mean_in_ring(&without.pixels, 512, nodule.center_px, inner, outer)
            };
            let inside = change(0.0, 0.6 * radius_px);
            let ring = change(radius_px + 2.0, radius_px + 6.0);
            assert!(
                inside > 80.0,
                "seed {seed}: the circle brightened by {inside}"
            );
            assert!(
                inside > ring + 60.0,
                "seed {seed}: circle {inside} vs ring {ring}"
            );
        }
    }

    #[test]
    fn effusion_and_consolidation_raise_values_in_their_boxes() {
        let without_spec = spec(512, Vec::new());
        for label in [XrayLabel::PleuralEffusion, XrayLabel::Consolidation] {
            for seed in 0..6 {
                let with = render(&spec(512, vec![label]), seed);
                let without = render(&without_spec, seed);
                let truth = finding(&with, label);
                let after = mean_in_box(&with.pixels, 512, truth.bbox_px);
                let before = mean_in_box(&without.pixels, 512, truth.bbox_px);
                assert!(
                    after > before + 100.0,
                    "{label:?} seed {seed}: {before} → {after} in {:?}",
                    truth.bbox_px
                );
                assert!(truth.side.is_some());
            }
        }
    }

    #[test]
    fn cardiomegaly_draws_a_wide_heart_and_normal_hearts_stay_normal() {
        for seed in 0..6 {
            let normal = render(&spec(512, Vec::new()), seed);
            assert!(
                (NORMAL_CTR.0..=0.5).contains(&normal.cardiothoracic_ratio),
                "{}",
                normal.cardiothoracic_ratio
            );
            let s = spec(512, vec![XrayLabel::Cardiomegaly]);
            let enlarged = render(&s, seed);
            let heart = finding(&enlarged, XrayLabel::Cardiomegaly);
            assert!(enlarged.cardiothoracic_ratio >= 0.55 && enlarged.cardiothoracic_ratio <= 0.65);
            assert_eq!(
                heart.cardiothoracic_ratio,
                Some(enlarged.cardiothoracic_ratio)
            );
            assert_eq!(heart.side, None);
            // The visible silhouette is as wide as the ratio says (patient rotation and
            // pixel rounding aside).
            let (scene, _) =
                Scene::build(&s, &mut ChaCha8Rng::seed_from_u64(seed)).expect("valid spec");
            let width_mm = f64::from(heart.bbox_px[2] - heart.bbox_px[0]) * s.pixel_spacing_mm;
            let measured = width_mm / scene.thoracic_width;
            assert!(
                (measured - enlarged.cardiothoracic_ratio).abs() < 0.05,
                "seed {seed}: {measured} vs {}",
                enlarged.cardiothoracic_ratio
            );
            // And it shows: the heart's box is brighter than with the normal heart.
            let after = mean_in_box(&enlarged.pixels, 512, heart.bbox_px);
            let before = mean_in_box(&normal.pixels, 512, heart.bbox_px);
            assert!(after > before + 100.0, "seed {seed}: {before} → {after}");
        }
    }

    #[test]
    fn truth_boxes_lie_in_the_image_and_hold_their_centres() {
        let mut choice = ChaCha8Rng::seed_from_u64(99);
        for seed in 0..24 {
            let size = [64, 256, 384][seed % 3];
            let labels: Vec<XrayLabel> = XrayLabel::ALL
                .into_iter()
                .filter(|_| choice.random_bool(0.6))
                .collect();
            let s = RadiographSpec {
                rows: size,
                columns: size + 32,
                pixel_spacing_mm: FIELD_MM / f64::from(size),
                monochrome1: seed % 2 == 0,
                findings: labels.clone(),
            };
            let rendered = render(&s, seed as u64);
            assert_eq!(rendered.pixels.len(), (size * (size + 32)) as usize);
            assert_eq!(
                rendered
                    .findings
                    .iter()
                    .map(|f| f.label)
                    .collect::<Vec<_>>(),
                labels,
                "in the order requested"
            );
            for f in &rendered.findings {
                let [c0, r0, c1, r1] = f.bbox_px;
                assert!(
                    c0 <= c1 && r0 <= r1 && c1 < s.columns && r1 < s.rows,
                    "{f:?}"
                );
                assert!(
                    (f64::from(c0)..=f64::from(c1)).contains(&f.center_px[0]),
                    "{f:?}"
                );
                assert!(
                    (f64::from(r0)..=f64::from(r1)).contains(&f.center_px[1]),
                    "{f:?}"
                );
                assert_eq!(
                    f.center_mm,
                    [
                        f.center_px[0] * s.pixel_spacing_mm,
                        f.center_px[1] * s.pixel_spacing_mm
                    ]
                );
                let (range, lateral) = match f.label {
                    XrayLabel::Nodule => (NODULE_DIAMETER_MM, true),
                    XrayLabel::Consolidation => (CONSOLIDATION_EXTENT_MM, true),
                    XrayLabel::PleuralEffusion => (EFFUSION_HEIGHT_MM, true),
                    XrayLabel::Cardiomegaly => ((100.0, 250.0), false),
                };
                assert!((range.0..=range.1).contains(&f.size_mm), "{f:?}");
                assert_eq!(f.side.is_some(), lateral, "{f:?}");
                assert_eq!(
                    f.cardiothoracic_ratio.is_some(),
                    f.label == XrayLabel::Cardiomegaly,
                    "{f:?}"
                );
            }
        }
    }

    #[test]
    fn smaller_fields_get_a_smaller_patient() {
        let s = RadiographSpec {
            rows: 600,
            columns: 520,
            pixel_spacing_mm: 0.5,
            monochrome1: false,
            findings: XrayLabel::ALL.to_vec(),
        };
        for seed in 0..3 {
            let rendered = render(&s, seed);
            assert_eq!(rendered.findings.len(), 4);
            let (scene, _) =
                Scene::build(&s, &mut ChaCha8Rng::seed_from_u64(seed)).expect("valid spec");
            assert!(
                scene.thoracic_width < 260.0 - 2.0 * 14.0,
                "{}",
                scene.thoracic_width
            );
        }
    }

    #[test]
    fn impossible_specs_are_refused() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let base = spec(512, vec![XrayLabel::Nodule]);
        let refused = |s: RadiographSpec, rng: &mut ChaCha8Rng| render_radiograph(&s, rng).err();
        assert_eq!(
            refused(
                RadiographSpec {
                    rows: 0,
                    ..base.clone()
                },
                &mut rng
            ),
            Some(RadiographError::ImageTooSmall {
                rows: 0,
                columns: 512
            })
        );
        assert!(matches!(
            refused(
                RadiographSpec {
                    columns: 63,
                    ..base.clone()
                },
                &mut rng
            ),
            Some(RadiographError::ImageTooSmall { .. })
        ));
        assert!(matches!(
            refused(
                RadiographSpec {
                    rows: MAX_EDGE_PX + 1,
                    ..base.clone()
                },
                &mut rng
            ),
            Some(RadiographError::ImageTooLarge { .. })
        ));
        for spacing in [0.0, -0.35, f64::NAN, f64::INFINITY, f64::MAX] {
            assert!(
                matches!(
                    refused(
                        RadiographSpec {
                            pixel_spacing_mm: spacing,
                            ..base.clone()
                        },
                        &mut rng
                    ),
                    Some(RadiographError::InvalidPixelSpacing(_))
                ),
                "spacing {spacing}"
            );
        }
        assert!(matches!(
            refused(
                RadiographSpec {
                    rows: 64,
                    columns: 64,
                    pixel_spacing_mm: 0.35,
                    ..base.clone()
                },
                &mut rng
            ),
            Some(RadiographError::FieldOfViewTooSmall { .. })
        ));
        let twice = vec![
            XrayLabel::Nodule,
            XrayLabel::Cardiomegaly,
            XrayLabel::Nodule,
        ];
        assert_eq!(
            refused(
                RadiographSpec {
                    findings: twice,
                    ..base
                },
                &mut rng
            ),
            Some(RadiographError::DuplicateFinding(XrayLabel::Nodule))
        );
    }
}
