//! Post-processing of a segmentation: from the binary masks a 2D U-Net produces slice by
//! slice on a CT series to the nodules a report lists.
//!
//! [`measure_nodules`] stacks the masks in space, joins touching foreground voxels into 3D
//! connected components (26-connectivity) and measures each one: centre in patient
//! coordinates, longest axial diameter, volume, mean HU and slice range.
//! [`label_components_3d`] is the labelling alone, for masks already stacked in order.
//!
//! # Conventions
//!
//! - **Coordinates** are DICOM patient coordinates (mm). Pixel (column `c`, row `r`) of a
//!   slice lies at `position + c · column_spacing · row_direction + r · row_spacing ·
//!   column_direction`: ImageOrientationPatient's first vector (`row_direction`) runs along
//!   a row, towards increasing column index, and PixelSpacing is (row spacing, column
//!   spacing), as DICOM orders them. ImagePositionPatient is the centre of the first pixel.
//! - **Slice order**: slices may be given in any order. They are sorted along the slice
//!   normal (`row_direction × column_direction`) to decide which slices are neighbours and
//!   how thick each one is; every index reported ([`NoduleMeasurement::slice_range`]) still
//!   refers to the slices *as given*.
//! - **Voxel volume** = row spacing × column spacing × the slice's thickness along the
//!   normal, taken from its neighbours' positions: half the distance to each neighbour,
//!   summed. An end slice reaches as far beyond its centre as towards its one neighbour.
//!   A single slice has no neighbour to take a thickness from, so it is an error.
//! - **Centre** and **mean HU** are volume-weighted means over the component's voxels
//!   (plain means when the slices are evenly spaced).
//! - **Longest axial diameter**: on each slice, the longest distance between the centres of
//!   two of the component's pixels, plus one pixel along that line (the mask pixel stands
//!   for the whole square around its centre, so a caliper spans outer edge to outer edge:
//!   half a pixel beyond each end centre); the largest over the slices. A lone pixel
//!   measures its longer side. "Axial" means in the slice plane. This is the extent of the
//!   mask as drawn, consistent with the volume counting whole voxels; for a smooth object
//!   whose mask holds the pixels with their centre inside, it reads up to about one pixel
//!   more than the object's own diameter.

use serde::{Deserialize, Serialize};

/// Most voxels one volume may hold: 2048 × 2048 × 4096. Bounds memory (the labels take
/// four bytes per voxel) and keeps component counts within `u32`.
pub const MAX_VOXELS: u64 = 2048 * 2048 * 4096;

/// How far ImageOrientationPatient may stray from orthonormal (and from the first slice's)
/// before the stack is refused: DICOM writes it as decimal strings, so it is rarely exact.
pub const ORIENTATION_TOLERANCE: f64 = 1e-3;

/// Largest accepted coordinate or pixel spacing (mm): far beyond any scanner, small enough
/// that sums over every voxel of a volume stay finite.
pub const MAX_COORDINATE_MM: f64 = 1e6;

/// Two slices closer than this along the normal (mm) are taken as the same position.
pub const MIN_SLICE_GAP_MM: f64 = 1e-3;

/// Where one slice lies: DICOM ImagePositionPatient, ImageOrientationPatient and
/// PixelSpacing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SliceGeometry {
    /// ImagePositionPatient: centre of the first pixel (column 0, row 0), mm.
    pub position_mm: [f64; 3],
    /// First ImageOrientationPatient vector: direction of increasing column index.
    pub row_direction: [f64; 3],
    /// Second ImageOrientationPatient vector: direction of increasing row index.
    pub column_direction: [f64; 3],
    /// PixelSpacing as DICOM orders it: row spacing (between rows), then column spacing
    /// (between columns), mm.
    pub pixel_spacing_mm: [f64; 2],
}

/// A stack of slice masks with their Hounsfield units, as the segmentation produced them.
#[derive(Debug, Clone, Copy)]
pub struct MaskVolume<'a> {
    pub rows: usize,
    pub columns: usize,
    /// One entry per slice, in the order of `mask` and `hu` (any spatial order).
    pub slices: &'a [SliceGeometry],
    /// Slice-major, then row-major: `mask[(slice · rows + row) · columns + column]`;
    /// nonzero is foreground.
    pub mask: &'a [u8],
    /// Hounsfield units in the same layout as `mask`: the voxels under the mask (which must be
    /// finite) and their in-plane neighbours (the lung border; a non-finite one is not lung).
    pub hu: &'a [f32],
}

/// One connected component of the mask, measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoduleMeasurement {
    /// Volume-weighted mean of the voxel centres, patient coordinates (mm).
    pub center_mm: [f64; 3],
    /// Largest in-plane extent over the slices (see the module docs for the definition), mm.
    pub longest_axial_diameter_mm: f64,
    /// Sum of the voxel volumes, mm³.
    pub volume_mm3: f64,
    /// Volume-weighted mean HU over the component's voxels.
    pub mean_hu: f64,
    /// Indices, in the order the slices were given, of the component's two end slices
    /// along the slice normal, smaller index first. When the slices were given sorted
    /// (either direction) the component spans exactly the slices in between.
    pub slice_range: [usize; 2],
    /// Number of mask voxels in the component.
    pub voxel_count: usize,
    /// Of the background voxels that touch the component in-plane (its border, counted
    /// once per touching side), the share that is aerated lung (below
    /// [`LUNG_HU_BELOW`]). A lung nodule sits in the lung, so most of its border is air; a
    /// component inside the mediastinum or chest wall has none.
    #[serde(default)]
    pub lung_border_fraction: f64,
    /// Extent along the slice normal (mm): the thicknesses of the slices from the first to
    /// the last the component touches, summed.
    #[serde(default)]
    pub through_plane_extent_mm: f64,
    /// [`Self::through_plane_extent_mm`] over the diameter of the sphere of the same volume.
    /// About 1 for a nodule; well below 1 for a flat component, one or two slices thick but
    /// wide in-plane — a shape many of the demo segmenter's false positives have. `None`
    /// when the component reaches the first or last slice: the scan cuts it, so its extent
    /// says nothing of its shape.
    #[serde(default)]
    pub through_plane_ratio: Option<f64>,
}

/// Hounsfield units below which a voxel counts as aerated lung.
pub const LUNG_HU_BELOW: f32 = -400.0;

/// How components become nodules.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentOptions {
    /// Components smaller than this (mm³) are specks, not nodules, and are dropped.
    /// Must be finite and not negative; 0 keeps every component.
    pub min_volume_mm3: f64,
    /// Components whose [`NoduleMeasurement::lung_border_fraction`] is below this are
    /// outside the lung and dropped. In 0..=1; 0 keeps every component.
    #[serde(default)]
    pub min_lung_border_fraction: f64,
    /// Components whose [`NoduleMeasurement::through_plane_ratio`] is below this are flat,
    /// not round, and dropped; one the scan cuts (no ratio) is kept. In
    /// 0..=[`MAX_THROUGH_PLANE_RATIO`]; 0 keeps every component.
    #[serde(default)]
    pub min_through_plane_ratio: f64,
}

/// Largest accepted [`ComponentOptions::min_through_plane_ratio`]: a sphere measures about 1.
pub const MAX_THROUGH_PLANE_RATIO: f64 = 2.0;

impl Default for ComponentOptions {
    /// Keeps every component: which specks to drop is the caller's clinical choice.
    fn default() -> Self {
        ComponentOptions {
            min_volume_mm3: 0.0,
            min_lung_border_fraction: 0.0,
            min_through_plane_ratio: 0.0,
        }
    }
}

impl ComponentOptions {
    /// Refuses a rule no component could be measured against.
    pub fn validate(&self) -> Result<(), PostprocessError> {
        if !(self.min_volume_mm3.is_finite() && self.min_volume_mm3 >= 0.0) {
            return Err(PostprocessError::MinVolume(self.min_volume_mm3));
        }
        if !(0.0..=1.0).contains(&self.min_lung_border_fraction) {
            return Err(PostprocessError::MinLungBorder(
                self.min_lung_border_fraction,
            ));
        }
        if !(0.0..=MAX_THROUGH_PLANE_RATIO).contains(&self.min_through_plane_ratio) {
            return Err(PostprocessError::MinThroughPlaneRatio(
                self.min_through_plane_ratio,
            ));
        }
        Ok(())
    }

