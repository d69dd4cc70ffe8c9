//! The `flowmap` binary end to end: sampling writes the files it promises, and every kind of bad
//! input gets a clear message naming the problem, a non-zero exit, no panic and no output file.

mod common;

use common::{meta_for, temp_dir, tiny_mlp, tiny_unet, write_random_model};
use flowmap::config::METADATA_KEY;
use flowmap::net::param_specs;
use flowmap::weights::random_tensors;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn flowmap(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flowmap"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `sample` expecting failure with `needle` in the message and no file at `out`.
fn expect_failure(weights: &Path, extra: &[&str], out: &Path, needle: &str) {
    let w = weights.to_str().unwrap();
    let o = out.to_str().unwrap();
    let mut args = vec!["sample", "--weights", w, "--out", o];
    args.extend_from_slice(extra);
    let (ok, _, err) = flowmap(&args);
    assert!(!ok, "{args:?} should fail");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected `{needle}` in: {err}"
    );
    assert!(!out.exists(), "{args:?} left an output file");
    let Ok(entries) = std::fs::read_dir(out.parent().unwrap()) else {
        return;
    };
    let stray: Vec<_> = entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp") || n.starts_with(".flowmap-probe"))
        .collect();
    assert!(stray.is_empty(), "temporary files left: {stray:?}");
}

/// Writes a safetensors file by hand, to make files the library itself would refuse to write.
fn raw_file(path: &Path, tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)], meta: Option<String>) {
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let info = meta.map(|m| HashMap::from([(METADATA_KEY.to_string(), m)]));
    std::fs::write(path, safetensors::serialize(views, info).unwrap()).unwrap();
}

