//! Candidate review: the segmenter's 3D components → a second, small classifier that looks
//! at each one in 3D → the components it keeps (false-positive reduction).
//!
//! A slice-by-slice segmenter cannot tell a small nodule from a vessel seen end-on, or a
//! piece of the hilum, since on one slice they look alike. Seen along the other two axes they
//! do not: a vessel runs on, a nodule ends. For each component the reviewer gets three
//! orthogonal planes through its centre (axial, coronal, sagittal), each `edge × edge`
//! samples `spacing_mm` apart, resampled from the scan's Hounsfield units (trilinear; the
//! slice spacing of the scan does not matter), as a three-channel image.
//!
//! A segmentation package names its reviewer in `[output.candidate_filter]`: a model
//! package of its own in a sub-directory (a classifier with three input channels and one
//! output), whose label threshold decides which components stay.

use crate::package::{InputSpec, Intensity};
use crate::postprocess::{MaskVolume, SliceGeometry, cross, dot};

/// The three planes of a patch, in channel order.
pub const PATCH_PLANES: usize = 3;

/// Most candidates one scan may send to the reviewer: a segmenter that finds more is not
/// looking at what it was made for.
pub const MAX_CANDIDATES: usize = 1000;

/// Candidates are reviewed in batches of this size (the last one padded), so that the
/// reviewer always runs at the one batch size it was warmed up with.
pub const REVIEW_BATCH: usize = 16;

/// Hounsfield units taken for samples outside the slice plane's extent: air.
const OUTSIDE_HU: f32 = -1000.0;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CandidateError {
    #[error(
        "the candidate reviewer's input must be a HU clip (`[input.intensity] kind = \"hu_clip\"`)"
    )]
    NotHuClip,
    #[error(
        "patch edge {edge} and spacing {spacing_mm} mm: need an edge of 8..=256 and a spacing of 0.05..=20 mm"
    )]
    BadPatch { edge: usize, spacing_mm: f64 },
    #[error("the volume holds {values} HU values for {slices} slices of {rows}×{columns}")]
    VolumeMismatch {
        values: usize,
        slices: usize,
        rows: usize,
        columns: usize,
    },
    #[error("the volume has no slices")]
    Empty,
}

/// How a patch is sampled: samples per plane edge and their spacing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PatchSpec {
    pub edge: usize,
    pub spacing_mm: f64,
}

impl PatchSpec {
    pub fn validate(&self) -> Result<(), CandidateError> {
        let ok = (8..=256).contains(&self.edge)
            && self.spacing_mm.is_finite()
            && (0.05..=20.0).contains(&self.spacing_mm);
        if ok {
            Ok(())
        } else {
            Err(CandidateError::BadPatch {
                edge: self.edge,
                spacing_mm: self.spacing_mm,
            })
        }
    }

    /// Values per patch: three planes of `edge × edge`.
    pub fn len(&self) -> usize {
        PATCH_PLANES * self.edge * self.edge
    }

    pub fn is_empty(&self) -> bool {
        self.edge == 0
    }
}

/// Samples a volume's Hounsfield units at points in patient coordinates. The slices must
/// share one orientation and pixel spacing (as a series the segmenter accepts does); they may
/// be given in either order along the normal.
pub struct HuSampler<'a> {
    volume: MaskVolume<'a>,
    normal: [f64; 3],
    /// Slice indices sorted along the normal, and each one's position along it.
    order: Vec<(usize, f64)>,
}

impl<'a> HuSampler<'a> {
    pub fn new(volume: MaskVolume<'a>) -> Result<Self, CandidateError> {
        let first = volume.slices.first().ok_or(CandidateError::Empty)?;
        let expected = volume.slices.len() * volume.rows * volume.columns;
        if volume.hu.len() != expected {
            return Err(CandidateError::VolumeMismatch {
                values: volume.hu.len(),
                slices: volume.slices.len(),
                rows: volume.rows,
                columns: volume.columns,
            });
        }
        let normal = cross(first.row_direction, first.column_direction);
        let mut order: Vec<(usize, f64)> = volume
            .slices
            .iter()
            .enumerate()
            .map(|(i, s)| (i, dot(s.position_mm, normal)))
            .collect();
        order.sort_by(|a, b| a.1.total_cmp(&b.1));
        Ok(HuSampler {
            volume,
            normal,
            order,
        })
    }

