//! WADO-RS `/rendered` for every transfer syntax the DIMSE SCP accepts: a small synthetic
//! set (one CT slice, two 256×256 radiographs) is converted by dcmtk/GDCM
//! (`make-transfer-syntax-variants.sh`) into every variant, each variant is STOWed into
//! its own fresh server, and every instance is rendered as PNG. Each must come back 200,
//! a decodable PNG of the instance's size; the lossless variants must render exactly as
//! the explicit VR little endian original does (same window), the lossy ones closely.
//! Thumbnails of every variant render too, every variant's first frame comes out
//! uncompressed (WADO-RS `/frames`), and every instance can be retrieved in Explicit VR
//! Little Endian (decoded, and valid for dciodvfy).
//!
//! One server per variant because the variants share SOP Instance UIDs.

use std::ffi::OsStr;
use std::path::Path;

use radserve_tests::{
    RadServe, dcmtk, dicom_files, generate_sample_variants, http_client, radserve_command,
    run_to_exit, split_multipart,
};

const TOKEN: &str = "rendered-variants-token-3e81c0a4";
const BOUNDARY: &str = "rendered-variants-boundary-51ac";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
/// The variant every other one is compared with.
const REFERENCE: &str = "explicit-le";
/// Variants that must render bit-identically to the reference.
const LOSSLESS: &[&str] = &[
    "implicit-le",
    "explicit-le",
    "explicit-be",
    "deflate",
    "rle",
    "jpeg-lossless",
    "jpeg-ls",
    "j2k-lossless",
];
/// GDCM's decoding of the j2k-lossy variant (uncompressed).
const J2K_LOSSY_GDCM: &str = "j2k-lossy-gdcm-decoded";
/// Largest mean absolute difference (grey levels of 255) accepted for a lossy variant.
const LOSSY_MEAN_ABS_DIFF: f64 = 6.0;
/// The same for jpeg-baseline, whose window is baked in (see below).
const BAKED_WINDOW_MEAN_ABS_DIFF: f64 = 12.0;
/// A fixed window sent with every request besides the instance's own one.
const FIXED_WINDOW: &str = "window=40,400";

fn start(data: &Path) -> RadServe {
    let mut cmd = radserve_command();
    cmd.env("RADSERVE_ADMIN_TOKEN", TOKEN)
        .arg("serve")
        .args(["--dicom-port", "0", "--http-port", "0", "--data"])
        .arg(data);
    RadServe::start(cmd)
}

/// (status, content type, body).
fn send(
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    what: &str,
) -> (u16, String, Vec<u8>) {
    let mut response = result.unwrap_or_else(|e| panic!("{what}: {e}"));
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = response
        .body_mut()
        .with_config()
        .limit(1 << 28)
        .read_to_vec()
        .unwrap_or_else(|e| panic!("{what}: cannot read body: {e}"));
    (response.status().as_u16(), content_type, body)
}

fn stow(server: &RadServe, files: &[std::path::PathBuf]) -> (u16, String) {
    let mut body = Vec::new();
    for file in files {
        body.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(&std::fs::read(file).unwrap());
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    let url = server.url("/dicomweb/studies");
    let request = http_client()
        .post(&url)
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Accept", "application/dicom+json")
        .header(
            "Content-Type",
            format!("multipart/related; type=\"application/dicom\"; boundary={BOUNDARY}"),
        );
    let (status, _, body) = send(request.send(&body[..]), &format!("POST {url}"));
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The rendered path and size of an instance.
struct Instance {
    path: String,
    rows: u32,
    columns: u32,
}

/// A UID (or other short text value) of `file`, read with dcmdump: the lossy encoders give the instance a new SOP
/// Instance UID, and the test's dicom-object cannot read every variant (deflate).
fn uid(file: &Path, tag: &str) -> String {
    let output = dcmtk(
        "dcmdump",
        [
            OsStr::new("-q"),
            OsStr::new("+P"),
            OsStr::new(tag),
            file.as_os_str(),
        ],
    );
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_once('[')
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(uid, _)| uid.trim_end_matches(['\0', ' ']).to_owned())
        .unwrap_or_else(|| panic!("no {tag} in {}: {text}", file.display()))
}

/// `file`'s rendered path; its size from the uncompressed `reference` of it.
fn instance(file: &Path, reference: &Path) -> Instance {
    let obj = dicom_object::open_file(reference).unwrap();
    let int = |name: &str| obj.element_by_name(name).unwrap().to_int::<u32>().unwrap();
    Instance {
        path: format!(
            "/dicomweb/studies/{}/series/{}/instances/{}/rendered",
            uid(file, "0020,000d"),
            uid(file, "0020,000e"),
            uid(file, "0008,0018")
        ),
        rows: int("Rows"),
        columns: int("Columns"),
    }
}

/// GETs a rendered PNG; returns the decoded grey image or why not.
fn rendered(server: &RadServe, path: &str, query: &str) -> Result<image::GrayImage, String> {
    let url = server.url(&format!("{path}{query}"));
    let request = http_client()
        .get(&url)
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Accept", "image/png");
    let (status, content_type, body) = send(request.call(), &format!("GET {url}"));
    if status != 200 {
        return Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        ));
    }
    if content_type != "image/png" {
        return Err(format!("content type {content_type:?}"));
    }
    let image = image::load_from_memory_with_format(&body, image::ImageFormat::Png)
        .map_err(|e| format!("not a PNG: {e}"))?;
    Ok(image.to_luma8())
}

