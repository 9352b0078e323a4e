//! The command line of DESIGN.md's contract, against the binary cargo built for this test
//! (refusals of bad flag values are tested end to end in `tests/tests/serve.rs`).
//!
//! Also why this file exists at all: an integration test makes `cargo test --workspace` build
//! the `radserve` binary with the workspace's features, and `scripts/test.sh` hands that binary
//! to the end-to-end tests (`RADSERVE_BIN`), so the suite builds burn once, not twice.

use std::process::Command;

fn radserve(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_radserve"))
        .args(args)
        .env_remove("RADSERVE_DEVICE")
        .output()
        .expect("the radserve binary runs")
}

#[test]
fn serve_help_lists_every_flag_of_the_contract() {
    let output = radserve(&["serve", "--help"]);
    assert!(output.status.success(), "{output:?}");
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--data",
        "--config",
        "--dicom-port",
        "--http-port",
        "--ae-title",
        "--device",
    ] {
        assert!(
            help.contains(flag),
            "`serve --help` does not mention {flag}:\n{help}"
        );
    }
}