    /// The normal of the slices (row direction × column direction).
    pub fn normal(&self) -> [f64; 3] {
        self.normal
    }

    /// HU at `point`: bilinear within the two slices around it, linear between them; the end
    /// slices extend beyond the scan, and air lies beyond a slice's edge.
    pub fn sample(&self, point: [f64; 3]) -> f32 {
        let along = dot(point, self.normal);
        let upper = self.order.partition_point(|&(_, s)| s < along);
        let (below, above, weight) = if upper == 0 {
            (self.order[0].0, self.order[0].0, 0.0)
        } else if upper == self.order.len() {
            let last = self.order[upper - 1].0;
            (last, last, 0.0)
        } else {
            let (a, sa) = self.order[upper - 1];
            let (b, sb) = self.order[upper];
            let gap = sb - sa;
            let w = if gap > 0.0 { (along - sa) / gap } else { 0.0 };
            (a, b, w)
        };
        let v0 = self.sample_slice(below, point);
        if weight == 0.0 {
            return v0;
        }
        let v1 = self.sample_slice(above, point);
        v0 + (v1 - v0) * weight as f32
    }

    fn sample_slice(&self, slice: usize, point: [f64; 3]) -> f32 {
        let g: &SliceGeometry = &self.volume.slices[slice];
        let offset = [
            point[0] - g.position_mm[0],
            point[1] - g.position_mm[1],
            point[2] - g.position_mm[2],
        ];
        let column = dot(offset, g.row_direction) / g.pixel_spacing_mm[1];
        let row = dot(offset, g.column_direction) / g.pixel_spacing_mm[0];
        let (rows, columns) = (self.volume.rows, self.volume.columns);
        let plane = &self.volume.hu[slice * rows * columns..(slice + 1) * rows * columns];
        let at = |r: isize, c: isize| -> f32 {
            if r < 0 || c < 0 || r as usize >= rows || c as usize >= columns {
                OUTSIDE_HU
            } else {
                let v = plane[r as usize * columns + c as usize];
                if v.is_finite() { v } else { OUTSIDE_HU }
            }
        };
        if !(row.is_finite() && column.is_finite()) {
            return OUTSIDE_HU;
        }
        let (r0, c0) = (row.floor(), column.floor());
        let (fr, fc) = ((row - r0) as f32, (column - c0) as f32);
        // Far outside: no need to interpolate (and no overflow in the casts).
        if r0 < -2.0 || c0 < -2.0 || r0 > rows as f64 + 2.0 || c0 > columns as f64 + 2.0 {
            return OUTSIDE_HU;
        }
        let (r0, c0) = (r0 as isize, c0 as isize);
        let top = at(r0, c0) * (1.0 - fc) + at(r0, c0 + 1) * fc;
        let bottom = at(r0 + 1, c0) * (1.0 - fc) + at(r0 + 1, c0 + 1) * fc;
        top * (1.0 - fr) + bottom * fr
    }
}

/// Appends the reviewer's input for a candidate centred at `centre_mm`: three planes of
/// `patch.edge²` values (axial: row × column direction; coronal: row direction × normal;
/// sagittal: column direction × normal), through the intensity and normalisation of `input`.
pub fn orthogonal_patch(
    sampler: &HuSampler<'_>,
    centre_mm: [f64; 3],
    patch: PatchSpec,
    input: &InputSpec,
    out: &mut Vec<f32>,
) -> Result<(), CandidateError> {
    patch.validate()?;
    let Intensity::HuClip { min, max } = input.intensity else {
        return Err(CandidateError::NotHuClip);
    };
    let first = &sampler.volume.slices[0];
    let (u_row, u_column, n) = (first.row_direction, first.column_direction, sampler.normal);
    let scale = (1.0 / (max - min)) as f32;
    let (low, mean) = (min as f32, input.normalisation.mean as f32);
    let inv_std = (1.0 / input.normalisation.std) as f32;
    let half = (patch.edge as f64 - 1.0) / 2.0;
    for (a, b) in [(u_row, u_column), (u_row, n), (u_column, n)] {
        for i in 0..patch.edge {
            let v = (i as f64 - half) * patch.spacing_mm;
            for j in 0..patch.edge {
                let u = (j as f64 - half) * patch.spacing_mm;
                let point = [
                    centre_mm[0] + u * a[0] + v * b[0],
                    centre_mm[1] + u * a[1] + v * b[1],
                    centre_mm[2] + u * a[2] + v * b[2],
                ];
                let unit = ((sampler.sample(point) - low) * scale).clamp(0.0, 1.0);
                out.push((unit - mean) * inv_std);
            }
        }
    }
    Ok(())
}