/// GETs `path` with `accept`; returns the one part of the multipart/related answer, or why
/// not (`status N: body` for an error status).
fn single_part(server: &RadServe, path: &str, accept: &str) -> Result<Vec<u8>, String> {
    let url = server.url(path);
    let request = http_client()
        .get(&url)
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Accept", accept);
    let (status, content_type, body) = send(request.call(), &format!("GET {url}"));
    if status != 200 {
        return Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        ));
    }
    let mut parts = split_multipart(&content_type, &body);
    if parts.len() != 1 {
        return Err(format!("{} parts", parts.len()));
    }
    Ok(parts.remove(0))
}

/// An instance's (`path` is its `/rendered` path) frame 1, uncompressed octets.
fn first_frame(server: &RadServe, path: &str) -> Result<Vec<u8>, String> {
    single_part(
        server,
        &path.replace("/rendered", "/frames/1"),
        "multipart/related; type=\"application/octet-stream\"",
    )
}

/// An instance (`path` is its `/rendered` path) as a Part 10 file in `transfer_syntax`.
fn instance_in(server: &RadServe, path: &str, transfer_syntax: &str) -> Result<Vec<u8>, String> {
    single_part(
        server,
        path.trim_end_matches("/rendered"),
        &format!(
            "multipart/related; type=\"application/dicom\"; transfer-syntax={transfer_syntax}"
        ),
    )
}

/// Transfer syntax and pixel data of a Part 10 file.
fn transfer_syntax_and_pixels(part10: &[u8]) -> (String, Vec<u8>) {
    let object = dicom_object::OpenFileOptions::new()
        .from_reader(&part10[128..])
        .expect("a Part 10 file");
    let ts = object
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_owned();
    let pixels = object
        .element_by_name("PixelData")
        .expect("pixel data")
        .to_bytes()
        .expect("native pixel data")
        .into_owned();
    (ts, pixels)
}

/// dciodvfy's error lines for a file.
fn dciodvfy_errors(file: &Path) -> Vec<String> {
    let output = run_to_exit(std::process::Command::new("dciodvfy").arg(file));
    let report = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    report
        .lines()
        .filter(|l| l.starts_with("Error"))
        .map(str::to_owned)
        .collect()
}

/// Largest absolute difference of two little-endian 16-bit sample buffers.
fn max_abs_diff_16(a: &[u8], b: &[u8]) -> u16 {
    let sample = |pair: &[u8]| u16::from_le_bytes([pair[0], pair[1]]);
    a.chunks_exact(2)
        .zip(b.chunks_exact(2))
        .map(|(x, y)| sample(x).abs_diff(sample(y)))
        .max()
        .unwrap_or(0)
}

fn mean_abs_diff(a: &image::GrayImage, b: &image::GrayImage) -> f64 {
    let total: u64 = a
        .pixels()
        .zip(b.pixels())
        .map(|(x, y)| u64::from(x.0[0].abs_diff(y.0[0])))
        .sum();
    total as f64 / f64::from(a.width() * a.height()).max(1.0)
}

