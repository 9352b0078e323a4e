//! The transfer-syntax variants made by `scripts/make-transfer-syntax-variants.sh` with dcmtk
//! and GDCM: each carries the transfer syntax it claims, pydicom reads it, and the lossless
//! ones decompress (with the same independent tools) to exactly the generator's pixels.

mod common;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use common::{dicom_files, generate, read_with_pydicom, scripts_dir, tool};

struct Variant {
    name: &'static str,
    transfer_syntax: &'static str,
    lossless: bool,
    /// dcmtk or GDCM command that turns it back into explicit VR little endian.
    decompress: &'static [&'static str],
}

const VARIANTS: &[Variant] = &[
    Variant {
        name: "implicit-le",
        transfer_syntax: "1.2.840.10008.1.2",
        lossless: true,
        decompress: &["dcmconv", "+te"],
    },
    Variant {
        name: "explicit-le",
        transfer_syntax: "1.2.840.10008.1.2.1",
        lossless: true,
        decompress: &["dcmconv", "+te"],
    },
    Variant {
        name: "explicit-be",
        transfer_syntax: "1.2.840.10008.1.2.2",
        lossless: true,
        decompress: &["dcmconv", "+te"],
    },
    Variant {
        name: "deflate",
        transfer_syntax: "1.2.840.10008.1.2.1.99",
        lossless: true,
        decompress: &["dcmconv", "+te"],
    },
    Variant {
        name: "rle",
        transfer_syntax: "1.2.840.10008.1.2.5",
        lossless: true,
        decompress: &["dcmdrle"],
    },
    Variant {
        name: "jpeg-lossless",
        transfer_syntax: "1.2.840.10008.1.2.4.70",
        lossless: true,
        decompress: &["dcmdjpeg"],
    },
    Variant {
        name: "jpeg-ls",
        transfer_syntax: "1.2.840.10008.1.2.4.80",
        lossless: true,
        decompress: &["dcmdjpls"],
    },
    Variant {
        name: "j2k-lossless",
        transfer_syntax: "1.2.840.10008.1.2.4.90",
        lossless: true,
        decompress: &["gdcmconv", "--raw"],
    },
    Variant {
        name: "jpeg-baseline",
        transfer_syntax: "1.2.840.10008.1.2.4.50",
        lossless: false,
        decompress: &["dcmdjpeg"],
    },
    Variant {
        name: "jpeg-extended",
        transfer_syntax: "1.2.840.10008.1.2.4.51",
        lossless: false,
        decompress: &["dcmdjpeg"],
    },
    Variant {
        name: "j2k-lossy",
        transfer_syntax: "1.2.840.10008.1.2.4.91",
        lossless: false,
        decompress: &["gdcmconv", "--raw"],
    },
];

fn decompress(variant: &Variant, file: &Path, out: &Path) -> PathBuf {
    let target = out.join(format!(
        "{}-{}",
        variant.name,
        file.file_name().and_then(OsStr::to_str).unwrap_or("x")
    ));
    let mut args: Vec<&OsStr> = variant.decompress[1..].iter().map(OsStr::new).collect();
    args.push(file.as_os_str());
    args.push(target.as_os_str());
    let output = tool(variant.decompress[0], &args);
    assert!(
        output.status.success(),
        "{} could not decompress {}: {}",
        variant.decompress[0],
        file.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    target
}

#[test]
fn variants_carry_their_transfer_syntax_and_lossless_ones_keep_every_pixel() {
    let dir = tempfile::tempdir().expect("temp dir");
    let originals_dir = dir.path().join("generated");
    let variants_dir = dir.path().join("variants");
    let scratch = dir.path().join("decompressed");
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    // One CT (16-bit signed) and a DX and a CR (12-bit, MONOCHROME1 and 2 as drawn).
    generate(
        &originals_dir,
        &[
            "--seed",
            "3",
            "--ct",
            "1",
            "--slices",
            "2",
            "--xray",
            "2",
            "--xray-size",
            "256",
        ],
    );
    let script = scripts_dir().join("make-transfer-syntax-variants.sh");
    let output = tool(
        "bash",
        &[
            script.as_os_str(),
            originals_dir.as_os_str(),
            variants_dir.as_os_str(),
        ],
    );
    assert!(
        output.status.success(),
        "variants script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let originals = dicom_files(&originals_dir);
    let original_pixels: HashMap<PathBuf, String> = read_with_pydicom(&originals)
        .into_iter()
        .map(|v| {
            let path = PathBuf::from(v["path"].as_str().expect("path"));
            let relative = path
                .strip_prefix(&originals_dir)
                .expect("under originals")
                .to_path_buf();
            (
                relative,
                v["pixel_data_sha256"]
                    .as_str()
                    .expect("uncompressed pixels")
                    .to_string(),
            )
        })
        .collect();

    for variant in VARIANTS {
        let files = dicom_files(&variants_dir.join(variant.name));
        // Lossy JPEG cannot hold the 16-bit CT: only the radiographs have those variants.
        let expected = if variant.name.starts_with("jpeg-") && !variant.lossless {
            2
        } else {
            originals.len()
        };
        assert_eq!(files.len(), expected, "{} files", variant.name);
        for read in read_with_pydicom(&files) {
            assert_eq!(
                read["transfer_syntax"], variant.transfer_syntax,
                "{}",
                read["path"]
            );
        }
        for file in &files {
            let relative = file
                .strip_prefix(variants_dir.join(variant.name))
                .expect("under variant")
                .to_path_buf();
            let restored = decompress(variant, file, &scratch);
            let restored_read = read_with_pydicom(std::slice::from_ref(&restored)).remove(0);
            let restored_hash = restored_read["pixel_data_sha256"]
                .as_str()
                .expect("uncompressed after decompression");
            let original_hash = &original_pixels[&relative];
            if variant.lossless {
                assert_eq!(
                    restored_hash, original_hash,
                    "{} of {relative:?} lost pixels",
                    variant.name
                );
            } else {
                assert_ne!(
                    restored_hash, original_hash,
                    "{} of {relative:?} should be lossy",
                    variant.name
                );
            }
        }
    }
}