    /// Whether a component of this volume, lung border and shape is a nodule by these rules.
    pub fn keeps(
        &self,
        volume_mm3: f64,
        lung_border_fraction: f64,
        through_plane_ratio: Option<f64>,
    ) -> bool {
        volume_mm3 >= self.min_volume_mm3
            && lung_border_fraction >= self.min_lung_border_fraction
            && through_plane_ratio.is_none_or(|ratio| ratio >= self.min_through_plane_ratio)
    }
}

/// Extent along the normal over the diameter of the sphere of the same volume; `None` for
/// a component on the first or last of `slices` sorted slices (cut by the scan).
fn through_plane_ratio(component: &ComponentTotals, extent_mm: f64, slices: usize) -> Option<f64> {
    if component.first_sorted_slice == 0 || component.last_sorted_slice + 1 >= slices {
        return None;
    }
    let sphere_diameter = (6.0 * component.volume_mm3 / std::f64::consts::PI).cbrt();
    Some(if sphere_diameter > 0.0 {
        extent_mm / sphere_diameter
    } else {
        0.0
    })
}

/// Why a volume could not be labelled or measured: all of them are faults of the input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PostprocessError {
    #[error("the volume is empty: {rows} rows × {columns} columns × {slices} slices")]
    EmptyVolume {
        rows: usize,
        columns: usize,
        slices: usize,
    },
    #[error(
        "{rows} rows × {columns} columns × {slices} slices exceed the maximum of {MAX_VOXELS} voxels"
    )]
    TooLarge {
        rows: usize,
        columns: usize,
        slices: usize,
    },
    #[error("the {what} holds {actual} values, the volume's size calls for {expected}")]
    LengthMismatch {
        what: &'static str,
        expected: usize,
        actual: usize,
    },
    #[error(
        "one slice has no neighbour to take its thickness from: volumes need at least two slices"
    )]
    SingleSlice,
    #[error("slice {index}: {field} is not finite or beyond ±{MAX_COORDINATE_MM} mm")]
    GeometryOutOfRange { index: usize, field: &'static str },
    #[error("slice {index}: pixel spacing {spacing_mm:?} mm must be positive")]
    PixelSpacing { index: usize, spacing_mm: [f64; 2] },
    #[error(
        "slice {index}: row direction {row:?} and column direction {column:?} are not orthogonal unit vectors"
    )]
    Orientation {
        index: usize,
        row: [f64; 3],
        column: [f64; 3],
    },
    #[error(
        "slice {index}: orientation or pixel spacing differs from slice 0's; the slices do not form one volume"
    )]
    MixedGeometry { index: usize },
    #[error(
        "slices {first} and {second} lie at the same position along the slice normal ({position_mm} mm)"
    )]
    DuplicatePosition {
        first: usize,
        second: usize,
        position_mm: f64,
    },
    #[error("min_volume_mm3 = {0} must be finite and not negative")]
    MinVolume(f64),
    #[error("min_lung_border_fraction = {0} must be within 0 and 1")]
    MinLungBorder(f64),
    #[error("min_through_plane_ratio = {0} must be within 0 and {MAX_THROUGH_PLANE_RATIO}")]
    MinThroughPlaneRatio(f64),
    #[error(
        "slice {slice}, row {row}, column {column}: HU value {value} under the mask is not finite"
    )]
    NonFiniteHu {
        slice: usize,
        row: usize,
        column: usize,
        value: f32,
    },
    #[error("more connected components than labels can number")]
    TooManyComponents,
}

/// Labels the 26-connected components of a stack of slice masks whose slices are adjacent
/// in space in the order they are stored (`mask[(slice · rows + row) · columns + column]`,
/// nonzero = foreground).
///
/// Returns one label per voxel in the same layout (0 = background) and the number of
/// components. Numbering is deterministic: components are numbered 1, 2, … in the order of
/// their first voxel in storage order.
pub fn label_components_3d(
    rows: usize,
    columns: usize,
    slices: usize,
    mask: &[u8],
) -> Result<(Vec<u32>, u32), PostprocessError> {
    let voxels = checked_voxel_count(rows, columns, slices)?;
    check_length("mask", voxels, mask.len())?;
    let plane_len = rows * columns;
    let planes: Vec<&[u8]> = mask.chunks_exact(plane_len).collect();
    label_planes(rows, columns, &planes)
}

/// The mask a segmenter's probabilities give with two thresholds: components are found at
/// `detect` (a low threshold finds faint nodules), and each is drawn by its voxels at or above
/// `outline` (so a clear nodule is measured as at the usual threshold, not swollen by the low
/// one); a component with no voxel at `outline` keeps all of its voxels. With `outline ≤
/// detect` this is the plain mask at `detect`. Slices in order along the normal,
/// `probability[(slice · rows + row) · columns + column]`.
pub fn two_threshold_mask(
    rows: usize,
    columns: usize,
    slices: usize,
    probability: &[f32],
    detect: f32,
    outline: f32,
) -> Result<Vec<u8>, PostprocessError> {
    let voxels = checked_voxel_count(rows, columns, slices)?;
    check_length("probability", voxels, probability.len())?;
    let detected: Vec<u8> = probability.iter().map(|&p| u8::from(p >= detect)).collect();
    if outline <= detect {
        return Ok(detected);
    }
    let (labels, count) = label_components_3d(rows, columns, slices, &detected)?;
    let mut has_core = vec![false; count as usize + 1];
    for (&label, &p) in labels.iter().zip(probability) {
        if label != 0 && p >= outline {
            has_core[label as usize] = true;
        }
    }
    Ok(labels
        .iter()
        .zip(probability)
        .map(|(&label, &p)| u8::from(label != 0 && (p >= outline || !has_core[label as usize])))
        .collect())
}

/// Finds the nodules in a segmented volume: its 26-connected components at least
/// `options.min_volume_mm3` large, measured, largest volume first (ties: the component
/// whose first voxel comes first along the normal leads).
pub fn measure_nodules(
    volume: &MaskVolume,
    options: &ComponentOptions,
) -> Result<Vec<NoduleMeasurement>, PostprocessError> {
    options.validate()?;
    let (rows, columns) = (volume.rows, volume.columns);
    let voxels = checked_voxel_count(rows, columns, volume.slices.len())?;
    check_length("mask", voxels, volume.mask.len())?;
    check_length("HU array", voxels, volume.hu.len())?;
    let stack = SortedStack::new(volume.slices)?;

    let plane_len = rows * columns;
    let mask_planes: Vec<&[u8]> = volume.mask.chunks_exact(plane_len).collect();
    let hu_planes: Vec<&[f32]> = volume.hu.chunks_exact(plane_len).collect();
    let sorted_masks: Vec<&[u8]> = stack.order.iter().map(|&i| mask_planes[i]).collect();
    let (labels, count) = label_planes(rows, columns, &sorted_masks)?;

    let mut totals = vec![ComponentTotals::default(); count as usize];
    for (k, (frame, label_plane)) in stack
        .frames
        .iter()
        .zip(labels.chunks_exact(plane_len))
        .enumerate()
    {
        let given = stack.order[k];
        for (offset, (&label, &hu)) in label_plane.iter().zip(hu_planes[given]).enumerate() {
            if label == 0 {
                continue;
            }
            let (row, column) = (offset / columns, offset % columns);
            if !hu.is_finite() {
                return Err(PostprocessError::NonFiniteHu {
                    slice: given,
                    row,
                    column,
                    value: hu,
                });
            }
            let component = &mut totals[label as usize - 1];
            component.add(k, frame, row, column, f64::from(hu));
            // The in-plane neighbours outside any component: the border, and how much of
            // it is lung.
            let neighbours = [
                (row > 0).then(|| offset - columns),
                (row + 1 < rows).then(|| offset + columns),
                (column > 0).then(|| offset - 1),
                (column + 1 < columns).then(|| offset + 1),
            ];
            for n in neighbours.into_iter().flatten() {
                if label_plane[n] == 0 {
                    component.border_samples += 1;
                    component.lung_border_samples +=
                        usize::from(hu_planes[given][n] < LUNG_HU_BELOW);
                }
            }
        }
    }

    // Index 0 is the background label, never kept.
    let mut keep = vec![false; count as usize + 1];
    // Per component: extent along the normal, and its through-plane ratio.
    let shapes: Vec<(f64, Option<f64>)> = totals
        .iter()
        .map(|c| {
            let extent: f64 = stack.frames[c.first_sorted_slice..=c.last_sorted_slice]
                .iter()
                .map(|frame| frame.thickness_mm)
                .sum();
            (extent, through_plane_ratio(c, extent, stack.frames.len()))
        })
        .collect();
    for (index, (component, &(_, ratio))) in totals.iter().zip(&shapes).enumerate() {
        keep[index + 1] = options.keeps(
            component.volume_mm3,
            component.lung_border_fraction(),
            ratio,
        );
    }
    let diameters = longest_axial_diameters(&stack, &labels, rows, columns, &keep, &totals);

    let mut nodules: Vec<NoduleMeasurement> = totals
        .iter()
        .zip(&diameters)
        .zip(&shapes)
        .zip(&keep[1..])
        .filter(|(_, kept)| **kept)
        .map(|(((component, &diameter), &(extent, ratio)), _)| {
            let ends = [
                stack.order[component.first_sorted_slice],
                stack.order[component.last_sorted_slice],
            ];
            NoduleMeasurement {
                center_mm: component
                    .weighted_position_mm
                    .map(|sum| sum / component.volume_mm3),
                longest_axial_diameter_mm: diameter,
                volume_mm3: component.volume_mm3,
                mean_hu: component.weighted_hu / component.volume_mm3,
                slice_range: [ends[0].min(ends[1]), ends[0].max(ends[1])],
                voxel_count: component.voxel_count,
                lung_border_fraction: component.lung_border_fraction(),
                through_plane_extent_mm: extent,
                through_plane_ratio: ratio,
            }
        })
        .collect();
    // Stable: equal volumes keep label order, so the output is deterministic.
    nodules.sort_by(|a, b| b.volume_mm3.total_cmp(&a.volume_mm3));
    tracing::debug!(
        components = count,
        nodules = nodules.len(),
        min_volume_mm3 = options.min_volume_mm3,
        "measured segmentation components"
    );
    Ok(nodules)
}