#[test]
fn every_transfer_syntax_variant_renders_like_the_original() {
    let work = tempfile::tempdir().unwrap();
    let variants = generate_sample_variants(
        work.path(),
        &[
            "--ct",
            "1",
            "--slices",
            "1",
            "--xray",
            "2",
            "--xray-size",
            "256",
        ],
    );
    // GDCM's own decoding of its lossy JPEG 2000 is the reference the j2k-lossy renderings
    // are checked against (-q 30 is far from the original): this tests our decoder, not
    // GDCM's encoder.
    let j2k_lossy_dir = variants
        .iter()
        .find(|(n, _)| n == "j2k-lossy")
        .map(|(_, d)| d.clone())
        .unwrap_or_else(|| panic!("no j2k-lossy variant"));
    let gdcm_raw_dir = work.path().join("variants").join(J2K_LOSSY_GDCM);
    for file in dicom_files(&j2k_lossy_dir) {
        let target = gdcm_raw_dir.join(file.strip_prefix(&j2k_lossy_dir).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        let output = run_to_exit(
            std::process::Command::new("gdcmconv")
                .arg("--raw")
                .arg(&file)
                .arg(&target),
        );
        assert!(output.status.success(), "gdcmconv --raw {}", file.display());
    }
    let mut variants = variants;
    variants.push((J2K_LOSSY_GDCM.to_owned(), gdcm_raw_dir));
    let names: Vec<&str> = variants.iter().map(|(n, _)| n.as_str()).collect();
    for expected in LOSSLESS
        .iter()
        .chain(&["jpeg-baseline", "jpeg-extended", "j2k-lossy"])
    {
        assert!(names.contains(expected), "no {expected} variant: {names:?}");
    }

    let reference_dir = variants
        .iter()
        .find(|(n, _)| n == REFERENCE)
        .map(|(_, d)| d.clone())
        .unwrap_or_else(|| panic!("no {REFERENCE} variant"));
    // (variant, relative file, query) → rendered image, for every variant.
    let mut images = std::collections::BTreeMap::new();
    // (variant, relative file) → frame 1, uncompressed, and the stored file it came from.
    let mut frames = std::collections::BTreeMap::new();
    // (variant, relative file) → the instance retrieved in Explicit VR Little Endian.
    let mut transcoded = std::collections::BTreeMap::new();
    let mut failures = Vec::new();
    for (name, dir) in &variants {
        let files = dicom_files(dir);
        assert!(!files.is_empty(), "{name}: no files");
        let data = tempfile::tempdir().unwrap();
        let mut server = start(data.path());
        let (status, body) = stow(&server, &files);
        assert_eq!(status, 200, "{name}: STOW: {body}");
        for file in &files {
            let rel = file
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let instance = instance(file, &reference_dir.join(&rel));
            // The thumbnail decodes the same way: fits in 128×128 (all samples are larger).
            let thumbnail = instance.path.replace("/rendered", "/thumbnail");
            match rendered(&server, &thumbnail, "") {
                Ok(image) if image.width().max(image.height()) == 128 => {}
                Ok(image) => failures.push(format!(
                    "{name} {rel} thumbnail: {:?}, not fitting 128x128",
                    image.dimensions()
                )),
                Err(e) => failures.push(format!("{name} {rel} thumbnail: {e}")),
            }
            match first_frame(&server, &instance.path) {
                Ok(frame) => {
                    frames.insert((name.clone(), rel.clone()), (frame, file.clone()));
                }
                Err(e) => failures.push(format!("{name} {rel} frames/1: {e}")),
            }
            if name == "jpeg-lossless" {
                // Any other transfer syntax than the stored one or Explicit VR LE: 406.
                match instance_in(&server, &instance.path, "1.2.840.10008.1.2.4.50") {
                    Err(e) if e.starts_with("status 406: {\"error\":") => {}
                    other => failures.push(format!(
                        "{name} {rel} as JPEG baseline: expected a 406 JSON error, got {:?}",
                        other.map(|part| part.len())
                    )),
                }
            }
            match instance_in(&server, &instance.path, EXPLICIT_LE) {
                Ok(part10) => {
                    transcoded.insert((name.clone(), rel.clone()), part10);
                }
                Err(e) => failures.push(format!("{name} {rel} as {EXPLICIT_LE}: {e}")),
            }
            for query in ["", &format!("?{FIXED_WINDOW}")] {
                match rendered(&server, &instance.path, query) {
                    Ok(image) if image.dimensions() == (instance.columns, instance.rows) => {
                        images.insert((name.clone(), rel.clone(), query.to_owned()), image);
                    }
                    Ok(image) => failures.push(format!(
                        "{name} {rel} {query}: {:?}, not {}x{}",
                        image.dimensions(),
                        instance.columns,
                        instance.rows
                    )),
                    Err(e) => failures.push(format!("{name} {rel} {query}: {e}")),
                }
            }
        }
        server.terminate();
    }
    assert!(
        failures.is_empty(),
        "rendering failed:\n{}",
        failures.join("\n")
    );

    // Frames come out uncompressed whatever the stored encoding: the lossless variants byte
    // for byte as the original's, 12-bit JPEG Extended as dcmtk decompresses it (within the
    // inverse DCTs' rounding), the others (8-bit baked window, JPEG 2000 at -q 30) of the
    // right size.
    // The same holds for the whole instance asked for in Explicit VR Little Endian (the
    // frames are single), which must also say so and pass dciodvfy.
    for ((name, rel), (frame, file)) in &frames {
        let (reference, _) = frames
            .get(&(REFERENCE.to_owned(), rel.clone()))
            .unwrap_or_else(|| panic!("no {REFERENCE} frame of {rel}"));
        let part10 = &transcoded[&(name.clone(), rel.clone())];
        let (ts, pixels) = transfer_syntax_and_pixels(part10);
        if ts != EXPLICIT_LE || &pixels != frame {
            failures.push(format!(
                "{name} {rel}: retrieved as {ts}, its pixel data {} the first frame's",
                if &pixels == frame {
                    "equal to"
                } else {
                    "unlike"
                }
            ));
        }
        // dciodvfy: no error the stored file does not have already (dcmcjpeg's 8-bit DISP
        // variant has some of its own).
        let written = work.path().join("transcoded.dcm");
        std::fs::write(&written, part10).unwrap();
        let stored_errors = dciodvfy_errors(file);
        let new_errors: Vec<String> = dciodvfy_errors(&written)
            .into_iter()
            .filter(|e| !stored_errors.contains(e))
            .collect();
        if !new_errors.is_empty() {
            failures.push(format!(
                "{name} {rel} as {EXPLICIT_LE}: dciodvfy: {new_errors:?}"
            ));
        }
        let expected_len = if name == "jpeg-baseline" {
            reference.len() / 2
        } else {
            reference.len()
        };
        if frame.len() != expected_len {
            failures.push(format!(
                "{name} {rel} frames/1: {} bytes, not {expected_len}",
                frame.len()
            ));
        } else if LOSSLESS.contains(&name.as_str()) && frame != reference {
            failures.push(format!("{name} {rel} frames/1: differs from {REFERENCE}"));
        } else if name == "jpeg-extended" {
            // dcmcjpeg shifts a lossy image's values (and its window with them), so the
            // reference is dcmtk's own decompression of the same file, not the original.
            let decompressed = work.path().join("dcmdjpeg.dcm");
            let output = dcmtk("dcmdjpeg", [file.as_os_str(), decompressed.as_os_str()]);
            assert!(output.status.success(), "dcmdjpeg {}", file.display());
            let dcmtk_pixels = dicom_object::open_file(&decompressed)
                .unwrap()
                .element_by_name("PixelData")
                .unwrap()
                .to_bytes()
                .unwrap()
                .into_owned();
            let worst = max_abs_diff_16(frame, &dcmtk_pixels);
            if worst > 1 || dcmtk_pixels.len() != frame.len() {
                failures.push(format!(
                    "{name} {rel} frames/1: {worst} from dcmdjpeg's decompression ({} vs {} bytes)",
                    frame.len(),
                    dcmtk_pixels.len()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let mut compared = 0;
    for ((name, rel, query), image) in &images {
        if name == REFERENCE {
            continue;
        }
        let (reference_name, query_must_match) = match name.as_str() {
            J2K_LOSSY_GDCM => continue,
            "j2k-lossy" => (J2K_LOSSY_GDCM, false),
            // dcmcjpeg +Wi 1 bakes the first window into 8 bits (DISP): only the
            // instance's own window renders comparably.
            "jpeg-baseline" => (REFERENCE, true),
            _ => (REFERENCE, false),
        };
        if query_must_match && !query.is_empty() {
            continue;
        }
        // GDCM codes the 12-bit radiographs with a 16-bit J2K precision, and -q 30 (PSNR
        // over a 16-bit range) then errs by thousands: GDCM decodes values up to 8192 and
        // writes BitsStored 16, while the j2k-lossy file says 12 bits, so there is no
        // like-for-like reference; those only have to render (checked above). The 16-bit CT
        // has one and must match it.
        if name == "j2k-lossy" && !rel.contains("_CT") {
            continue;
        }
        let reference = images
            .get(&(reference_name.to_owned(), rel.clone(), query.clone()))
            .unwrap_or_else(|| panic!("no {reference_name} rendering of {rel}"));
        let diff = mean_abs_diff(image, reference);
        // The 8-bit baseline JPEG carries window 1 baked in, and is then rendered through
        // its own value range: a little more than its compression error.
        let tolerance = if name == "jpeg-baseline" {
            BAKED_WINDOW_MEAN_ABS_DIFF
        } else {
            LOSSY_MEAN_ABS_DIFF
        };
        if LOSSLESS.contains(&name.as_str()) {
            if image != reference {
                failures.push(format!(
                    "{name} {rel} {query}: differs from {REFERENCE} (mean abs diff {diff:.3})"
                ));
            }
        } else if diff > tolerance {
            failures.push(format!(
                "{name} {rel} {query}: mean abs diff {diff:.2} from {reference_name} > {tolerance}"
            ));
        }
        compared += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // 7 lossless variants × 3 files × 2 windows, j2k-lossy's CT × 2 windows, jpeg-baseline's
    // two radiographs with their own window, jpeg-extended's two radiographs × 2 windows
    // (the 16-bit CT has no lossy JPEG variants).
    assert!(compared >= 50, "only {compared} renderings compared");
}
