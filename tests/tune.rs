//! Kernel tuning (src/gpu/tune.rs) on the adapter at hand: a measured tuning covers every
//! convolution of the forward with the fastest of the kernels that compute it, the backend runs
//! exactly the kernels a tuning names (seen in the timed dispatches), and the tuned forward
//! matches the CPU.

mod common;

use common::{assert_close, gpu, temp_dir, tiny_unet, write_random_model};
use flowmap::backend::Backend;
use flowmap::cpu::CpuBackend;
use flowmap::gpu::tune::{forward_convs, Clock};
use flowmap::gpu::{ConvKernel, GpuBackend, Tuning};
use flowmap::rng::Rng;
use flowmap::weights::Weights;

const BATCHES: [usize; 2] = [1, 3];

fn model(tag: &str) -> Weights {
    let dir = temp_dir(tag);
    let w = Weights::read(&write_random_model(&dir, "m.safetensors", tiny_unet(), 4)).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
    w
}

/// The forward at `batch` on `g` and on the CPU.
fn forward_both(g: &GpuBackend, w: &Weights, batch: usize) -> (Vec<f32>, Vec<f32>) {
    let mut shape = vec![batch];
    shape.extend(w.meta.model.sample_shape());
    let x = Rng::new(2).normals(shape.iter().product(), 1.0);
    let (s, t) = (vec![0.2; batch], vec![0.7; batch]);
    let cpu = CpuBackend::FAST;
    let net = w.network(&cpu).unwrap();
    let want = cpu
        .download(
            &net.velocity(&cpu, &cpu.upload(&x, &shape).unwrap(), &s, &t)
                .unwrap(),
        )
        .unwrap();
    let net = w.network(g).unwrap();
    let got = g
        .download(
            &net.velocity(g, &g.upload(&x, &shape).unwrap(), &s, &t)
                .unwrap(),
        )
        .unwrap();
    (got, want)
}

/// The convolution shaders one forward at `batch` dispatches, in order (GPU clock: the timing
/// window labels each dispatch by its shader).
fn conv_shaders(g: &GpuBackend, w: &Weights, batch: usize) -> Vec<&'static str> {
    let mut shape = vec![batch];
    shape.extend(w.meta.model.sample_shape());
    let net = w.network(g).unwrap();
    let x = g
        .upload(&vec![0.1; shape.iter().product()], &shape)
        .unwrap();
    g.sync().unwrap();
    assert!(
        g.start_timing(),
        "these tests read the dispatched kernels from GPU timestamps, which this adapter lacks"
    );
    drop(
        net.velocity(g, &x, &vec![0.2; batch], &vec![0.7; batch])
            .unwrap(),
    );
    g.sync().unwrap();
    let times = g.finish_timing().unwrap().unwrap();
    times
        .dispatches
        .iter()
        .map(|d| d.0)
        .filter(|s| s.starts_with("conv"))
        .collect()
}

#[test]
fn a_measured_tuning_covers_every_convolution_with_its_fastest_kernel() {
    let Some(g) = gpu() else { return };
    let w = model("tune-measure");
    let mut heard = 0;
    let t = Tuning::measure(&g, &w, &BATCHES, 2, Clock::Auto, |_| heard += 1).unwrap();
    assert_eq!(heard, t.convs.len());
    assert_eq!(t.batches(), BATCHES.to_vec());
    assert_eq!(t.precision, g.precision().name());
    assert_eq!(t.clock, if g.has_timestamps() { "gpu" } else { "wall" });
    for batch in BATCHES {
        let convs = forward_convs(&g, &w, batch).unwrap();
        let tuned: Vec<_> = t.convs.iter().filter(|c| c.batch == batch).collect();
        assert_eq!(tuned.len(), convs.len(), "batch {batch}");
        // The forward runs 1 stem, 2 convolutions per residual block, skips, attention
        // projections: more calls than distinct shapes.
        let calls: usize = convs.iter().map(|c| c.count).sum();
        assert!(calls > convs.len(), "batch {batch}: {calls} calls");
        for (c, f) in tuned.iter().zip(&convs) {
            assert_eq!(c.shape(), f.shape);
            assert_eq!(c.count, f.count);
            let names: Vec<&str> = f.shape.candidates().iter().map(|k| k.shader()).collect();
            let timed: Vec<&str> = c.us.keys().map(|k| k.as_str()).collect();
            let mut sorted = names.clone();
            sorted.sort_unstable();
            assert_eq!(timed, sorted, "{}: every candidate timed", c.layer);
            let fastest = c.us.iter().min_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
            assert_eq!(&c.kernel, fastest, "{}", c.layer);
            assert_eq!(
                c.rule,
                f.shape.rule(flowmap::gpu::ConvTiles::ByLayer).shader()
            );
            assert!(c.us.values().all(|&us| us > 0.0), "{}: {:?}", c.layer, c.us);
        }
        // The tiny U-Net's 8×8 stride-1 3×3 layers offer conv3x3.wgsl; the 1×1 layers do not.
        assert!(tuned.iter().any(|c| c.us.contains_key("conv3x3.wgsl")));
        assert!(tuned
            .iter()
            .filter(|c| c.w[2] == 1)
            .all(|c| c.us.len() == 3));
        let (rule, best) = t.forward_us(batch);
        assert!(
            best > 0.0 && best <= rule,
            "batch {batch}: {best} vs {rule}"
        );
    }
    assert_eq!(Tuning::from_json(&t.to_json()).unwrap(), t);
}