/// rows × columns × slices, refused when zero, overflowing or beyond [`MAX_VOXELS`].
fn checked_voxel_count(
    rows: usize,
    columns: usize,
    slices: usize,
) -> Result<usize, PostprocessError> {
    if rows == 0 || columns == 0 || slices == 0 {
        return Err(PostprocessError::EmptyVolume {
            rows,
            columns,
            slices,
        });
    }
    let too_large = PostprocessError::TooLarge {
        rows,
        columns,
        slices,
    };
    // In u64 so that the bound itself is representable on 32-bit targets too.
    let voxels = [rows, columns, slices]
        .into_iter()
        .try_fold(1u64, |product, n| {
            product.checked_mul(u64::try_from(n).ok()?)
        })
        .filter(|&v| v <= MAX_VOXELS)
        .ok_or_else(|| too_large.clone())?;
    usize::try_from(voxels).map_err(|_| too_large)
}

fn check_length(
    what: &'static str,
    expected: usize,
    actual: usize,
) -> Result<(), PostprocessError> {
    if expected == actual {
        Ok(())
    } else {
        Err(PostprocessError::LengthMismatch {
            what,
            expected,
            actual,
        })
    }
}

/// 26-connected labelling of planes that are adjacent in space in slice order. Every plane
/// holds rows × columns values (the callers cut them so).
fn label_planes(
    rows: usize,
    columns: usize,
    planes: &[&[u8]],
) -> Result<(Vec<u32>, u32), PostprocessError> {
    let plane_len = rows * columns;
    let slices = planes.len();
    let mut labels = vec![0u32; slices * plane_len];
    let mut count: u32 = 0;
    // Depth-first flood fill; the numbering depends only on the scan order of the seeds.
    let mut pending: Vec<[usize; 3]> = Vec::new();
    for (slice, plane) in planes.iter().enumerate() {
        for (offset, &value) in plane.iter().enumerate() {
            let index = slice * plane_len + offset;
            if value == 0 || labels[index] != 0 {
                continue;
            }
            count = count
                .checked_add(1)
                .ok_or(PostprocessError::TooManyComponents)?;
            labels[index] = count;
            pending.push([slice, offset / columns, offset % columns]);
            while let Some([s, r, c]) = pending.pop() {
                let below = s.saturating_sub(1);
                let above = (s + 1).min(slices - 1);
                for (ns, neighbour_plane) in (below..).zip(&planes[below..=above]) {
                    for nr in r.saturating_sub(1)..=(r + 1).min(rows - 1) {
                        for nc in c.saturating_sub(1)..=(c + 1).min(columns - 1) {
                            let in_plane = nr * columns + nc;
                            let neighbour = ns * plane_len + in_plane;
                            if neighbour_plane[in_plane] != 0 && labels[neighbour] == 0 {
                                labels[neighbour] = count;
                                pending.push([ns, nr, nc]);
                            }
                        }
                    }
                }
            }
        }
    }
    Ok((labels, count))
}

/// The slices sorted along their normal, with what measuring needs of each.
struct SortedStack {
    /// `order[k]`: index, as given, of the k-th slice along the normal.
    order: Vec<usize>,
    /// Per sorted slice: where its pixels lie and how large its voxels are.
    frames: Vec<SliceFrame>,
}

struct SliceFrame {
    origin_mm: [f64; 3],
    /// Displacement of one column step (along the row direction), mm.
    column_step_mm: [f64; 3],
    /// Displacement of one row step (along the column direction), mm.
    row_step_mm: [f64; 3],
    /// PixelSpacing: row spacing, column spacing (mm).
    pixel_spacing_mm: [f64; 2],
    /// Along the normal, half the distance to each neighbour (see the module docs), mm.
    thickness_mm: f64,
    voxel_volume_mm3: f64,
}

impl SortedStack {
    fn new(slices: &[SliceGeometry]) -> Result<Self, PostprocessError> {
        for (index, slice) in slices.iter().enumerate() {
            validate_slice(index, slice)?;
        }
        let Some(first) = slices.first() else {
            return Err(PostprocessError::EmptyVolume {
                rows: 0,
                columns: 0,
                slices: 0,
            });
        };
        if slices.len() < 2 {
            return Err(PostprocessError::SingleSlice);
        }
        let reference_row = normalize(first.row_direction);
        let reference_column = normalize(first.column_direction);
        for (index, slice) in slices.iter().enumerate().skip(1) {
            let same_orientation = distance(normalize(slice.row_direction), reference_row)
                <= ORIENTATION_TOLERANCE
                && distance(normalize(slice.column_direction), reference_column)
                    <= ORIENTATION_TOLERANCE;
            let same_spacing = (0..2).all(|axis| {
                (slice.pixel_spacing_mm[axis] - first.pixel_spacing_mm[axis]).abs()
                    <= ORIENTATION_TOLERANCE * first.pixel_spacing_mm[axis]
            });
            if !(same_orientation && same_spacing) {
                return Err(PostprocessError::MixedGeometry { index });
            }
        }
        let normal = normalize(cross(reference_row, reference_column));
        let along: Vec<f64> = slices.iter().map(|s| dot(s.position_mm, normal)).collect();
        let mut order: Vec<usize> = (0..slices.len()).collect();
        // Ties broken by given index so that the duplicate report is deterministic.
        order.sort_by(|&a, &b| along[a].total_cmp(&along[b]).then(a.cmp(&b)));
        for pair in order.windows(2) {
            if along[pair[1]] - along[pair[0]] < MIN_SLICE_GAP_MM {
                return Err(PostprocessError::DuplicatePosition {
                    first: pair[0].min(pair[1]),
                    second: pair[0].max(pair[1]),
                    position_mm: along[pair[0]],
                });
            }
        }
        let sorted: Vec<f64> = order.iter().map(|&i| along[i]).collect();
        let last = sorted.len() - 1;
        let frames = order
            .iter()
            .enumerate()
            .map(|(k, &given)| {
                let slice = &slices[given];
                let below = if k > 0 {
                    sorted[k] - sorted[k - 1]
                } else {
                    sorted[1] - sorted[0]
                };
                let above = if k < last {
                    sorted[k + 1] - sorted[k]
                } else {
                    sorted[last] - sorted[last - 1]
                };
                let thickness_mm = (below + above) / 2.0;
                let [row_spacing, column_spacing] = slice.pixel_spacing_mm;
                SliceFrame {
                    origin_mm: slice.position_mm,
                    column_step_mm: normalize(slice.row_direction).map(|v| v * column_spacing),
                    row_step_mm: normalize(slice.column_direction).map(|v| v * row_spacing),
                    pixel_spacing_mm: slice.pixel_spacing_mm,
                    thickness_mm,
                    voxel_volume_mm3: row_spacing * column_spacing * thickness_mm,
                }
            })
            .collect();
        Ok(SortedStack { order, frames })
    }
}