fn valid_tensors() -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    let meta = meta_for(tiny_mlp());
    random_tensors(&param_specs(&meta.model).unwrap(), 1)
        .into_iter()
        .map(|(n, t)| {
            (
                n,
                Dtype::F32,
                t.shape,
                t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect()
}

fn meta_json() -> String {
    meta_for(tiny_mlp()).to_json()
}

#[test]
fn sample_writes_png_and_npy() {
    let dir = temp_dir("cli-ok");
    let w = write_random_model(&dir, "unet.safetensors", tiny_unet(), 1);
    let png = dir.join("grid.png");
    let (ok, out, err) = flowmap(&[
        "sample",
        "--weights",
        w.to_str().unwrap(),
        "--steps",
        "3",
        "--n",
        "5",
        "--out",
        png.to_str().unwrap(),
        "--device",
        "cpu",
        "--step-times",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("step   3/3") && out.contains("samples/s") && out.contains("device: CPU"),
        "{out}"
    );
    assert_eq!(&std::fs::read(&png).unwrap()[..4], b"\x89PNG");

    let npy = dir.join("s.npy");
    let (ok, piped, err) = flowmap(&[
        "sample",
        "--weights",
        w.to_str().unwrap(),
        "--grid",
        "0,0.5,1",
        "--n",
        "5",
        "--out",
        npy.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(ok, "{err}");
    // Without --step-times the steps are pipelined and only the total is timed.
    assert!(
        !piped.contains("  step ") && piped.contains("samples/s"),
        "{piped}"
    );
    let bytes = std::fs::read(&npy).unwrap();
    let header = String::from_utf8_lossy(&bytes[10..128]);
    assert!(header.contains("'shape': (5, 1, 8, 8)"), "{header}");
    assert_eq!(bytes.len() - (bytes.len() - 5 * 64 * 4), 5 * 64 * 4);

    let mlp = write_random_model(&dir, "mlp.safetensors", tiny_mlp(), 1);
    let scatter = dir.join("points.png");
    let (ok, _, err) = flowmap(&[
        "sample",
        "--weights",
        mlp.to_str().unwrap(),
        "--n",
        "300",
        "--out",
        scatter.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(ok, "{err}");
    assert_eq!(&std::fs::read(&scatter).unwrap()[..4], b"\x89PNG");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn info_reports_config_parameters_and_flops() {
    let dir = temp_dir("cli-info");
    let w = write_random_model(&dir, "m.safetensors", tiny_unet(), 1);
    let (ok, out, err) = flowmap(&["info", w.to_str().unwrap(), "--tensors"]);
    assert!(ok, "{err}");
    let params: usize = param_specs(&tiny_unet())
        .unwrap()
        .iter()
        .map(|s| s.numel())
        .sum();
    assert!(out.contains(&format!("parameters:   {params}")), "{out}");
    assert!(
        out.contains("MFLOP per forward")
            && out.contains("conv_in.weight")
            && out.contains("\"arch\":\"unet\""),
        "{out}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_weight_files_are_named_errors() {
    let dir = temp_dir("cli-bad");
    let out = dir.join("out.png");
    let good = write_random_model(&dir, "good.safetensors", tiny_mlp(), 1);
    let bytes = std::fs::read(&good).unwrap();

    expect_failure(&dir.join("absent.safetensors"), &[], &out, "cannot read");

    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    expect_failure(&truncated, &[], &out, "truncated");

    let corrupt = dir.join("corrupt.safetensors");
    std::fs::write(&corrupt, b"this is not a safetensors file at all").unwrap();
    expect_failure(&corrupt, &[], &out, "not a valid safetensors file");

    let empty = dir.join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    expect_failure(&empty, &[], &out, "too short");

    let mut tensors = valid_tensors();
    let p = dir.join("no-meta.safetensors");
    raw_file(&p, &tensors, None);
    expect_failure(&p, &[], &out, "no flowmap metadata");

    let p = dir.join("bad-meta.safetensors");
    raw_file(
        &p,
        &tensors,
        Some("{\"format_version\": 1, \"model\": 3}".into()),
    );
    expect_failure(&p, &[], &out, "invalid flowmap metadata");

    let p = dir.join("newer.safetensors");
    raw_file(
        &p,
        &tensors,
        Some(meta_json().replace("\"format_version\":1", "\"format_version\":7")),
    );
    expect_failure(&p, &[], &out, "format version 7 is newer");

    let p = dir.join("missing.safetensors");
    raw_file(&p, &tensors[1..], Some(meta_json()));
    expect_failure(&p, &[], &out, &format!("missing tensor `{}`", tensors[0].0));

    let p = dir.join("extra.safetensors");
    let mut extra = tensors.clone();
    extra.push(("surplus.weight".into(), Dtype::F32, vec![1], vec![0; 4]));
    raw_file(&p, &extra, Some(meta_json()));
    expect_failure(&p, &[], &out, "unexpected tensor `surplus.weight`");

    let p = dir.join("shape.safetensors");
    let mut wrong = tensors.clone();
    let i = wrong
        .iter()
        .position(|t| t.2.len() == 2 && t.2[0] != t.2[1])
        .unwrap();
    wrong[i].2.reverse();
    raw_file(&p, &wrong, Some(meta_json()));
    expect_failure(&p, &[], &out, &format!("tensor `{}` has shape", wrong[i].0));

    let p = dir.join("dtype.safetensors");
    let mut wrong = tensors.clone();
    wrong[0].1 = Dtype::I32;
    raw_file(&p, &wrong, Some(meta_json()));
    expect_failure(&p, &[], &out, "dtype I32");

    let p = dir.join("nan.safetensors");
    tensors[2].3[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    raw_file(&p, &tensors, Some(meta_json()));
    expect_failure(&p, &[], &out, "non-finite value");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_arguments_are_named_errors() {
    let dir = temp_dir("cli-args");
    let out = dir.join("out.png");
    let w = write_random_model(&dir, "m.safetensors", tiny_mlp(), 1);
    expect_failure(&w, &["--steps", "0"], &out, "steps must be at least 1");
    expect_failure(&w, &["--steps", "1000000"], &out, "more than the limit");
    expect_failure(&w, &["--n", "0"], &out, "--n must be at least 1");
    // More samples than memory holds: refused before any work, with the most that fits.
    expect_failure(
        &w,
        &["--n", "100000000000000"],
        &out,
        "the most that fits is --n",
    );
    expect_failure(
        &w,
        &["--n", "18446744073709551615"],
        &out,
        "more than 16 EiB",
    );
    expect_failure(&w, &["--grid", "0,0.7,0.3,1"], &out, "increase strictly");
    expect_failure(&w, &["--device", "tpu"], &out, "unknown device");
    expect_failure(&w, &["--integrator", "rk4"], &out, "unknown integrator");
    expect_failure(&w, &[], &dir.join("out.jpg"), "must end in .png");
    let unwritable: PathBuf = dir.join("no-such-dir").join("out.png");
    expect_failure(&w, &[], &unwritable, "not writable");
    std::fs::create_dir_all(dir.join("adir.png")).unwrap();
    let (ok, _, err) = flowmap(&[
        "sample",
        "--weights",
        w.to_str().unwrap(),
        "--out",
        dir.join("adir.png").to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(
        !ok && err.contains("is a directory") && !err.contains("panicked"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn sample_without_weights_draws_from_the_shipped_models() {
    let dir = temp_dir("shipped");
    let out = dir.join("digits.npy");
    let o = out.to_str().unwrap();
    // No --weights: the default shipped model, MNIST.
    let (ok, stdout, err) = flowmap(&[
        "sample", "--steps", "1", "--n", "2", "--out", o, "--device", "cpu",
    ]);
    assert!(ok, "{stdout}{err}");
    assert!(stdout.contains("mnist (shipped"), "{stdout}");
    // 2 × 1 × 28 × 28 float32 after the .npy header.
    assert!(std::fs::metadata(&out).unwrap().len() > 2 * 784 * 4);
    let out = dir.join("board.npy");
    let (ok, stdout, err) = flowmap(&[
        "sample",
        "--model",
        "checkerboard",
        "--steps",
        "2",
        "--n",
        "10",
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(ok, "{stdout}{err}");
    assert!(stdout.contains("checkerboard (shipped"), "{stdout}");
    // f16 storage, emulated on the CPU, says so; an unknown precision is a named error and
    // writes nothing.
    let half = dir.join("half.npy");
    let (ok, stdout, err) = flowmap(&[
        "sample",
        "--steps",
        "1",
        "--n",
        "2",
        "--out",
        half.to_str().unwrap(),
        "--device",
        "cpu",
        "--precision",
        "f16",
    ]);
    assert!(ok, "{stdout}{err}");
    assert!(stdout.contains("f16 storage emulated"), "{stdout}");
    let bad = dir.join("bad.npy");
    let (ok, _, err) = flowmap(&[
        "sample",
        "--out",
        bad.to_str().unwrap(),
        "--precision",
        "bf16",
    ]);
    assert!(!ok && !err.contains("panicked"), "{err}");
    assert!(err.contains("unknown precision `bf16`"), "{err}");
    assert!(!bad.exists());
    let (ok, _, err) = flowmap(&["sample", "--model", "cifar", "--out", o]);
    assert!(!ok && !err.contains("panicked"), "{err}");
    assert!(
        err.contains("no shipped model `cifar`") && err.contains("mnist"),
        "{err}"
    );
    let (ok, stdout, err) = flowmap(&["info", "checkerboard"]);
    assert!(ok, "{err}");
    assert!(stdout.contains("method:"), "{stdout}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Each subcommand's help shows examples, and every flag a line of help (clap prints an
/// argument with no help as a bare `--flag <VALUE>` line followed by the next flag).
#[test]
fn every_subcommand_help_has_examples_and_every_flag_a_description() {
    for sub in ["sample", "info", "bench"] {
        let (ok, out, err) = flowmap(&[sub, "--help"]);
        assert!(ok, "{sub} --help failed: {err}");
        assert!(
            out.contains("Examples:"),
            "`flowmap {sub} --help` has no examples"
        );
        let lines: Vec<&str> = out.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim_start();
            if t.starts_with("--") || (t.starts_with('-') && t.contains(", --")) {
                let described = t
                    .split("  ")
                    .filter(|p| !p.trim().is_empty())
                    .skip(1)
                    .any(|p| !p.trim().starts_with("[default"))
                    || lines
                        .get(i + 1)
                        .is_some_and(|n| !n.trim().is_empty() && !n.trim_start().starts_with('-'));
                assert!(described, "`flowmap {sub} --help`: no help for `{t}`");
            }
        }
    }
}

/// A file whose metadata declares an absurd architecture (sizes of 2^31 and more, products that
/// overflow, too many levels) is refused by name before anything is laid out or allocated: no
/// panic, no abort, no output file. The page loads through the same `Weights::from_bytes`.
#[test]
fn absurd_architectures_are_named_errors() {
    let dir = temp_dir("cli-absurd");
    let out = dir.join("out.png");
    let tensors = valid_tensors();
    let mlp = meta_json();
    let unet = meta_for(tiny_unet()).to_json();
    let cases = [
        (
            mlp.replace("\"width\":32", "\"width\":2147483648"),
            "mlp width 2147483648 exceeds",
        ),
        (
            mlp.replace("\"depth\":3", "\"depth\":4294967296"),
            "mlp depth 4294967296 exceeds",
        ),
        (
            mlp.replace("\"dim\":2,", "\"dim\":3000000000,"),
            "mlp dim 3000000000 exceeds",
        ),
        (
            mlp.replace("\"depth\":3", "\"depth\":18446744073709551616"),
            "invalid flowmap metadata",
        ),
        (
            mlp.replace("\"hidden\":32", "\"hidden\":2147483648"),
            "time.hidden 2147483648 exceeds",
        ),
        (
            unet.replace("\"base_channels\":8", "\"base_channels\":2147483648"),
            "base_channels 2147483648 exceeds",
        ),
        (
            unet.replace("\"channel_mult\":[1,2]", "\"channel_mult\":[1,2147483648]"),
            "channel_mult entry 2147483648 exceeds",
        ),
        (
            unet.replace(
                "\"height\":8,\"width\":8",
                "\"height\":2147483648,\"width\":8",
            ),
            "unet height 2147483648 exceeds",
        ),
        (
            unet.replace(
                "\"channel_mult\":[1,2]",
                &format!("\"channel_mult\":[{}]", vec!["1"; 100].join(",")),
            ),
            "levels (channel_mult entries) 100 exceeds",
        ),
        (
            unet.replace("\"height\":8,\"width\":8", "\"height\":1024,\"width\":1024")
                .replace("\"base_channels\":8", "\"base_channels\":512"),
            "values per sample",
        ),
    ];
    for (i, (meta, needle)) in cases.into_iter().enumerate() {
        assert!(
            meta != mlp && meta != unet,
            "case {i}: the replacement did not apply"
        );
        let p = dir.join(format!("absurd-{i}.safetensors"));
        raw_file(&p, &tensors, Some(meta));
        expect_failure(&p, &[], &out, needle);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// `bench --layers` times the CPU backend per layer shape: every convolution of the network
/// appears under its geometry, and the layer rows' calls add up to the conv2d family's.
#[test]
fn bench_layers_lists_every_convolution_by_its_geometry() {
    let dir = temp_dir("bench-layers");
    let w = write_random_model(&dir, "unet.safetensors", tiny_unet(), 3);
    let (ok, out, err) = flowmap(&[
        "bench",
        "--weights",
        w.to_str().unwrap(),
        "--batch",
        "2",
        "--device",
        "cpu",
        "--iters",
        "1",
        "--layers",
    ]);
    assert!(ok, "{err}");
    let calls = |line: &str| -> usize {
        let cols: Vec<&str> = line.split("  ").filter(|c| !c.trim().is_empty()).collect();
        cols[1].trim().parse().unwrap()
    };
    let family = out
        .lines()
        .find(|l| l.trim_start().starts_with("conv2d "))
        .unwrap_or_else(|| panic!("no conv2d family row in:\n{out}"));
    let (_, table) = out
        .split_once("per layer shape")
        .unwrap_or_else(|| panic!("no per-layer table in:\n{out}"));
    let layers: Vec<&str> = table
        .lines()
        .filter(|l| l.trim_start().starts_with("conv"))
        .collect();
    // The stem: 1 input channel to the base width, 8×8, stride 1.
    assert!(
        layers.iter().any(|l| l.contains("conv3x3 1→8 8×8 s1 ")),
        "{out}"
    );
    assert!(
        layers.iter().any(|l| l.contains(" s2")),
        "no downsampler: {out}"
    );
    assert_eq!(
        layers.iter().map(|l| calls(l)).sum::<usize>(),
        calls(family),
        "{out}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// `tune` writes a tuning file for the adapter at hand and `sample --tuning` runs with it; a
/// tuning from another adapter, a file that is not one, and bad `tune` arguments are named
/// errors that leave no output file.
#[test]
fn tune_writes_a_tuning_that_sample_uses() {
    if common::gpu().is_none() {
        return;
    }
    let dir = temp_dir("cli-tune");
    let w = write_random_model(&dir, "unet.safetensors", tiny_unet(), 3);
    let ws = w.to_str().unwrap();
    let t = dir.join("tuning.json");
    let ts = t.to_str().unwrap();
    let f32_gpu = ["--device", "gpu", "--precision", "f32", "--n", "2"];
    let (ok, out, err) = flowmap(&[
        "tune",
        "--weights",
        ws,
        "--batch",
        "2",
        "--reps",
        "1",
        "--precision",
        "f32",
        "--out",
        ts,
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("batch 2: the forward's convolutions take"),
        "{out}"
    );
    let tuning = flowmap::gpu::Tuning::read(&t).unwrap();
    assert!(tuning.convs.iter().all(|c| c.batch == 2) && !tuning.convs.is_empty());

    let png = dir.join("s.png");
    let mut args = vec!["sample", "--weights", ws, "--tuning", ts, "--out"];
    args.push(png.to_str().unwrap());
    args.extend(f32_gpu);
    let (ok, out, err) = flowmap(&args);
    assert!(ok, "{err}");
    assert!(out.contains("kernels: tuned for"), "{out}");
    assert!(png.exists());

    // bench runs its GPU forward with it too.
    let (ok, out, err) = flowmap(&[
        "bench",
        "--weights",
        ws,
        "--batch",
        "2",
        "--device",
        "gpu",
        "--precision",
        "f32",
        "--iters",
        "1",
        "--tuning",
        ts,
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("kernels: tuned for"), "{out}");

    let mut other = tuning.clone();
    other.adapter = "Another GPU".into();
    let other_path = dir.join("other.json");
    std::fs::write(&other_path, other.to_json()).unwrap();
    let garbage = dir.join("garbage.json");
    std::fs::write(&garbage, "{\"flowmap_tuning\": 1}").unwrap();
    let missing = dir.join("missing.json");
    let no_png = dir.join("none.png");
    for (file, needle) in [
        (&other_path, "measured on Another GPU"),
        (&garbage, "not a tuning file"),
        (&missing, "cannot read"),
    ] {
        let mut extra = vec!["--tuning", file.to_str().unwrap()];
        extra.extend(f32_gpu);
        expect_failure(&w, &extra, &no_png, needle);
    }

    let t2 = dir.join("t2.json");
    for (flag, value, needle) in [
        ("--batch", "0", "--batch"),
        ("--batch", "2,x", "--batch"),
        ("--batch", "1000000", "more than one pass"),
        ("--clock", "cpu", "unknown clock"),
        ("--reps", "0", "--reps"),
    ] {
        let (ok, _, err) = flowmap(&[
            "tune",
            "--weights",
            ws,
            flag,
            value,
            "--out",
            t2.to_str().unwrap(),
        ]);
        assert!(
            !ok && err.contains(needle) && !err.contains("panicked"),
            "{flag} {value}: {err}"
        );
        assert!(!t2.exists());
    }
    std::fs::remove_dir_all(dir).unwrap();
}
