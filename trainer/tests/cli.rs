//! The trainer's command line: a bad value of a global flag is a named error with a non-zero exit,
//! before any work.

use std::process::Command;

#[test]
fn an_unknown_wgpu_convolution_path_is_a_named_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["--wgpu-conv", "winograd", "data", "toy", "spiral", "10"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted --wgpu-conv winograd");
    assert!(
        err.contains("unknown convolution path `winograd` (burn, gemm)"),
        "{err}"
    );
    // The flag is global: it may follow the subcommand too, and a known value runs.
    let ok = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["data", "toy", "spiral", "10", "--wgpu-conv", "gemm"])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}