fn validate_slice(index: usize, slice: &SliceGeometry) -> Result<(), PostprocessError> {
    let in_range = |values: &[f64]| {
        values
            .iter()
            .all(|v| v.is_finite() && v.abs() <= MAX_COORDINATE_MM)
    };
    let fields: [(&'static str, &[f64]); 4] = [
        ("ImagePositionPatient", &slice.position_mm),
        (
            "ImageOrientationPatient (row direction)",
            &slice.row_direction,
        ),
        (
            "ImageOrientationPatient (column direction)",
            &slice.column_direction,
        ),
        ("PixelSpacing", &slice.pixel_spacing_mm),
    ];
    for (field, values) in fields {
        if !in_range(values) {
            return Err(PostprocessError::GeometryOutOfRange { index, field });
        }
    }
    if slice.pixel_spacing_mm.iter().any(|&s| s <= 0.0) {
        return Err(PostprocessError::PixelSpacing {
            index,
            spacing_mm: slice.pixel_spacing_mm,
        });
    }
    let (row, column) = (slice.row_direction, slice.column_direction);
    let orthonormal = (norm(row) - 1.0).abs() <= ORIENTATION_TOLERANCE
        && (norm(column) - 1.0).abs() <= ORIENTATION_TOLERANCE
        && dot(row, column).abs() <= ORIENTATION_TOLERANCE;
    if !orthonormal {
        return Err(PostprocessError::Orientation { index, row, column });
    }
    Ok(())
}

/// Running sums of one component, filled in one pass over the sorted stack.
#[derive(Debug, Clone, Default)]
struct ComponentTotals {
    voxel_count: usize,
    volume_mm3: f64,
    weighted_position_mm: [f64; 3],
    weighted_hu: f64,
    first_sorted_slice: usize,
    last_sorted_slice: usize,
    border_samples: usize,
    lung_border_samples: usize,
}

impl ComponentTotals {
    fn lung_border_fraction(&self) -> f64 {
        if self.border_samples == 0 {
            0.0
        } else {
            self.lung_border_samples as f64 / self.border_samples as f64
        }
    }

    fn add(&mut self, sorted_slice: usize, frame: &SliceFrame, row: usize, column: usize, hu: f64) {
        if self.voxel_count == 0 {
            self.first_sorted_slice = sorted_slice;
        }
        // The pass runs in sorted order, so the latest slice seen is the last one.
        self.last_sorted_slice = sorted_slice;
        self.voxel_count += 1;
        let weight = frame.voxel_volume_mm3;
        self.volume_mm3 += weight;
        let (row, column) = (row as f64, column as f64);
        let position: [f64; 3] = std::array::from_fn(|axis| {
            frame.origin_mm[axis]
                + column * frame.column_step_mm[axis]
                + row * frame.row_step_mm[axis]
        });
        for (sum, coordinate) in self.weighted_position_mm.iter_mut().zip(position) {
            *sum += weight * coordinate;
        }
        self.weighted_hu += weight * hu;
    }
}

/// Longest axial diameter of every component (index = label − 1), computed for the kept
/// ones only (others stay 0).
fn longest_axial_diameters(
    stack: &SortedStack,
    labels: &[u32],
    rows: usize,
    columns: usize,
    keep: &[bool],
    totals: &[ComponentTotals],
) -> Vec<f64> {
    let mut diameters = vec![0.0f64; totals.len()];
    let kept = totals.iter().zip(&keep[1..]).filter(|(_, kept)| **kept);
    let Some(first) = kept.clone().map(|(c, _)| c.first_sorted_slice).min() else {
        return diameters;
    };
    let last = kept
        .map(|(c, _)| c.last_sorted_slice)
        .max()
        .unwrap_or(first);
    let plane_len = rows * columns;
    // Each row's runs contribute their two end pixels: the hull of a slice's cross-section,
    // where the farthest pair lies, is spanned by them, and they are few.
    let mut run_ends: Vec<(u32, [i64; 2])> = Vec::new();
    for (frame, plane) in stack.frames[first..=last]
        .iter()
        .zip(labels[first * plane_len..(last + 1) * plane_len].chunks_exact(plane_len))
    {
        run_ends.clear();
        for (row, line) in plane.chunks_exact(columns).enumerate() {
            let mut column = 0;
            while column < columns {
                let label = line[column];
                let start = column;
                while column + 1 < columns && line[column + 1] == label {
                    column += 1;
                }
                if label != 0 && keep[label as usize] {
                    // Coordinates below 2^34 (MAX_VOXELS): exact in i64, and the hull's
                    // cross products (column span × row span ≤ rows × columns) cannot overflow.
                    run_ends.push((label, [start as i64, row as i64]));
                    run_ends.push((label, [column as i64, row as i64]));
                }
                column += 1;
            }
        }
        run_ends.sort_unstable_by_key(|&(label, _)| label);
        for group in run_ends.chunk_by(|a, b| a.0 == b.0) {
            let label = group[0].0;
            let hull = convex_hull(group.iter().map(|&(_, point)| point).collect());
            let diameter = longest_chord_mm(&hull, frame.pixel_spacing_mm);
            let slot = &mut diameters[label as usize - 1];
            *slot = slot.max(diameter);
        }
    }
    diameters
}

/// Convex hull of (column, row) points, counter-clockwise, without collinear points
/// (Andrew's monotone chain).
fn convex_hull(mut points: Vec<[i64; 2]>) -> Vec<[i64; 2]> {
    points.sort_unstable();
    points.dedup();
    if points.len() <= 2 {
        return points;
    }
    let turn = |o: [i64; 2], a: [i64; 2], b: [i64; 2]| {
        (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
    };
    let mut hull: Vec<[i64; 2]> = Vec::with_capacity(points.len() + 1);
    for &point in &points {
        while hull.len() >= 2 && turn(hull[hull.len() - 2], hull[hull.len() - 1], point) <= 0 {
            hull.pop();
        }
        hull.push(point);
    }
    let lower_len = hull.len() + 1;
    for &point in points.iter().rev().skip(1) {
        while hull.len() >= lower_len
            && turn(hull[hull.len() - 2], hull[hull.len() - 1], point) <= 0
        {
            hull.pop();
        }
        hull.push(point);
    }
    // The chain ends where it started.
    hull.pop();
    hull
}

/// Longest distance between the centres of two hull pixels plus one pixel along that line
/// (mm); a lone pixel measures its longer side.
fn longest_chord_mm(hull: &[[i64; 2]], pixel_spacing_mm: [f64; 2]) -> f64 {
    let [row_spacing, column_spacing] = pixel_spacing_mm;
    let mut centre_distance = 0.0f64;
    let mut one_pixel = row_spacing.max(column_spacing);
    for (i, a) in hull.iter().enumerate() {
        for b in &hull[i + 1..] {
            let columns_apart = (b[0] - a[0]) as f64;
            let rows_apart = (b[1] - a[1]) as f64;
            let mm = (columns_apart * column_spacing).hypot(rows_apart * row_spacing);
            // The hull's points are distinct, so the pixel distance is at least 1.
            let pixel_length_mm = mm / columns_apart.hypot(rows_apart);
            if mm > centre_distance || (mm == centre_distance && pixel_length_mm > one_pixel) {
                centre_distance = mm;
                one_pixel = pixel_length_mm;
            }
        }
    }
    centre_distance + one_pixel
}

/// The dot product of two patient-space vectors.
pub fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// The cross product of two patient-space vectors (a slice's normal from its row and column
/// directions).
pub fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

/// Callers validated `a` as (nearly) unit length, so the division is safe.
fn normalize(a: [f64; 3]) -> [f64; 3] {
    let length = norm(a);
    a.map(|v| v / length)
}

fn distance(a: [f64; 3], b: [f64; 3]) -> f64 {
    norm([a[0] - b[0], a[1] - b[1], a[2] - b[2]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_samples::ct::{CtPhantom, CtSpec, MAX_NODULES};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn components_outside_the_lung_are_dropped_by_their_border() {
        // Two 2×2×2 blobs: one in lung (background −850 HU), one in soft tissue at 40 HU,
        // its border half lung half tissue on one side.
        let mut stack = Stack::axial(12, 12, &[0.0, 1.0], [1.0, 1.0]);
        for slice in 0..2 {
            for (r, c) in [(2, 2), (2, 3), (3, 2), (3, 3)] {
                stack.set(slice, r, c, 30.0);
            }
        }
        for slice in 0..2 {
            for row in 6..12 {
                for column in 6..12 {
                    let index = (slice * 12 + row) * 12 + column;
                    stack.hu[index] = 40.0;
                }
            }
            for (r, c) in [(8, 8), (8, 9), (9, 8), (9, 9)] {
                stack.set(slice, r, c, 40.0);
            }
        }
        let all = measure_nodules(&stack.volume(), &ComponentOptions::default()).unwrap();
        assert_eq!(all.len(), 2);
        let mut fractions: Vec<f64> = all.iter().map(|n| n.lung_border_fraction).collect();
        fractions.sort_by(f64::total_cmp);
        assert_eq!(fractions, [0.0, 1.0]);
        let options = ComponentOptions {
            min_lung_border_fraction: 0.4,
            ..ComponentOptions::default()
        };
        let kept = measure_nodules(&stack.volume(), &options).unwrap();
        assert_eq!(kept.len(), 1);
        assert!(
            kept[0].center_mm[0] < -35.0,
            "the lung blob stays: {kept:?}"
        );
        for bad in [-0.1, 1.5, f64::NAN] {
            let options = ComponentOptions {
                min_lung_border_fraction: bad,
                ..ComponentOptions::default()
            };
            assert!(matches!(
                measure_nodules(&stack.volume(), &options),
                Err(PostprocessError::MinLungBorder(_))
            ));
        }
    }

    #[test]
    fn flat_components_are_told_from_round_ones_by_their_through_plane_ratio() {
        // 1 mm voxels, 16 slices. A ball of radius 4 mm, and a disc of radius 5 mm one
        // slice thick: about as wide as the ball, but flat.
        let z: Vec<f64> = (0..16).map(f64::from).collect();
        let mut stack = Stack::axial(32, 32, &z, [1.0, 1.0]);
        for slice in 0..16 {
            for row in 0..32 {
                for column in 0..32 {
                    let (dz, dr, dc) = (slice as f64 - 8.0, row as f64 - 8.0, column as f64 - 8.0);
                    if dz * dz + dr * dr + dc * dc <= 16.0 {
                        stack.set(slice, row, column, 30.0);
                    }
                    let (dr, dc) = (row as f64 - 22.0, column as f64 - 22.0);
                    if slice == 3 && dr * dr + dc * dc <= 25.0 {
                        stack.set(slice, row, column, 30.0);
                    }
                }
            }
        }
        let all = measure_nodules(&stack.volume(), &ComponentOptions::default()).unwrap();
        assert_eq!(all.len(), 2, "{all:?}");
        let (ball, disc) = if all[0].slice_range[0] == all[0].slice_range[1] {
            (&all[1], &all[0])
        } else {
            (&all[0], &all[1])
        };
        // The ball spans slices 4..=12: nine 1 mm slices.
        assert_eq!(ball.slice_range, [4, 12]);
        assert!(
            (ball.through_plane_extent_mm - 9.0).abs() < 1e-9,
            "{ball:?}"
        );
        assert!(
            ball.through_plane_ratio
                .is_some_and(|r| (0.9..1.3).contains(&r)),
            "{ball:?}"
        );
        assert!(
            (disc.through_plane_extent_mm - 1.0).abs() < 1e-9,
            "{disc:?}"
        );
        assert!(
            disc.through_plane_ratio.is_some_and(|r| r < 0.25),
            "{disc:?}"
        );

        let options = ComponentOptions {
            min_through_plane_ratio: 0.5,
            ..ComponentOptions::default()
        };
        let kept = measure_nodules(&stack.volume(), &options).unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].slice_range, [4, 12], "the ball stays: {kept:?}");

        // The same disc on the first slice: the scan may cut what lies beyond, so its shape
        // is unknown and the rule keeps it.
        let mut cut = stack.clone();
        for row in 0..32 {
            for column in 0..32 {
                let (dr, dc) = (row as f64 - 22.0, column as f64 - 22.0);
                if dr * dr + dc * dc <= 25.0 {
                    cut.mask[(3 * 32 + row) * 32 + column] = 0;
                    cut.set(0, row, column, 30.0);
                }
            }
        }
        let kept = measure_nodules(&cut.volume(), &options).unwrap();
        assert_eq!(kept.len(), 2, "{kept:?}");
        assert!(
            kept.iter()
                .any(|n| n.slice_range == [0, 0] && n.through_plane_ratio.is_none()),
            "{kept:?}"
        );
        for bad in [-0.1, 2.5, f64::NAN] {
            let options = ComponentOptions {
                min_through_plane_ratio: bad,
                ..ComponentOptions::default()
            };
            assert!(matches!(
                measure_nodules(&stack.volume(), &options),
                Err(PostprocessError::MinThroughPlaneRatio(_))
            ));
        }
    }

    /// A hand-built stack: axial slices at the given z, one pixel spacing for all.
    #[derive(Clone)]
    struct Stack {
        rows: usize,
        columns: usize,
        slices: Vec<SliceGeometry>,
        mask: Vec<u8>,
        hu: Vec<f32>,
    }

    impl Stack {
        fn axial(rows: usize, columns: usize, z_mm: &[f64], pixel_spacing_mm: [f64; 2]) -> Self {
            let slices = z_mm
                .iter()
                .map(|&z| SliceGeometry {
                    position_mm: [-40.0, 25.0, z],
                    row_direction: [1.0, 0.0, 0.0],
                    column_direction: [0.0, 1.0, 0.0],
                    pixel_spacing_mm,
                })
                .collect();
            let voxels = rows * columns * z_mm.len();
            Stack {
                rows,
                columns,
                slices,
                mask: vec![0; voxels],
                // Lung-like background, so a wrong voxel would show in the mean HU.
                hu: vec![-850.0; voxels],
            }
        }

        fn set(&mut self, slice: usize, row: usize, column: usize, hu: f32) {
            let index = (slice * self.rows + row) * self.columns + column;
            self.mask[index] = 1;
            self.hu[index] = hu;
        }

        fn volume(&self) -> MaskVolume<'_> {
            MaskVolume {
                rows: self.rows,
                columns: self.columns,
                slices: &self.slices,
                mask: &self.mask,
                hu: &self.hu,
            }
        }

        /// The same stack with slice `i` of the result taken from slice `order[i]` of this one.
        fn reordered(&self, order: &[usize]) -> Self {
            fn gather<T: Copy>(values: &[T], order: &[usize], plane: usize) -> Vec<T> {
                order
                    .iter()
                    .flat_map(|&i| values[i * plane..(i + 1) * plane].iter().copied())
                    .collect()
            }
            let plane = self.rows * self.columns;
            Stack {
                rows: self.rows,
                columns: self.columns,
                slices: order.iter().map(|&i| self.slices[i]).collect(),
                mask: gather(&self.mask, order, plane),
                hu: gather(&self.hu, order, plane),
            }
        }
    }

    fn measure(stack: &Stack, min_volume_mm3: f64) -> Vec<NoduleMeasurement> {
        measure_nodules(
            &stack.volume(),
            &ComponentOptions {
                min_volume_mm3,
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn assert_close(actual: f64, expected: f64, what: &str) {
        assert!(
            (actual - expected).abs() <= 1e-9 * expected.abs().max(1.0),
            "{what}: {actual} vs {expected}"
        );
    }

    #[test]
    fn separate_blobs_are_separate_components_numbered_in_storage_order() {
        let (rows, columns, slices) = (6, 7, 4);
        let mut mask = vec![0u8; rows * columns * slices];
        let at = |s: usize, r: usize, c: usize| (s * rows + r) * columns + c;
        // Blob B first in storage order (slice 0), blob A starts on slice 1 but at row 0.
        for (s, r, c) in [(0, 4, 5), (0, 4, 6), (1, 5, 6)] {
            mask[at(s, r, c)] = 1;
        }
        for (s, r, c) in [(1, 0, 0), (1, 0, 1), (2, 1, 1), (3, 1, 1)] {
            mask[at(s, r, c)] = 255; // any nonzero value is foreground
        }
        let (labels, count) = label_components_3d(rows, columns, slices, &mask).unwrap();
        assert_eq!(count, 2);
        assert_eq!(labels.len(), mask.len());
        for (s, r, c) in [(0, 4, 5), (0, 4, 6), (1, 5, 6)] {
            assert_eq!(labels[at(s, r, c)], 1);
        }
        for (s, r, c) in [(1, 0, 0), (1, 0, 1), (2, 1, 1), (3, 1, 1)] {
            assert_eq!(labels[at(s, r, c)], 2);
        }
        let foreground = mask.iter().filter(|&&m| m != 0).count();
        assert_eq!(labels.iter().filter(|&&l| l != 0).count(), foreground);
    }

    #[test]
    fn voxels_touching_only_at_a_corner_join_under_26_connectivity() {
        let (rows, columns, slices) = (5, 5, 5);
        let at = |s: usize, r: usize, c: usize| (s * rows + r) * columns + c;
        let components = |voxels: &[(usize, usize, usize)]| {
            let mut mask = vec![0u8; rows * columns * slices];
            for &(s, r, c) in voxels {
                mask[at(s, r, c)] = 1;
            }
            label_components_3d(rows, columns, slices, &mask).unwrap().1
        };
        // Corner (vertex) contact across slices, edge contact, face contact.
        assert_eq!(components(&[(0, 0, 0), (1, 1, 1)]), 1);
        assert_eq!(components(&[(2, 3, 1), (1, 4, 0)]), 1);
        assert_eq!(components(&[(0, 0, 4), (1, 1, 4)]), 1);
        assert_eq!(components(&[(0, 2, 2), (1, 2, 2)]), 1);
        // A diagonal chain through the whole cube is one component.
        assert_eq!(
            components(&[(0, 0, 0), (1, 1, 1), (2, 2, 2), (3, 3, 3), (4, 4, 4)]),
            1
        );
        // One empty voxel between them separates two voxels.
        assert_eq!(components(&[(0, 0, 0), (2, 2, 2)]), 2);
        assert_eq!(components(&[(0, 0, 0), (0, 0, 2)]), 2);
    }

    #[test]
    fn empty_mask_has_no_nodules() {
        let stack = Stack::axial(8, 8, &[0.0, 2.0, 4.0], [0.7, 0.7]);
        assert!(measure(&stack, 0.0).is_empty());
        let (labels, count) = label_components_3d(8, 8, 3, &stack.mask).unwrap();
        assert_eq!(count, 0);
        assert!(labels.iter().all(|&l| l == 0));
    }

    #[test]
    fn a_cube_is_measured_exactly() {
        // 3×3 pixels × 3 slices, spacing 0.5 mm in-plane, 2 mm between slices.
        let mut stack = Stack::axial(10, 10, &[100.0, 102.0, 104.0, 106.0, 108.0], [0.5, 0.5]);
        let mut hu_sum = 0.0;
        for s in 1..=3 {
            for r in 4..=6 {
                for c in 2..=4 {
                    let hu = (s * 10 + r + c) as f32;
                    hu_sum += f64::from(hu);
                    stack.set(s, r, c, hu);
                }
            }
        }
        let nodules = measure(&stack, 0.0);
        assert_eq!(nodules.len(), 1);
        let n = &nodules[0];
        assert_eq!(n.voxel_count, 27);
        assert_eq!(n.slice_range, [1, 3]);
        assert_close(n.volume_mm3, 27.0 * 0.5 * 0.5 * 2.0, "volume");
        assert_close(n.mean_hu, hu_sum / 27.0, "mean HU");
        // Centre pixel (column 3, row 5) of slice 2.
        assert_close(n.center_mm[0], -40.0 + 3.0 * 0.5, "x");
        assert_close(n.center_mm[1], 25.0 + 5.0 * 0.5, "y");
        assert_close(n.center_mm[2], 104.0, "z");
        // Opposite corners' centres are 2√2 pixels apart; one more pixel along the diagonal.
        assert_close(
            n.longest_axial_diameter_mm,
            (2.0 * 2f64.sqrt() + 1.0) * 0.5,
            "diameter",
        );
    }

    #[test]
    fn diameter_is_centre_distance_plus_one_pixel_along_the_line() {
        // Rows 1.0 mm apart, columns 0.4 mm apart: anisotropic on purpose.
        let mut stack = Stack::axial(12, 12, &[0.0, 3.0, 6.0, 9.0], [1.0, 0.4]);
        // Slice 0: a lone pixel measures its longer side.
        stack.set(0, 0, 0, 0.0);
        // Slice 2: a U of 10 pixels, 6 columns wide and 3 rows high.
        for c in 4..=9 {
            stack.set(2, 10, c, 0.0);
        }
        for r in 8..=9 {
            stack.set(2, r, 4, 0.0);
            stack.set(2, r, 9, 0.0);
        }
        let nodules = measure(&stack, 0.0);
        assert_eq!(nodules.len(), 2);
        let lone = nodules.iter().find(|n| n.voxel_count == 1).unwrap();
        assert_close(lone.longest_axial_diameter_mm, 1.0, "lone pixel");
        let shape = nodules.iter().find(|n| n.voxel_count == 10).unwrap();
        // Farthest centres: (column 4, row 8)–(column 9, row 10) vs (4,10)–(9,8): both
        // 5 columns and 2 rows apart.
        let (dc, dr) = (5.0, 2.0);
        let mm = f64::hypot(dc * 0.4, dr * 1.0);
        let expected = mm + mm / f64::hypot(dc, dr);
        assert_close(shape.longest_axial_diameter_mm, expected, "U shape");
    }

    #[test]
    fn specks_under_the_minimum_volume_are_dropped_and_nodules_come_largest_first() {
        let mut stack = Stack::axial(16, 16, &[0.0, 1.0, 2.0, 3.0], [1.0, 1.0]);
        stack.set(0, 0, 0, 50.0); // 1 mm³ speck
        for s in 0..2 {
            for r in 10..12 {
                stack.set(s, r, 2, 20.0); // 4 mm³
            }
        }
        for s in 1..4 {
            for r in 3..6 {
                for c in 8..11 {
                    stack.set(s, r, c, 30.0); // 27 mm³
                }
            }
        }
        let all = measure(&stack, 0.0);
        let volumes: Vec<f64> = all.iter().map(|n| n.volume_mm3).collect();
        assert_eq!(volumes, [27.0, 4.0, 1.0]);
        let kept = measure(&stack, 2.0);
        assert_eq!(kept, all[..2].to_vec());
        assert_eq!(measure(&stack, 4.0).len(), 2, "the minimum itself is kept");
        assert!(measure(&stack, 100.0).is_empty());
    }

    #[test]
    fn slice_order_does_not_change_the_measurements() {
        // Uneven spacing, so a mix-up of thicknesses between slices would show.
        let z = [-10.0, -8.0, -5.0, -4.0, 0.0, 1.0];
        let mut stack = Stack::axial(9, 9, &z, [0.8, 0.8]);
        for s in 1..=4 {
            for r in 2..=3 + s % 2 {
                for c in 1..=2 + s {
                    stack.set(s, r, c, (s * 7 + r * 3 + c) as f32);
                }
            }
        }
        stack.set(5, 8, 8, 12.0);
        stack.set(0, 7, 0, -30.0);
        let given = measure(&stack, 0.0);
        assert_eq!(given.len(), 3);
        let n = z.len();

        let reversed_order: Vec<usize> = (0..n).rev().collect();
        let shuffled_order = [3, 0, 5, 1, 4, 2];
        for order in [&reversed_order[..], &shuffled_order[..]] {
            let mut measured = measure(&stack.reordered(order), 0.0);
            // Map the reported indices back to the original order to compare.
            for m in &mut measured {
                let ends = m.slice_range.map(|i| order[i]);
                m.slice_range = [ends[0].min(ends[1]), ends[0].max(ends[1])];
            }
            assert_eq!(measured, given, "order {order:?}");
        }
        // In reversed order the range is still smaller index first.
        let reversed = measure(&stack.reordered(&reversed_order), 0.0);
        assert_eq!(reversed[0].slice_range, [n - 1 - 4, n - 1 - 1]);
    }

    #[test]
    fn slice_thickness_comes_from_the_neighbours() {
        // Centres 0, 1, 3, 6 mm: thicknesses 1 (end: as far as to its neighbour), 1.5, 2.5, 3.
        let mut stack = Stack::axial(8, 8, &[3.0, 0.0, 6.0, 1.0], [0.5, 0.25]);
        // One isolated voxel per slice, far enough apart not to touch.
        for (given, column) in [(0, 0), (1, 2), (2, 4), (3, 6)] {
            stack.set(given, 0, column, 0.0);
        }
        let nodules = measure(&stack, 0.0);
        let mut by_slice: Vec<(usize, f64)> = nodules
            .iter()
            .map(|n| {
                assert_eq!(n.slice_range[0], n.slice_range[1]);
                (n.slice_range[0], n.volume_mm3)
            })
            .collect();
        by_slice.sort_by_key(|&(slice, _)| slice);
        let pixel_area = 0.5 * 0.25;
        let expected = [(0, 2.5), (1, 1.0), (2, 3.0), (3, 1.5)].map(|(s, t)| (s, t * pixel_area));
        assert_eq!(by_slice.len(), 4);
        for ((slice, volume), (expected_slice, expected_volume)) in by_slice.iter().zip(expected) {
            assert_eq!(*slice, expected_slice);
            assert_close(*volume, expected_volume, "voxel volume");
        }
    }

    #[test]
    fn pixels_map_to_patient_coordinates_as_dicom_defines() {
        // Coronal slices: rows run to the patient's left (+x), columns down to the feet
        // (−z); the normal, row × column, is +y, so the slices stack along y.
        let geometry = |y: f64| SliceGeometry {
            position_mm: [5.0, y, 30.0],
            row_direction: [1.0, 0.0, 0.0],
            column_direction: [0.0, 0.0, -1.0],
            pixel_spacing_mm: [2.0, 0.5], // rows 2 mm apart, columns 0.5 mm apart
        };
        let slices = [geometry(-3.0), geometry(0.0)];
        let (rows, columns) = (4, 6);
        let mut mask = vec![0u8; rows * columns * 2];
        let mut hu = vec![0f32; mask.len()];
        // Column 5, row 3 of the second slice given.
        let index = (rows + 3) * columns + 5;
        mask[index] = 1;
        hu[index] = -700.0;
        let volume = MaskVolume {
            rows,
            columns,
            slices: &slices,
            mask: &mask,
            hu: &hu,
        };
        let nodules = measure_nodules(&volume, &ComponentOptions::default()).unwrap();
        assert_eq!(nodules.len(), 1);
        let n = &nodules[0];
        assert_close(
            n.center_mm[0],
            5.0 + 5.0 * 0.5,
            "x: column × column spacing",
        );
        assert_close(n.center_mm[1], 0.0, "y: the slice position");
        assert_close(
            n.center_mm[2],
            30.0 - 3.0 * 2.0,
            "z: row × row spacing, downwards",
        );
        assert_close(n.volume_mm3, 2.0 * 0.5 * 3.0, "volume");
        assert_close(
            n.longest_axial_diameter_mm,
            2.0,
            "lone pixel: its longer side",
        );
        assert_eq!(n.slice_range, [1, 1]);
        assert_close(n.mean_hu, -700.0, "mean HU");
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let base = Stack::axial(4, 4, &[0.0, 1.0, 2.0], [0.7, 0.7]);
        let options = ComponentOptions::default();
        let run = |stack: &Stack| measure_nodules(&stack.volume(), &options);

        let mut short_mask = base.clone();
        short_mask.mask.pop();
        assert!(matches!(
            run(&short_mask),
            Err(PostprocessError::LengthMismatch {
                what: "mask",
                expected: 48,
                actual: 47
            })
        ));
        let mut long_hu = base.clone();
        long_hu.hu.push(0.0);
        assert!(matches!(
            run(&long_hu),
            Err(PostprocessError::LengthMismatch {
                what: "HU array",
                ..
            })
        ));
        let mut no_rows = base.clone();
        no_rows.rows = 0;
        assert!(matches!(
            run(&no_rows),
            Err(PostprocessError::EmptyVolume { .. })
        ));
        let mut no_slices = base.clone();
        no_slices.slices.clear();
        assert!(matches!(
            run(&no_slices),
            Err(PostprocessError::EmptyVolume { .. })
        ));
        let one_slice = Stack::axial(4, 4, &[0.0], [0.7, 0.7]);
        assert_eq!(run(&one_slice), Err(PostprocessError::SingleSlice));

        // rows × columns overflows before anything is allocated or indexed.
        let mut overflowing = base.clone();
        overflowing.rows = usize::MAX / 2;
        assert!(matches!(
            run(&overflowing),
            Err(PostprocessError::TooLarge { .. })
        ));
        let mut too_large = base.clone();
        (too_large.rows, too_large.columns) = (4096, 4096);
        too_large.slices = (0..2049)
            .map(|i| base.slices[0].with_z(f64::from(i)))
            .collect();
        assert!(matches!(
            run(&too_large),
            Err(PostprocessError::TooLarge { .. })
        ));
        assert!(matches!(
            label_components_3d(usize::MAX, 2, 2, &[]),
            Err(PostprocessError::TooLarge { .. })
        ));
        assert!(matches!(
            label_components_3d(2, 2, 2, &[0; 7]),
            Err(PostprocessError::LengthMismatch { .. })
        ));
        assert!(matches!(
            label_components_3d(2, 2, 0, &[]),
            Err(PostprocessError::EmptyVolume { .. })
        ));

        let with_slice = |edit: &dyn Fn(&mut SliceGeometry)| {
            let mut stack = base.clone();
            edit(&mut stack.slices[1]);
            run(&stack)
        };
        assert!(matches!(
            with_slice(&|s| s.pixel_spacing_mm[0] = f64::NAN),
            Err(PostprocessError::GeometryOutOfRange {
                index: 1,
                field: "PixelSpacing"
            })
        ));
        assert!(matches!(
            with_slice(&|s| s.pixel_spacing_mm[1] = f64::INFINITY),
            Err(PostprocessError::GeometryOutOfRange { index: 1, .. })
        ));
        assert!(matches!(
            with_slice(&|s| s.position_mm[2] = f64::NEG_INFINITY),
            Err(PostprocessError::GeometryOutOfRange { index: 1, .. })
        ));
        assert!(matches!(
            with_slice(&|s| s.position_mm[0] = 1e300),
            Err(PostprocessError::GeometryOutOfRange { index: 1, .. })
        ));
        assert!(matches!(
            with_slice(&|s| s.pixel_spacing_mm[0] = 0.0),
            Err(PostprocessError::PixelSpacing { index: 1, .. })
        ));
        assert!(matches!(
            with_slice(&|s| s.pixel_spacing_mm[1] = -0.7),
            Err(PostprocessError::PixelSpacing { index: 1, .. })
        ));
        assert!(matches!(
            with_slice(&|s| s.row_direction = [0.0, 0.0, 0.0]),
            Err(PostprocessError::Orientation { index: 1, .. })
        ));
        assert!(matches!(
            with_slice(&|s| s.column_direction = [0.6, 0.8, 0.0]),
            Err(PostprocessError::Orientation { index: 1, .. })
        ));
        assert!(matches!(
            with_slice(
                &|s| (s.row_direction, s.column_direction) = ([0.0, 1.0, 0.0], [1.0, 0.0, 0.0])
            ),
            Err(PostprocessError::MixedGeometry { index: 1 })
        ));
        assert!(matches!(
            with_slice(&|s| s.pixel_spacing_mm = [0.7, 0.8]),
            Err(PostprocessError::MixedGeometry { index: 1 })
        ));
        assert_eq!(
            with_slice(&|s| s.position_mm = [3.0, -2.0, 2.0]),
            Err(PostprocessError::DuplicatePosition {
                first: 1,
                second: 2,
                position_mm: 2.0
            })
        );
        // Orientation written with a few decimals is accepted.
        assert!(with_slice(&|s| s.row_direction = [0.99999, 0.0001, 0.0]).is_ok());

        for min_volume_mm3 in [f64::NAN, -1.0, f64::INFINITY] {
            assert!(matches!(
                measure_nodules(
                    &base.volume(),
                    &ComponentOptions {
                        min_volume_mm3,
                        ..Default::default()
                    }
                ),
                Err(PostprocessError::MinVolume(_))
            ));
        }
        let mut nan_hu = base.clone();
        nan_hu.set(2, 1, 3, f32::NAN);
        assert!(matches!(
            run(&nan_hu),
            Err(PostprocessError::NonFiniteHu {
                slice: 2,
                row: 1,
                column: 3,
                ..
            })
        ));
        // Non-finite HU outside the mask is never read.
        let mut nan_background = base.clone();
        nan_background.hu.fill(f32::NAN);
        assert_eq!(run(&nan_background), Ok(Vec::new()));
    }

    impl SliceGeometry {
        fn with_z(self, z: f64) -> Self {
            SliceGeometry {
                position_mm: [self.position_mm[0], self.position_mm[1], z],
                ..self
            }
        }
    }

    /// The phantom's nodule masks stacked as the segmentation would deliver them.
    fn phantom_stack(phantom: &CtPhantom) -> Stack {
        let g = &phantom.geometry;
        let (rows, columns) = (g.rows as usize, g.columns as usize);
        let mut stack = Stack {
            rows,
            columns,
            slices: Vec::with_capacity(g.slices),
            mask: Vec::with_capacity(rows * columns * g.slices),
            hu: Vec::with_capacity(rows * columns * g.slices),
        };
        for index in 0..g.slices {
            // dicom_write writes ImageOrientationPatient 1\0\0\0\1\0 and PixelSpacing s\s.
            stack.slices.push(SliceGeometry {
                position_mm: g.slice_position(index),
                row_direction: [1.0, 0.0, 0.0],
                column_direction: [0.0, 1.0, 0.0],
                pixel_spacing_mm: [g.pixel_spacing_mm; 2],
            });
            let mask = phantom.nodule_mask(index);
            // HU is read under the mask only: other slices stay NaN (which would be an error
            // if read) instead of being rendered, which keeps the test fast.
            let hu = if mask.iter().any(|&m| m != 0) {
                phantom.render_slice_hu(index)
            } else {
                vec![f32::NAN; rows * columns]
            };
            stack.mask.extend(mask);
            stack.hu.extend(hu);
        }
        stack
    }

    #[test]
    fn measurements_match_the_phantom_ground_truth() {
        let mut fully_checked = 0;
        for seed in 0..4u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let slices = 60 + (seed as usize * 13) % 41;
            let mut spec = CtSpec::random_chest(&mut rng, slices, (6.0, 30.0));
            spec.nodule_count = MAX_NODULES;
            let phantom = CtPhantom::new(&spec, &mut rng).unwrap();
            let truth = phantom.nodule_truth();
            let stack = phantom_stack(&phantom);
            let measured = measure(&stack, 0.0);
            let g = &phantom.geometry;
            let (s, t) = (g.pixel_spacing_mm, g.slice_thickness_mm);
            let slice_z: Vec<f64> = (0..g.slices).map(|i| g.slice_position(i)[2]).collect();
            let (z_top, z_bottom) = (slice_z[0], slice_z[g.slices - 1]);
            // Ground-truth masks hold nothing but the nodules, which the generator keeps
            // 5 mm apart: more than any 26-neighbour distance here (√(2·0.82² + 3²) mm).
            assert_eq!(measured.len(), truth.len(), "seed {seed}");

            for n in &truth {
                let [a, b, c] = n.semi_axes_mm;
                let matches: Vec<&NoduleMeasurement> = measured
                    .iter()
                    .filter(|m| distance(m.center_mm, n.center_mm) <= a.max(b).max(c))
                    .collect();
                assert_eq!(matches.len(), 1, "seed {seed} nodule {}", n.id);
                let m = matches[0];
                for end in 0..2 {
                    assert!(
                        m.slice_range[end].abs_diff(n.slice_range[end]) <= 1,
                        "seed {seed} nodule {}: slices {:?} vs {:?}",
                        n.id,
                        m.slice_range,
                        n.slice_range
                    );
                }
                // A nodule reaching past the outer slabs is cut off by the scan: its volume
                // and centre are not the truth's. Only its presence and slices are checked.
                let cz = n.center_mm[2];
                if cz + c > z_top + t / 2.0 || cz - c < z_bottom - t / 2.0 {
                    continue;
                }
                fully_checked += 1;
                let report = format!("seed {seed} nodule {} ({n:?}) measured {m:?}", n.id);

                // Centre: the mean of voxel centres sampled from a symmetric body lands within
                // a small fraction of a voxel of its centre; a half-pixel slip in the pixel
                // convention would not pass a quarter voxel.
                let voxels_off = [
                    (m.center_mm[0] - n.center_mm[0]) / s,
                    (m.center_mm[1] - n.center_mm[1]) / s,
                    (m.center_mm[2] - n.center_mm[2]) / t,
                ];
                assert!(norm(voxels_off) <= 0.25, "centre {voxels_off:?}: {report}");

                // The ellipsoid is rotated about z only: its cross-section at height z is
                // the ellipse (a, b) scaled by f(z) = √(1 − ((z − cz)/c)²).
                let scale_sq: Vec<f64> = slice_z
                    .iter()
                    .map(|z| (1.0 - ((z - cz) / c).powi(2)).max(0.0))
                    .collect();
                let widest = scale_sq.iter().copied().fold(0.0, f64::max).sqrt();
                // Diameter: the centres of mask pixels lie inside the widest sampled
                // section (2·a·f), so centre distance + one pixel ≤ 2af + s; the farthest
                // centres can each fall up to about a pixel inside the ends.
                let sampled_diameter = 2.0 * a * widest;
                let diameter = m.longest_axial_diameter_mm;
                assert!(
                    diameter <= sampled_diameter + s + 1e-9
                        && diameter >= sampled_diameter - 2.0 * s,
                    "diameter {diameter} vs sampled section {sampled_diameter}: {report}"
                );
                if n.spherical {
                    assert!(
                        (diameter - n.diameter_mm).abs() <= 0.15 * n.diameter_mm + s,
                        "diameter {diameter} vs {}: {report}",
                        n.diameter_mm
                    );
                }

                // Volume: sampling every t mm along z alone makes the estimate differ from
                // 4/3·π·abc by the slab sum's error, computed here from the truth's sections;
                // pixel counting within a section adds well under 10 % for sections ≥ 3 mm
                // across (error ∝ perimeter × pixel / area). So: ≤ 10 % from the slab sum,
                // and within 20 % — or the slab sum's own error plus 10 % — of the ellipsoid.
                let slab_sum: f64 = scale_sq
                    .iter()
                    .map(|f2| t * std::f64::consts::PI * a * b * f2)
                    .sum();
                let ellipsoid = 4.0 / 3.0 * std::f64::consts::PI * a * b * c;
                let volume = m.volume_mm3;
                assert!(
                    (volume - slab_sum).abs() <= 0.10 * slab_sum,
                    "volume {volume} vs slab sum {slab_sum}: {report}"
                );
                let allowed = (0.20f64).max((slab_sum - ellipsoid).abs() / ellipsoid + 0.10);
                assert!(
                    (volume - ellipsoid).abs() <= allowed * ellipsoid,
                    "volume {volume} vs ellipsoid {ellipsoid}: {report}"
                );

                // Mean HU: a mask voxel is at least half covered by the nodule (the phantom
                // blends 0.5 mm of partial volume at the surface), so its noiseless HU lies
                // between the nodule's own and half-way to the lung (≥ −910 HU); noise
                // (σ ≤ 22 HU) averages down over the voxels.
                let inner_low = match n.solid_core_diameter_mm {
                    Some(_) => -600.0, // part-solid: ground glass down to −600 HU
                    None => n.solid_hu,
                };
                let low = (inner_low - 910.0) / 2.0 - 30.0;
                assert!(
                    m.mean_hu >= low && m.mean_hu <= n.solid_hu + 30.0,
                    "mean HU {} outside {low}..{}: {report}",
                    m.mean_hu,
                    n.solid_hu + 30.0
                );
            }

            if seed == 0 {
                // The same scan given feet first measures the same.
                let order: Vec<usize> = (0..g.slices).rev().collect();
                let mut reversed = measure(&stack.reordered(&order), 0.0);
                for r in &mut reversed {
                    r.slice_range = [order[r.slice_range[1]], order[r.slice_range[0]]];
                }
                assert_eq!(reversed, measured);
            }
        }
        assert!(
            fully_checked >= 6,
            "only {fully_checked} nodules lay wholly in the scans"
        );
    }

    #[test]
    fn two_thresholds_find_faint_components_and_outline_clear_ones_tightly() {
        // One slice of 1×8, then copies: a clear blob (core 0.9, rim 0.3) at columns 0–2, a
        // faint one (0.3 only) at columns 5–6.
        let row = [0.3, 0.9, 0.3, 0.0, 0.0, 0.3, 0.3, 0.0];
        let probability: Vec<f32> = row.iter().chain(&row).copied().collect();
        let mask = two_threshold_mask(1, 8, 2, &probability, 0.2, 0.5).expect("mask");
        let first = &mask[..8];
        assert_eq!(first, &[0, 1, 0, 0, 0, 1, 1, 0]);
        assert_eq!(&mask[8..], first);
        // outline ≤ detect: the plain mask.
        let plain = two_threshold_mask(1, 8, 2, &probability, 0.2, 0.2).expect("mask");
        assert_eq!(&plain[..8], &[1, 1, 1, 0, 0, 1, 1, 0]);
        assert!(two_threshold_mask(1, 8, 3, &probability, 0.2, 0.5).is_err());
    }
}