/// A tuning that names, for every convolution, a kernel the rule does not pick (the slowest
/// other candidate): the forward dispatches exactly those, still matches the CPU, and goes back
/// to the rule when the tuning is cleared.
#[test]
fn the_backend_runs_the_kernels_a_tuning_names() {
    let Some(g) = gpu() else { return };
    let w = model("tune-use");
    let batch = 3;
    let mut t = Tuning::measure(&g, &w, &[batch], 1, Clock::Auto, |_| {}).unwrap();
    let mut changed = 0;
    for c in &mut t.convs {
        let other =
            c.us.iter()
                .filter(|(k, _)| **k != c.rule)
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(k, _)| k.clone());
        if let Some(k) = other {
            c.kernel = k;
            changed += 1;
        }
    }
    assert!(changed > 0);
    let rule = conv_shaders(&g, &w, batch);
    assert_eq!(g.use_tuning(&t).unwrap(), t.convs.len());
    let tuned = conv_shaders(&g, &w, batch);
    assert_eq!(rule.len(), tuned.len());
    let convs = forward_convs(&g, &w, batch).unwrap();
    // Each dispatch runs its shape's named kernel: count per shader, as the forward runs them.
    let mut want: Vec<&str> = Vec::new();
    for f in &convs {
        let c = t.convs.iter().find(|c| c.shape() == f.shape).unwrap();
        let k = ConvKernel::from_shader(&c.kernel).unwrap().shader();
        want.extend(std::iter::repeat_n(k, f.count));
    }
    let (mut want, mut got) = (want, tuned.clone());
    want.sort_unstable();
    got.sort_unstable();
    assert_eq!(got, want);
    assert_ne!(tuned, rule, "the tuning changed no dispatch");
    let (got, expected) = forward_both(&g, &w, batch);
    assert_close("tuned forward vs CPU", &got, &expected);
    g.clear_tuning();
    assert_eq!(conv_shaders(&g, &w, batch), rule);
}

#[test]
fn a_tuning_from_another_adapter_or_precision_is_refused() {
    let Some(g) = gpu() else { return };
    let w = model("tune-refuse");
    let t = Tuning::measure(&g, &w, &[1], 1, Clock::Auto, |_| {}).unwrap();
    let mut other = t.clone();
    other.adapter = "Some Other GPU".into();
    let e = g.use_tuning(&other).unwrap_err().to_string();
    assert!(
        e.contains("measured on Some Other GPU") && e.contains("flowmap tune"),
        "{e}"
    );
    let mut other = t.clone();
    other.precision = if t.precision == "f32" { "f16" } else { "f32" }.into();
    let e = g.use_tuning(&other).unwrap_err().to_string();
    assert!(e.contains("storage"), "{e}");
    // A refused tuning changes nothing: the one installed before still runs.
    let rule = conv_shaders(&g, &w, 1);
    g.use_tuning(&t).unwrap();
    let tuned = conv_shaders(&g, &w, 1);
    g.use_tuning(&other).unwrap_err();
    assert_eq!(conv_shaders(&g, &w, 1), tuned);
    g.clear_tuning();
    assert_eq!(conv_shaders(&g, &w, 1), rule);
}

/// The host's clock, for adapters without timestamps (or with untrusted ones): the same
/// coverage and choice, timed around submitted batches.
#[test]
fn a_tuning_can_be_measured_on_the_host_clock() {
    let Some(g) = gpu() else { return };
    let w = model("tune-wall");
    let t = Tuning::measure(&g, &w, &[2], 1, Clock::Wall, |_| {}).unwrap();
    assert_eq!(t.clock, "wall");
    assert_eq!(t.convs.len(), forward_convs(&g, &w, 2).unwrap().len());
    for c in &t.convs {
        let fastest = c.us.iter().min_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        assert_eq!(&c.kernel, fastest, "{}", c.layer);
        assert!(c.us.values().all(|&us| us > 0.0), "{}: {:?}", c.layer, c.us);
    }
    assert_eq!(Clock::parse("wall").unwrap(), Clock::Wall);
    assert!(Clock::parse("cpu")
        .unwrap_err()
        .to_string()
        .contains("auto, wall"));
}