/// The reviewer's input for each of `centres` in `volume`, laid end to end.
pub fn candidate_patches(
    volume: MaskVolume<'_>,
    centres: &[[f64; 3]],
    patch: PatchSpec,
    input: &InputSpec,
) -> Result<Vec<f32>, CandidateError> {
    let sampler = HuSampler::new(volume)?;
    let mut patches = Vec::with_capacity(centres.len() * patch.len());
    for &centre in centres {
        orthogonal_patch(&sampler, centre, patch, input, &mut patches)?;
    }
    Ok(patches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::Normalisation;

    fn input() -> InputSpec {
        InputSpec {
            modalities: vec!["CT".into()],
            body_part: "CHEST".into(),
            photometric: crate::package::Photometric::Monochrome2,
            target_size: [16, 16],
            intensity: Intensity::HuClip {
                min: -1000.0,
                max: 400.0,
            },
            normalisation: Normalisation {
                mean: 0.0,
                std: 1.0,
            },
            slice_by_slice: false,
        }
    }

    /// A 40×40×`slices` volume of air, 1 mm pixels, `thickness` mm slices (given top first
    /// when `descending`), with a ball of soft tissue (0 HU) of radius 5 mm at `centre`.
    fn ball_volume(
        slices: usize,
        thickness: f64,
        descending: bool,
        centre: [f64; 3],
    ) -> (Vec<SliceGeometry>, Vec<f32>) {
        let (rows, columns) = (40, 40);
        let mut geometry = Vec::new();
        let mut hu = Vec::new();
        for k in 0..slices {
            let z = if descending {
                (slices - 1 - k) as f64 * thickness
            } else {
                k as f64 * thickness
            };
            geometry.push(SliceGeometry {
                position_mm: [0.0, 0.0, z],
                row_direction: [1.0, 0.0, 0.0],
                column_direction: [0.0, 1.0, 0.0],
                pixel_spacing_mm: [1.0, 1.0],
            });
            for r in 0..rows {
                for c in 0..columns {
                    let d = ((c as f64 - centre[0]).powi(2)
                        + (r as f64 - centre[1]).powi(2)
                        + (z - centre[2]).powi(2))
                    .sqrt();
                    hu.push(if d <= 5.0 { 0.0 } else { -1000.0 });
                }
            }
        }
        (geometry, hu)
    }

    fn patch_of(geometry: &[SliceGeometry], hu: &[f32], centre: [f64; 3]) -> Vec<f32> {
        let mask = vec![0u8; hu.len()];
        let volume = MaskVolume {
            rows: 40,
            columns: 40,
            slices: geometry,
            mask: &mask,
            hu,
        };
        let sampler = HuSampler::new(volume).expect("sampler");
        let mut out = Vec::new();
        let patch = PatchSpec {
            edge: 16,
            spacing_mm: 1.0,
        };
        orthogonal_patch(&sampler, centre, patch, &input(), &mut out).expect("patch");
        assert_eq!(out.len(), patch.len());
        out
    }

    /// Soft tissue maps to 1000/1400 in the unit range, air to 0.
    const TISSUE: f32 = 1000.0 / 1400.0;

    #[test]
    fn a_ball_fills_the_middle_of_all_three_planes_and_not_their_corners() {
        let centre = [20.0, 20.0, 20.0];
        let (geometry, hu) = ball_volume(41, 1.0, false, centre);
        let patch = patch_of(&geometry, &hu, centre);
        for plane in 0..3 {
            let p = &patch[plane * 256..(plane + 1) * 256];
            // Samples at ±0.5 mm around the middle lie inside the ball.
            assert!(
                (p[7 * 16 + 7] - TISSUE).abs() < 1e-4,
                "plane {plane}: {}",
                p[7 * 16 + 7]
            );
            assert!(p[0].abs() < 1e-4, "plane {plane} corner: {}", p[0]);
        }
    }

    #[test]
    fn a_patch_off_the_ball_sees_it_only_where_it_is() {
        // Centre 4 mm beside the ball along x: the ball sits left of the middle in the axial
        // and coronal planes, and the sagittal plane (x fixed) cuts only its edge.
        let (geometry, hu) = ball_volume(41, 1.0, false, [20.0, 20.0, 20.0]);
        let patch = patch_of(&geometry, &hu, [24.0, 20.0, 20.0]);
        let axial = &patch[..256];
        // Column 3 is 4.5 mm left of the patch centre: 0.5 mm from the ball's centre.
        assert!((axial[7 * 16 + 3] - TISSUE).abs() < 1e-4);
        assert!(
            axial[7 * 16 + 12].abs() < 1e-4,
            "right of the centre is air"
        );
        let sagittal = &patch[512..];
        let tissue = sagittal.iter().filter(|&&v| v > TISSUE / 2.0).count();
        let axial_tissue = axial.iter().filter(|&&v| v > TISSUE / 2.0).count();
        assert!(tissue < axial_tissue, "{tissue} vs {axial_tissue}");
    }

    #[test]
    fn slice_order_and_thickness_do_not_change_the_patch() {
        let centre = [20.0, 20.0, 20.0];
        let (up, hu_up) = ball_volume(41, 1.0, false, centre);
        let (down, hu_down) = ball_volume(41, 1.0, true, centre);
        assert_eq!(
            patch_of(&up, &hu_up, centre),
            patch_of(&down, &hu_down, centre)
        );
        // 2.5 mm slices: the through-plane planes are interpolated, the axial one is not.
        let (thick, hu_thick) = ball_volume(17, 2.5, false, centre);
        let patch = patch_of(&thick, &hu_thick, centre);
        let coronal = &patch[256..512];
        assert!(coronal[7 * 16 + 7] > TISSUE * 0.9);
        assert!(coronal[0].abs() < 1e-4);
    }

    #[test]
    fn beyond_the_scan_the_end_slices_extend_and_beyond_the_plane_is_air() {
        let (geometry, hu) = ball_volume(5, 1.0, false, [20.0, 20.0, 2.0]);
        // Centred 20 mm before the first slice: every row of the coronal plane lies before
        // the scan and repeats slice 0, ball included.
        let patch = patch_of(&geometry, &hu, [20.0, 20.0, -20.0]);
        let coronal = &patch[256..512];
        for row in coronal.chunks(16) {
            assert_eq!(row, &coronal[..16]);
        }
        assert!((coronal[7] - TISSUE).abs() < 1e-4);
        // Centred outside the slice plane's extent: all air.
        let outside = patch_of(&geometry, &hu, [200.0, 200.0, 2.0]);
        assert!(outside.iter().all(|v| v.abs() < 1e-4));
    }

    #[test]
    fn a_bad_patch_or_intensity_is_an_error() {
        let (geometry, hu) = ball_volume(5, 1.0, false, [20.0, 20.0, 2.0]);
        let mask = vec![0u8; hu.len()];
        let volume = MaskVolume {
            rows: 40,
            columns: 40,
            slices: &geometry,
            mask: &mask,
            hu: &hu,
        };
        let sampler = HuSampler::new(volume).expect("sampler");
        let mut out = Vec::new();
        let bad = PatchSpec {
            edge: 4,
            spacing_mm: 1.0,
        };
        assert!(matches!(
            orthogonal_patch(&sampler, [0.0; 3], bad, &input(), &mut out),
            Err(CandidateError::BadPatch { .. })
        ));
        let mut windowed = input();
        windowed.intensity = Intensity::VoiWindow;
        let good = PatchSpec {
            edge: 16,
            spacing_mm: 1.0,
        };
        assert_eq!(
            orthogonal_patch(&sampler, [0.0; 3], good, &windowed, &mut out),
            Err(CandidateError::NotHuClip)
        );
        let short = MaskVolume {
            hu: &hu[..10],
            ..volume
        };
        assert!(matches!(
            HuSampler::new(short),
            Err(CandidateError::VolumeMismatch { .. })
        ));
    }
}
