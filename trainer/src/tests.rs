//! Trainer tests: burn-vs-sampler parity, the losses against the exact Gaussian flow map
//! (METHOD §8), derivatives against independent estimates, and the training loop's promises
//! (learning, resuming, NaN stop, incompatible checkpoints, export).

use crate::burn_backend::{BurnBackend, BurnTensor};
use crate::config::TrainConfig;
use crate::flow::{scale_rows, FlowModel, GaussianOracle};
use crate::objectives::{self, Batch, Ctx, Objective};
use crate::params::ParamStore;
use burn::tensor::Device;
use flowmap::backend::{Backend, Shaped};
use flowmap::config::{Interpolant, ModelConfig};
use flowmap::cpu::CpuBackend;
use flowmap::rng::Rng;
use flowmap::tolerance::assert_close;
use flowmap::weights::random_tensors;
use flowmap::Result;

fn flex() -> BurnBackend {
    BurnBackend::new(Device::flex().autodiff())
}

/// Parameters of `cfg` drawn from a seed (flowmap's `random_tensors`) on `be`'s device.
fn random_store(cfg: &ModelConfig, seed: u64, be: &BurnBackend) -> ParamStore {
    ParamStore::from_host(
        cfg,
        &random_tensors(&flowmap::net::param_specs(cfg).unwrap(), seed),
        &be.device,
    )
    .unwrap()
}

fn tiny_unet() -> ModelConfig {
    serde_json::from_str(
        r#"{"arch":"unet","in_channels":1,"height":8,"width":8,"base_channels":8,"channel_mult":[1,2],
            "blocks_per_level":1,"attention_levels":[1],"heads":2,"groups":4,"time":{"dim":16,"hidden":32}}"#,
    )
    .unwrap()
}

fn tiny_mlp() -> ModelConfig {
    serde_json::from_str(r#"{"arch":"mlp","dim":2,"width":32,"depth":3,"activation":"gelu","time":{"dim":16,"hidden":32}}"#).unwrap()
}

fn tiny_raw_mlp() -> ModelConfig {
    serde_json::from_str(
        r#"{"arch":"mlp","dim":2,"width":32,"depth":3,"activation":"gelu","conditioning":"raw"}"#,
    )
    .unwrap()
}

/// The burn network (flowmap's flex ops for convolutions and norms) and the flowmap sampler's
/// backends agree on the same weights and inputs, for the tiny test networks and every
/// architecture the presets offer.
#[test]
fn burn_network_matches_the_sampler_backends() {
    for (name, cfg) in [
        ("unet", tiny_unet()),
        ("mlp", tiny_mlp()),
        ("mlp-raw", tiny_raw_mlp()),
        ("preset mnist", ModelConfig::mnist_default()),
        ("preset mnist-s2", ModelConfig::mnist_stem()),
        ("preset toy2d", ModelConfig::toy2d_default()),
        ("preset toy2d-raw", ModelConfig::toy2d_raw()),
    ] {
        let tensors = random_tensors(&flowmap::net::param_specs(&cfg).unwrap(), 3);
        let n = 3;
        let x = Rng::new(9).normals(n * cfg.sample_len(), 1.0);
        let (s, t) = ([0.0f32, 0.2, 0.7], [1.0f32, 0.5, 0.7]);
        let mut shape = vec![n];
        shape.extend(cfg.sample_shape());

        let be = flex();
        let net = ParamStore::from_host(&cfg, &tensors, &be.device)
            .unwrap()
            .network(&cfg)
            .unwrap();
        let got = be
            .download(
                &net.velocity(&be, &be.tensor(x.clone(), &shape), &s, &t)
                    .unwrap(),
            )
            .unwrap();

        let cpu = CpuBackend::FAST;
        let cnet = flowmap::weights::network_from_tensors(&cfg, &tensors, &cpu).unwrap();
        let want = cpu
            .download(
                &cnet
                    .velocity(&cpu, &cpu.upload(&x, &shape).unwrap(), &s, &t)
                    .unwrap(),
            )
            .unwrap();
        assert_close(&format!("{name}: burn vs flowmap CPU"), &got, &want, 1e-4);

        match flowmap::gpu::GpuContext::new(true) {
            Ok(ctx) => {
                let g = flowmap::gpu::GpuBackend::new(ctx);
                let gnet = flowmap::weights::network_from_tensors(&cfg, &tensors, &g).unwrap();
                let gpu = g
                    .download(
                        &gnet
                            .velocity(&g, &g.upload(&x, &shape).unwrap(), &s, &t)
                            .unwrap(),
                    )
                    .unwrap();
                assert_close(&format!("{name}: burn vs flowmap GPU"), &got, &gpu, 1e-4);
            }
            Err(e) if std::env::var_os("CI").is_some() => {
                panic!("CI is set but no GPU adapter was found: {e}")
            }
            Err(e) => eprintln!("\n*** GPU PARITY NOT RUN: {e} ***\n"),
        }
    }
}

/// A flow map that is exact on the diagonal but breaks the Lagrangian, Eulerian and semigroup
/// conditions: v(s, t, x) = v*(s, t, x) + ε (t − s) x.
struct Perturbed {
    exact: GaussianOracle,
    eps: f32,
}

impl FlowModel for Perturbed {
    fn velocity(
        &self,
        be: &BurnBackend,
        x: &BurnTensor,
        s: &[f32],
        t: &[f32],
    ) -> Result<BurnTensor> {
        let v = self.exact.velocity(be, x, s, t)?;
        let c: Vec<f32> = s.iter().zip(t).map(|(s, t)| self.eps * (t - s)).collect();
        Ok(BurnTensor::new(v.t + scale_rows(be, x, &c).t, x.shape()))
    }
}

const ORACLE: GaussianOracle = GaussianOracle {
    mu: 0.5,
    sigma0: 1.0,
    sigma1: 0.4,
};
const DIM: usize = 4;

fn gaussian_batch(n: usize, seed: u64) -> Batch {
    let mut rng = Rng::new(seed);
    let x0 = rng.normals(n * DIM, ORACLE.sigma0);
    let x1 = rng
        .normals(n * DIM, ORACLE.sigma1)
        .into_iter()
        .map(|v| v + ORACLE.mu)
        .collect();
    Batch {
        x0,
        x1,
        shape: vec![DIM],
        n,
    }
}

/// Evaluates an objective with `student` (and its own stop-gradient copy) against the exact teacher.
fn loss_parts(obj: Objective, student: &dyn FlowModel, n: usize) -> Vec<(String, f32)> {
    let be = flex();
    let ctx = Ctx {
        be: &be,
        student,
        student_sg: student,
        teacher: Some(&ORACLE),
        teacher_map: Some(&ORACLE),
        interpolant: Interpolant::Linear,
        max_gap: 1.0,
        psd_uniform: false,
        share_times: 1,
        eta: crate::config::d::eta(),
    };
    let l = objectives::loss(obj, &ctx, &gaussian_batch(n, 1), &mut Rng::new(2)).unwrap();
    let mut out = vec![("total".to_string(), l.total.into_scalar::<f32>())];
    out.extend(
        l.parts
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into_scalar::<f32>())),
    );
    out
}

/// The irreducible E|İ_t − b_t(I_t)|² of the diagonal term (METHOD §8), for the η share of a
/// batch and t ~ U[0, 1]: Var(x1 − x0 | I_t) = σ0² + σ1² − (t σ1² − (1 − t) σ0²)² / s_t² per
/// coordinate.
fn irreducible(share: f64) -> f64 {
    let (a, b) = (
        (ORACLE.sigma0 as f64).powi(2),
        (ORACLE.sigma1 as f64).powi(2),
    );
    let m = 10_000;
    let mean: f64 = (0..m)
        .map(|i| {
            let t = (i as f64 + 0.5) / m as f64;
            let st2 = (1.0 - t).powi(2) * a + t * t * b;
            a + b - (t * b - (1.0 - t) * a).powi(2) / st2
        })
        .sum::<f64>()
        / m as f64;
    share * DIM as f64 * mean
}

#[test]
fn every_loss_vanishes_on_the_exact_flow_map_and_not_on_a_perturbed_one() {
    let n = 4096;
    let bad = Perturbed {
        exact: ORACLE,
        eps: 1.0,
    };
    for obj in [Objective::Lmd, Objective::Emd, Objective::Pfmm] {
        let exact = loss_parts(obj, &ORACLE, n)[0].1;
        let wrong = loss_parts(obj, &bad, n)[0].1;
        assert!(exact < 2e-3, "{}: {exact} on the exact map", obj.name());
        assert!(
            wrong > 0.05 && wrong > 50.0 * exact,
            "{}: {wrong} on the perturbed map (exact {exact})",
            obj.name()
        );
    }
    // Self-distillation: the off-diagonal term vanishes; the diagonal keeps its irreducible variance.
    for obj in [Objective::Lsd, Objective::Psd, Objective::Esd] {
        let exact = loss_parts(obj, &ORACLE, n);
        let wrong = loss_parts(obj, &bad, n);
        let (diag, off) = (exact[1].1, exact[2].1);
        assert!(
            off < 2e-3,
            "{}: off-diagonal {off} on the exact map",
            obj.name()
        );
        let want = irreducible(crate::config::d::eta());
        assert!(
            (diag as f64 - want).abs() < 0.1 * want,
            "{}: diagonal {diag}, irreducible {want:.4}",
            obj.name()
        );
        assert!(
            wrong[2].1 > 0.01 && wrong[2].1 > 50.0 * off,
            "{}: perturbed off-diagonal {}",
            obj.name(),
            wrong[2].1
        );
    }
    let fm = loss_parts(Objective::Fm, &ORACLE, n)[0].1 as f64;
    assert!(
        (fm - irreducible(1.0)).abs() < 0.1 * irreducible(1.0),
        "fm {fm} vs {}",
        irreducible(1.0)
    );
}

/// The finite-difference ∂_t X used in training, on a real network, against a Richardson
/// extrapolation from two larger steps (an independent estimate).
#[test]
fn network_time_derivative_matches_richardson_estimate() {
    use crate::objectives::derivative::{time_derivative, Wrt, FD_STEP};
    let cfg = tiny_mlp();
    let be = flex();
    let net = random_store(&cfg, 5, &be).network(&cfg).unwrap();
    let n = 16;
    let x = be.tensor(Rng::new(3).normals(n * 2, 1.0), &[n, 2]);
    let s: Vec<f32> = (0..n).map(|i| 0.05 * i as f32 / n as f32).collect();
    let t: Vec<f32> = (0..n).map(|i| 0.3 + 0.5 * i as f32 / n as f32).collect();
    let d = |h| {
        be.download(&time_derivative(&net, &be, &x, &s, &t, Wrt::T, h).unwrap().0)
            .unwrap()
    };
    let (train, coarse, fine) = (d(FD_STEP), d(4.0 * FD_STEP), d(2.0 * FD_STEP));
    let richardson: Vec<f32> = coarse
        .iter()
        .zip(&fine)
        .map(|(c, f)| (4.0 * f - c) / 3.0)
        .collect();
    assert_close("∂_t X: FD(1e-3) vs Richardson", &train, &richardson, 5e-3);
}

/// What the split of `lmd` (and every self-distillation loss) rests on: at t = s the
/// finite-difference ∂_t X_{s,t}(x) of a real network is v(s, s, x) and its midpoint is x
/// (METHOD §3), so the diagonal pairs need no difference pair.
#[test]
fn diagonal_time_derivative_is_the_velocity() {
    use crate::objectives::derivative::{time_derivative, Wrt, FD_STEP};
    let cfg = tiny_mlp();
    let be = flex();
    let net = random_store(&cfg, 6, &be).network(&cfg).unwrap();
    let n = 16;
    let xs = Rng::new(4).normals(n * 2, 1.0);
    let x = be.tensor(xs.clone(), &[n, 2]);
    // Inside (0, 1), where the difference is central (at t = 0 and 1 it is one-sided, with an
    // O(h) error that the exact diagonal term does not have).
    let t: Vec<f32> = (0..n).map(|i| (i as f32 + 0.5) / n as f32).collect();
    let (dx, mid) = time_derivative(&net, &be, &x, &t, &t, Wrt::T, FD_STEP).unwrap();
    let v = be
        .download(&net.velocity(&be, &x, &t, &t).unwrap())
        .unwrap();
    assert_close(
        "∂_t X at t = s vs v(t, t)",
        &be.download(&dx).unwrap(),
        &v,
        5e-3,
    );
    assert_close(
        "X_{t,t±h} midpoint vs x",
        &be.download(&mid).unwrap(),
        &xs,
        5e-3,
    );
}

/// Samples that share their times get the time conditioning once, each row read by its run of
/// samples (`TrainConfig::share_times`); the gradients through that broadcast must be the sum
/// of each sample's own gradients, for both architectures.
#[test]
fn shared_time_gradients_are_the_sum_of_per_sample_gradients() {
    for cfg in [tiny_mlp(), tiny_unet()] {
        let be = flex();
        let store = random_store(&cfg, 7, &be).require_grad();
        let len = cfg.sample_len();
        let (s, t) = (
            [0.2f32, 0.2, 0.2, 0.5, 0.5, 0.5],
            [0.7f32, 0.7, 0.7, 0.9, 0.9, 0.9],
        );
        let n = s.len();
        let x = Rng::new(8).normals(n * len, 1.0);
        let w = Rng::new(9).normals(n * len, 1.0);
        // Σ w · v(s, t, x) over the given samples, and its gradient per parameter.
        let grads = |idx: std::ops::Range<usize>| -> Vec<Vec<f32>> {
            let mut shape = vec![idx.len()];
            shape.extend(cfg.sample_shape());
            let xs = be.tensor(x[idx.start * len..idx.end * len].to_vec(), &shape);
            // A fresh graph per backward pass (burn consumes the tape).
            let net = store.network(&cfg).unwrap();
            let v = net
                .velocity(&be, &xs, &s[idx.clone()], &t[idx.clone()])
                .unwrap();
            let wt = be.tensor(w[idx.start * len..idx.end * len].to_vec(), &shape);
            let g = (v.r1() * wt.r1()).sum().backward();
            store
                .values
                .iter()
                .map(|p| p.grad(&g).unwrap().into_data().try_to_vec::<f32>().unwrap())
                .collect()
        };
        let batched = grads(0..n);
        let mut summed = grads(0..1);
        for i in 1..n {
            for (a, b) in summed.iter_mut().zip(grads(i..i + 1)) {
                a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
            }
        }
        for ((spec, a), b) in store.specs.iter().zip(&batched).zip(&summed) {
            assert_close(&format!("∂/∂{}", spec.name), a, b, 1e-4);
        }
    }
}

#[test]
fn shared_draws_repeat_each_draw_over_consecutive_samples() {
    let mut k = 0;
    let v = objectives::shared_draws(7, 3, || {
        k += 1;
        k
    });
    assert_eq!(v, [1, 1, 1, 2, 2, 2, 3]);
    let p = objectives::sample_pairs(&mut Rng::new(1), 64, 0.5, 4);
    for run in 0..16 {
        let r = run * 4..run * 4 + 4;
        assert!(p.s[r.clone()].iter().all(|&v| v == p.s[r.start]));
        assert!(p.t[r.clone()].iter().all(|&v| v == p.t[r.start]));
        assert!(p.diagonal[r.clone()]
            .iter()
            .all(|&d| d == p.diagonal[r.start]));
    }
    assert!(p.s[0] != p.s[4] && p.diagonal.iter().any(|&d| d) && !p.diagonal.iter().all(|&d| d));
}

#[test]
fn eta_is_the_share_of_diagonal_pairs() {
    for eta in [0.0, 0.3, 0.75, 1.0] {
        let p = objectives::sample_pairs(&mut Rng::new(3), 20_000, eta, 1);
        let share = p.diagonal.iter().filter(|&&d| d).count() as f64 / 20_000.0;
        assert!(
            (share - eta).abs() < 0.015,
            "eta {eta}: diagonal share {share}"
        );
        for i in 0..p.s.len() {
            assert_eq!(p.diagonal[i], p.s[i] == p.t[i], "pair {i}");
            assert!(p.s[i] <= p.t[i]);
        }
    }
    let mut c = quick(Objective::Lsd, 1);
    c.eta = 1.5;
    assert!(c.validate().unwrap_err().contains("eta"));
    // Saved configs from before the option read as the authors' 0.75.
    let mut table: toml::Table =
        toml::from_str(&toml::to_string(&quick(Objective::Lsd, 1)).unwrap()).unwrap();
    table.remove("eta");
    let old: TrainConfig = toml::from_str(&toml::to_string(&table).unwrap()).unwrap();
    assert_eq!(old.eta, 0.75);
}

fn quick(obj: Objective, steps: usize) -> TrainConfig {
    let mut c = TrainConfig::new(obj, "checkerboard");
    c.model = Some(tiny_mlp());
    c.steps = steps;
    c.batch = 128;
    c.lr = 3e-3;
    c.warmup = 5;
    c.log_every = 5;
    c.checkpoint_every = 1000;
    c
}

/// A teacher for the distillation objectives: a briefly trained fm model (run directory, weights).
fn quick_teacher(tag: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = tmp(tag);
    let model = crate::train::train(&quick(Objective::Fm, 3), Device::flex(), &dir, None, true)
        .unwrap()
        .model_path;
    (dir, model)
}

fn tmp(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("flowmap-trainer-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn training_lowers_the_loss_and_exports_a_loadable_model() {
    let dir = tmp("learn");
    let cfg = quick(Objective::Fm, 60);
    let s = crate::train::train(&cfg, Device::flex(), &dir, None, true).unwrap();
    let log = std::fs::read_to_string(dir.join("loss.csv")).unwrap();
    let losses: Vec<f32> = log
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(2).unwrap().parse().unwrap())
        .collect();
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(last < 0.8 * first, "fm loss went {first} → {last}");
    let w = flowmap::weights::Weights::read(&s.model_path).unwrap();
    assert_eq!(w.meta.method, "fm");
    assert_eq!(w.meta.provenance["steps"], "60");
    assert!(w.meta.provenance.contains_key("git"));
    // The exported EMA weights sample in flowmap.
    let cpu = CpuBackend::FAST;
    let net = w.network(&cpu).unwrap();
    let noise = flowmap::sampler::initial_noise(&w.meta, 8, 0);
    let (out, _) = flowmap::sampler::sample(
        &cpu,
        &net,
        &noise,
        &flowmap::sampler::uniform_grid(2).unwrap(),
        flowmap::sampler::Integrator::FlowMap,
        8,
    )
    .unwrap();
    assert!(out.iter().all(|v| v.is_finite()));
    // `trainer export` writes the same EMA weights; with --raw, the checkpoint's parameters.
    let ckpt = dir.join("checkpoint.safetensors");
    let f32s = flowmap::weights::StoreDtype::F32;
    crate::export::from_checkpoint(&ckpt, &dir.join("ema.safetensors"), f32s, false).unwrap();
    crate::export::from_checkpoint(&ckpt, &dir.join("raw.safetensors"), f32s, true).unwrap();
    let ema = flowmap::weights::Weights::read(&dir.join("ema.safetensors")).unwrap();
    let raw = flowmap::weights::Weights::read(&dir.join("raw.safetensors")).unwrap();
    let groups = crate::checkpoint::load(&ckpt).unwrap().1;
    for (name, t) in &w.tensors {
        assert_eq!(ema.tensors[name].data, t.data, "{name}");
        assert_eq!(raw.tensors[name].data, groups["param"][name], "{name}");
    }
    assert!(w.tensors.iter().any(|(n, t)| raw.tensors[n].data != t.data));
    assert!(raw.meta.provenance["weights"].contains("raw"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn resuming_continues_the_run_exactly() {
    let (a, b) = (tmp("straight"), tmp("resumed"));
    let full = quick(Objective::Lsd, 12);
    crate::train::train(&full, Device::flex(), &a, None, true).unwrap();
    let mut half = full.clone();
    half.steps = 6;
    crate::train::train(&half, Device::flex(), &b, None, true).unwrap();
    // Forking the half run into c finishes it there, from b's checkpoint and log, and leaves b
    // at step 6; a fork into a directory that holds a run is refused.
    let c = tmp("forked");
    crate::train::train(&full, Device::flex(), &c, Some(&b), true).unwrap();
    let step_of = |d: &std::path::Path| {
        crate::checkpoint::load(&d.join("checkpoint.safetensors"))
            .unwrap()
            .0
            .step
    };
    assert_eq!((step_of(&b), step_of(&c)), (6, 12));
    let e = crate::train::train(&full, Device::flex(), &a, Some(&b), true)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("already holds a run"), "{e}");
    // A run killed between checkpoints logged steps past its checkpoint (6): the resumed run
    // drops them and logs them again, so loss.csv reads as if it had never stopped.
    let mut log = std::fs::read_to_string(b.join("loss.csv")).unwrap();
    log.push_str("10,1e-3,9.0,9.0,1.0,1.0\n");
    std::fs::write(b.join("loss.csv"), log).unwrap();
    crate::train::train(&full, Device::flex(), &b, Some(&b), true).unwrap();
    // (step, loss) of each row; the resumed log also has the half run's last step, 6.
    let rows = |d: &std::path::Path| -> Vec<(String, String)> {
        std::fs::read_to_string(d.join("loss.csv"))
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f[0].to_string(), f[2].to_string())
            })
            .filter(|r| r.0 != "6")
            .collect()
    };
    assert_eq!(
        rows(&b),
        rows(&a),
        "the stale step-10 row is replaced, nothing doubled"
    );
    assert_eq!(rows(&c), rows(&a), "the fork's log continues b's");
    let wa = flowmap::weights::Weights::read(&a.join("model.safetensors")).unwrap();
    for (label, d) in [("resumed", &b), ("forked", &c)] {
        let w = flowmap::weights::Weights::read(&d.join("model.safetensors")).unwrap();
        for (name, ta) in &wa.tensors {
            assert_close(
                &format!("{label} {name}"),
                &w.tensors[name].data,
                &ta.data,
                1e-5,
            );
        }
    }
    // A checkpoint of another model is refused by name.
    let mut other = full.clone();
    other.model =
        Some(serde_json::from_str(r#"{"arch":"mlp","dim":2,"width":16,"depth":2}"#).unwrap());
    let e = crate::train::train(&other, Device::flex(), &b, Some(&b), true)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("incompatible checkpoint"), "{e}");
    for d in [a, b, c] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn non_finite_loss_stops_training_with_a_message() {
    let dir = tmp("nan");
    let mut cfg = quick(Objective::Fm, 5);
    cfg.sigma0 = Some(f32::NAN);
    let e = crate::train::train(&cfg, Device::flex(), &dir, None, true)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("training stopped at step 0") && e.contains("NaN"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn every_objective_trains_a_few_steps() {
    let (tdir, teacher) = quick_teacher("teacher");
    for obj in Objective::ALL {
        let dir = tmp(obj.name());
        let mut cfg = quick(obj, 4);
        cfg.pfmm_stages = 2;
        if obj.needs_teacher() {
            cfg.teacher = Some(teacher.clone());
        }
        let s = crate::train::train(&cfg, Device::flex(), &dir, None, true)
            .unwrap_or_else(|e| panic!("{}: {e:#}", obj.name()));
        assert!(s.final_loss.is_finite(), "{}", obj.name());
        std::fs::remove_dir_all(dir).unwrap();
    }
    std::fs::remove_dir_all(tdir).unwrap();
}

/// `pfmm_from_init`: stage 0's teacher map is the init network, frozen, while the student moves;
/// no `fm` teacher is given.
#[test]
fn pfmm_from_init_distills_the_frozen_init_network() {
    let (tdir, init) = quick_teacher("pfmm-init");
    let dir = tmp("pfmm-self");
    let mut cfg = quick(Objective::Pfmm, 3);
    cfg.pfmm_stages = 1;
    cfg.pfmm_from_init = true;
    cfg.init = Some(init.clone());
    let s = crate::train::train(&cfg, Device::flex(), &dir, None, true).unwrap();
    assert!(s.final_loss.is_finite() && s.final_loss > 0.0);
    let (meta, groups) = crate::checkpoint::load(&dir.join("checkpoint.safetensors")).unwrap();
    assert_eq!(meta.teacher_stage, Some(0));
    let w = flowmap::weights::Weights::read(&init).unwrap();
    let max_diff = |group: &str| {
        w.tensors
            .iter()
            .map(|(name, t)| {
                t.data
                    .iter()
                    .zip(&groups[group][name])
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max)
            })
            .fold(0.0f32, f32::max)
    };
    assert_eq!(max_diff("stage_teacher"), 0.0, "the teacher map moved");
    assert!(max_diff("param") > 1e-4, "the student did not train");
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::remove_dir_all(tdir).unwrap();
}

#[test]
fn init_starts_the_run_from_the_given_weights_and_refuses_another_architecture() {
    let (tdir, teacher) = quick_teacher("init-teacher");
    let dir = tmp("init-student");
    let mut cfg = quick(Objective::Lmd, 1);
    cfg.teacher = Some(teacher.clone());
    cfg.init = Some(teacher.clone());
    // A vanishing learning rate: the exported EMA weights are the starting weights.
    cfg.lr = 1e-9;
    let s = crate::train::train(&cfg, Device::flex(), &dir, None, true).unwrap();
    let a = flowmap::weights::Weights::read(&teacher).unwrap();
    let b = flowmap::weights::Weights::read(&s.model_path).unwrap();
    assert_eq!(
        b.meta.provenance.get("init"),
        Some(&teacher.display().to_string())
    );
    for (name, t) in &a.tensors {
        let u = &b.tensors[name];
        let diff = t
            .data
            .iter()
            .zip(&u.data)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-6, "{name} moved by {diff}");
    }
    let mut other = quick(Objective::Lsd, 1);
    other.init = Some(teacher);
    other.model = Some(ModelConfig::toy2d_default());
    let e = crate::train::train(&other, Device::flex(), &tmp("init-bad"), None, true)
        .err()
        .expect("a different architecture is refused")
        .to_string();
    assert!(e.contains("--init") && e.contains("this run trains"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(tdir);
}

#[test]
fn eval_writes_the_quality_table_for_points() {
    let dir = tmp("eval");
    let model = crate::train::train(
        &quick(Objective::Lsd, 30),
        Device::flex(),
        &dir.join("run"),
        None,
        true,
    )
    .unwrap()
    .model_path;
    let args = crate::eval::EvalArgs {
        models: vec![model.clone()],
        teacher: Some(model),
        out: dir.join("RESULTS.md"),
        figures: Some(dir.join("fig")),
        samples: Some(4000),
        ks: vec![1, 2, 4],
        device: "cpu".into(),
        precision: "f32".into(),
        classifier: dir.join("unused.safetensors"),
        seed: 0,
        teacher_nfe: 8,
    };
    let md = crate::eval::run(&args).unwrap();
    assert!(md.contains("| method | K = 1 | K = 2 | K = 4 |"), "{md}");
    assert!(
        md.contains("Euler at equal NFE") && md.contains("Heun at equal NFE"),
        "{md}"
    );
    // Heun has no 1-evaluation sampler: its K = 1 cell is empty.
    let heun = md.lines().find(|l| l.contains("Heun")).unwrap();
    assert!(heun.contains("| — |"), "{heun}");
    // A run's model.safetensors is named after its run directory (`run`).
    assert!(dir.join("fig/quality-vs-nfe.png").exists() && dir.join("fig/run-k4.png").exists());
    let report = std::fs::read_to_string(dir.join("RESULTS.md")).unwrap();
    assert!(report.starts_with("# Quality versus steps"), "{report}");
    assert!(
        report.contains(&format!("<!-- trainer eval: checkerboard -->\n{md}")),
        "{report}"
    );
    // A teacher alone: its rows, no flow-map row.
    let alone = crate::eval::run(&crate::eval::EvalArgs {
        models: vec![],
        out: dir.join("teacher.md"),
        ..args.clone()
    })
    .unwrap();
    assert!(
        alone.contains("Euler at equal NFE") && !alone.contains("K jumps"),
        "{alone}"
    );
    // f16 storage, emulated on the CPU: the report says so.
    let half = crate::eval::run(&crate::eval::EvalArgs {
        models: vec![args.teacher.clone().unwrap()],
        teacher: None,
        out: dir.join("f16.md"),
        ks: vec![1],
        precision: "f16".into(),
        ..args
    })
    .unwrap();
    assert!(half.contains("f16 storage emulated"), "{half}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn feature_classifier_learns_digits_and_round_trips() {
    use crate::data::idx::load_images;
    use crate::eval::classifier::Classifier;
    let root = crate::data::bundled_dir();
    let train = load_images(
        &root.join("train-images-idx3-ubyte.gz"),
        &root.join("train-labels-idx1-ubyte.gz"),
    )
    .unwrap();
    let test = load_images(
        &root.join("test-images-idx3-ubyte.gz"),
        &root.join("test-labels-idx1-ubyte.gz"),
    )
    .unwrap();
    let c = Classifier::train(&train, 120, 0, &Device::flex()).unwrap();
    let acc = c.accuracy(&test).unwrap();
    assert!(acc > 0.85, "test accuracy {acc}");
    let dir = tmp("classifier");
    std::fs::create_dir_all(&dir).unwrap();
    c.save(&dir.join("c.safetensors")).unwrap();
    let back = Classifier::load(&dir.join("c.safetensors"), &Device::flex()).unwrap();
    assert_eq!(back.accuracy(&test).unwrap(), acc);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Runs the `trainer` CLI in-process.
fn cli(args: &[&str]) -> anyhow::Result<()> {
    use clap::Parser;
    let mut argv = vec!["trainer"];
    argv.extend_from_slice(args);
    crate::run(crate::Cli::try_parse_from(argv)?)
}

/// A tiny run config with the authors' recipe options, as a TOML file.
fn recipe_toml(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("tiny.toml");
    std::fs::write(
        &p,
        r#"objective = "lsd"
batch = 64
lr = 3e-3
warmup = 2
schedule = "rsqrt"
decay_start = 3
optimizer = "radam"
checkpoint_every = 2
[data]
name = "checkerboard"
[model]
arch = "mlp"
dim = 2
width = 16
depth = 2
activation = "gelu"
conditioning = "raw"
"#,
    )
    .unwrap();
    p
}

/// The committed-state path: a run's checkpoint and config copied to a fresh directory (as a
/// clone of the repository has them, without loss.csv or model.safetensors) continue with
/// `--resume DIR` and nothing else but the new step count, and land exactly where an
/// uninterrupted run of the same length does (rsqrt does not depend on the total).
#[test]
fn a_committed_run_state_resumes_on_a_fresh_checkout() {
    let root = tmp("committed");
    let toml = recipe_toml(&root);
    let (a, b, c) = (root.join("a"), root.join("b"), root.join("c"));
    let path = |p: &std::path::Path| p.display().to_string();
    cli(&[
        "train",
        "--config",
        &path(&toml),
        "--steps",
        "4",
        "--out",
        &path(&a),
        "--quiet",
    ])
    .unwrap();
    std::fs::create_dir_all(&b).unwrap();
    for f in ["checkpoint.safetensors", "config.toml"] {
        std::fs::copy(a.join(f), b.join(f)).unwrap();
    }
    cli(&["train", "--resume", &path(&b), "--steps", "8", "--quiet"]).unwrap();
    cli(&[
        "train",
        "--config",
        &path(&toml),
        "--steps",
        "8",
        "--out",
        &path(&c),
        "--quiet",
    ])
    .unwrap();
    let wb = flowmap::weights::Weights::read(&b.join("model.safetensors")).unwrap();
    let wc = flowmap::weights::Weights::read(&c.join("model.safetensors")).unwrap();
    assert_eq!(wb.meta.provenance["steps"], "8");
    for (name, t) in &wc.tensors {
        assert_eq!(wb.tensors[name].data, t.data, "{name} after resume");
    }
    // The resumed run kept the saved recipe.
    let saved: TrainConfig =
        toml::from_str(&std::fs::read_to_string(b.join("config.toml")).unwrap()).unwrap();
    assert_eq!(saved.optimizer, crate::optim::Optimizer::Radam);
    assert_eq!(saved.schedule, crate::config::Schedule::Rsqrt);
    assert_eq!(saved.steps, 8);
    // Resuming a directory without a checkpoint and without --objective names what is missing.
    let e = cli(&["train", "--resume", &path(&root.join("empty")), "--quiet"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("--objective"), "{e}");
    std::fs::remove_dir_all(root).unwrap();
}

/// The raw-time MLP: the first layer reads [s, t, x], there is no time embedding, and burn,
/// the CPU reference and the export agree on its names and shapes.
#[test]
fn raw_time_mlp_has_the_authors_input_layout() {
    let cfg = ModelConfig::toy2d_raw();
    let specs = flowmap::net::param_specs(&cfg).unwrap();
    assert!(specs
        .iter()
        .all(|s| !s.name.starts_with("time.") && !s.name.contains(".emb")));
    let first = specs.iter().find(|s| s.name == "layers.0.weight").unwrap();
    assert_eq!(first.shape, vec![256, 4]);
    assert_eq!(specs.len(), 2 * 5);
    // The network's value depends on s and t through those two inputs only: with the weights of
    // the time columns zeroed, v no longer changes with the times.
    let mut tensors = random_tensors(&specs, 5);
    let be = flex();
    let x = be.tensor(vec![0.3, -0.2, 0.1, 0.9], &[2, 2]);
    let eval = |tensors: &std::collections::BTreeMap<String, flowmap::weights::HostTensor>| {
        let net = ParamStore::from_host(&cfg, tensors, &be.device)
            .unwrap()
            .network(&cfg)
            .unwrap();
        let a = be
            .download(&net.velocity(&be, &x, &[0.1, 0.2], &[0.5, 0.9]).unwrap())
            .unwrap();
        let b = be
            .download(&net.velocity(&be, &x, &[0.4, 0.0], &[0.6, 0.3]).unwrap())
            .unwrap();
        (a, b)
    };
    let (a, b) = eval(&tensors);
    assert!(a.iter().zip(&b).any(|(a, b)| (a - b).abs() > 1e-4));
    let w = tensors.get_mut("layers.0.weight").unwrap();
    for row in w.data.chunks_mut(4) {
        row[0] = 0.0;
        row[1] = 0.0;
    }
    let (a, b) = eval(&tensors);
    assert_eq!(a, b);
}

/// A run's state moves between backends: steps on burn-wgpu, then on flex, then on wgpu again,
/// land within float rounding of a run that stayed on flex (the checkpoint holds plain f32
/// tensors, whatever device wrote them). Runs on any wgpu adapter, lavapipe included; without
/// one it fails under CI and says so elsewhere.
#[test]
fn a_run_continues_across_gpu_and_cpu() {
    if flowmap::gpu::GpuContext::new(true).is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "no wgpu adapter: the GPU ↔ CPU continuation test needs one under CI"
        );
        eprintln!("GPU TEST NOT RUN: no wgpu adapter (install mesa-vulkan-drivers)");
        return;
    }
    let root = tmp("gpu-cpu");
    let toml = recipe_toml(&root);
    let (mixed, cpu) = (root.join("mixed"), root.join("cpu"));
    let path = |p: &std::path::Path| p.display().to_string();
    let train = |out: &std::path::Path, steps: &str, backend: &str, resume: bool| {
        let (cfg, out, toml) = (path(out), path(out), path(&toml));
        let mut args = vec!["train", "--steps", steps, "--backend", backend, "--quiet"];
        if resume {
            args.extend(["--resume", cfg.as_str()]);
        } else {
            args.extend(["--config", toml.as_str(), "--out", out.as_str()]);
        }
        cli(&args).unwrap();
    };
    train(&mixed, "2", "wgpu", false);
    train(&mixed, "4", "flex", true);
    train(&mixed, "6", "wgpu", true);
    train(&cpu, "6", "flex", false);
    let a = flowmap::weights::Weights::read(&mixed.join("model.safetensors")).unwrap();
    let b = flowmap::weights::Weights::read(&cpu.join("model.safetensors")).unwrap();
    assert_eq!(a.meta.provenance["steps"], "6");
    for (name, t) in &b.tensors {
        assert_close(
            &format!("{name} after wgpu → flex → wgpu"),
            &a.tensors[name].data,
            &t.data,
            1e-3,
        );
    }
    std::fs::remove_dir_all(root).unwrap();
}

/// `--minutes` stops a run between checkpoints, saves a checkpoint at the step it reached and
/// exports the model, so a fixed time budget (a lent GPU's) loses no steps; it is not saved in
/// the run's config, so resuming does not inherit it.
#[test]
fn minutes_stops_between_checkpoints_and_keeps_every_step() {
    let root = tmp("minutes");
    let toml = recipe_toml(&root);
    let out = root.join("run");
    let (toml, out_s) = (toml.display().to_string(), out.display().to_string());
    // A million steps with checkpoints every 10^6 would never checkpoint; 0.02 minutes stops
    // far earlier.
    cli(&[
        "train",
        "--config",
        &toml,
        "--out",
        &out_s,
        "--steps",
        "1000000",
        "--checkpoint-every",
        "1000000",
        "--minutes",
        "0.02",
        "--quiet",
    ])
    .unwrap();
    let (state, _) = crate::checkpoint::load(&out.join("checkpoint.safetensors")).unwrap();
    let w = flowmap::weights::Weights::read(&out.join("model.safetensors")).unwrap();
    let steps: usize = w.meta.provenance["steps"].parse().unwrap();
    assert!(steps > 0 && steps < 1_000_000, "stopped at {steps}");
    assert_eq!(state.step, steps, "the checkpoint holds the last step");
    let saved = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(!saved.contains("minutes"), "{saved}");
    let e = cli(&[
        "train",
        "--config",
        &toml,
        "--out",
        &out_s,
        "--minutes",
        "0",
    ])
    .unwrap_err();
    assert!(e.to_string().contains("--minutes"), "{e}");
    std::fs::remove_dir_all(root).unwrap();
}

/// The GPU report's dry run (issue 10): every section runs on whatever adapter there is (lavapipe
/// in CI), the Markdown and JSON are written, and the kernels agree with the CPU backend.
#[test]
fn gpu_report_dry_run_writes_every_section() {
    if flowmap::gpu::GpuContext::new(true).is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "no wgpu adapter: the GPU report's dry run needs one under CI"
        );
        eprintln!("GPU TEST NOT RUN: no wgpu adapter (install mesa-vulkan-drivers)");
        return;
    }
    let root = tmp("gpu-report");
    cli(&[
        "gpu-report",
        "--out",
        &root.display().to_string(),
        "--dry-run",
    ])
    .unwrap();
    let md = std::fs::read_to_string(root.join("gpu-report.md")).unwrap();
    for section in [
        "## Adapter",
        "## Parity",
        "## Reachable peak",
        "## Forward",
        "## Sampling",
        "## Goals",
    ] {
        assert!(md.contains(section), "{section} missing:\n{md}");
    }
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("gpu-report.json")).unwrap())
            .unwrap();
    let parity = j["parity"].as_array().unwrap();
    // Every op family the two networks use, and both whole forwards.
    for scope in ["conv2d", "group_norm", "linear", "attention", "forward"] {
        assert!(
            parity.iter().any(|p| p["scope"] == scope),
            "{scope}: {parity:?}"
        );
    }
    assert!(parity.iter().all(|p| p["pass"] == true), "{parity:?}");
    let forward = j["forward"].as_array().unwrap();
    assert_eq!(forward.len(), 3, "U-Net at 1 and 2, MLP at 64: {forward:?}");
    assert!(
        forward.iter().all(|f| f["burn_wall_ms"].as_f64().is_some()),
        "burn-wgpu timed beside every WGSL forward: {forward:?}; notes {}",
        j["notes"]
    );
    // burn-wgpu's matmul, linear.wgsl's, and linear.wgsl's with wgpu's loop bounding.
    assert_eq!(j["peaks"].as_array().unwrap().len(), 3, "{}", j["notes"]);
    assert!(
        forward
            .iter()
            .all(|f| f["wgsl_bounded_ms"].as_f64().is_some()),
        "every forward timed with wgpu's loop bounding too: {forward:?}"
    );
    assert!(md.contains("## Loop bounding"));
    // With SHADER_F16 (lavapipe has it) every section has its f16 rows too.
    let f16 = j["adapter"]["shader_f16"] == true;
    let precisions = if f16 { 2 } else { 1 };
    assert_eq!(j["sampling"].as_array().unwrap().len(), 2 * precisions);
    assert_eq!(
        parity.iter().any(|p| p["model"] == "mnist (f16)"),
        f16,
        "{parity:?}"
    );
    assert!(
        forward
            .iter()
            .all(|f| f["f16_over_f32"].as_f64().is_some() == f16),
        "{forward:?}"
    );
    if j["adapter"]["timestamp_query"] == true {
        let kernels = j["kernels"].as_array().unwrap();
        // Each convolution family with the per-layer kernels, again with conv2d.wgsl alone and
        // with its 64 × 64 tiles alone.
        for kernel in [
            "conv3x3",
            "conv3x3 (conv2d.wgsl only)",
            "conv3x3 (64×64 tiles)",
            "conv1x1 (64×64 tiles)",
        ] {
            assert!(
                kernels.iter().any(|k| k["kernel"] == kernel),
                "{kernel}: {kernels:?}"
            );
        }
        assert!(
            !kernels
                .iter()
                .any(|k| k["kernel"] == "group_norm (64×64 tiles)"),
            "only the convolutions are timed twice"
        );
        // The convolutions alone: every distinct layer at each batch with every kernel that
        // computes it (conv2d.wgsl's three tiles always, conv3x3.wgsl's two on the same-size
        // 3×3 layers), the fastest marked and written to tuning.json.
        let sweep = j["sweep"].as_array().unwrap();
        assert!(sweep.iter().any(|r| r["layer"]
            .as_str()
            .is_some_and(|l| l.starts_with("conv3x3 16→16 28×28 s1"))));
        for r in sweep {
            let times: Vec<(&str, f64)> = r["times"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| (t["kernel"].as_str().unwrap(), t["us"].as_f64().unwrap()))
                .collect();
            let kernels: Vec<&str> = times.iter().map(|t| t.0).collect();
            assert!(
                kernels.starts_with(&["conv2d.wgsl", "conv2d.wgsl#c16", "conv2d.wgsl#c32"]),
                "{r}"
            );
            let same_size = r["layer"].as_str().unwrap().starts_with("conv3x3")
                && r["layer"].as_str().unwrap().contains(" s1");
            assert_eq!(kernels.contains(&"conv3x3.wgsl"), same_size, "{r}");
            assert_eq!(kernels.contains(&"conv3x3.wgsl#small"), same_size, "{r}");
            let fastest = times.iter().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap().0;
            assert_eq!(r["fastest"], fastest, "{r}");
            assert!(kernels.contains(&r["rule"].as_str().unwrap()), "{r}");
        }
        let tuning = flowmap::gpu::Tuning::read(&root.join("tuning.json")).unwrap();
        assert_eq!(tuning.convs.len(), sweep.len());
        // The forward with the tuning, beside the rule's, and its convolutions' kernel rows.
        for f in forward.iter().filter(|f| f["model"] == "mnist") {
            assert!(f["wgsl_tuned_ms"].as_f64().is_some(), "{f}");
            assert_eq!(f["wgsl_f16_tuned_ms"].as_f64().is_some(), f16, "{f}");
        }
        // And in f16 storage, where the adapter has it: its own tuning, for `--precision f16`.
        if f16 {
            let t16 = flowmap::gpu::Tuning::read(&root.join("tuning-f16.json")).unwrap();
            assert_eq!(
                (t16.precision.as_str(), t16.convs.len()),
                ("f16", sweep.len())
            );
        }
        assert!(kernels.iter().any(|k| k["kernel"] == "conv3x3 (tuned)"));
        assert!(md.contains("## Kernels tuned by measurement"));
        assert!(md.contains("## Convolutions alone, by kernel"));
        // Each layer names the shader that ran it; at these batches every grid is small, so
        // conv2d.wgsl ran them all.
        let layers = j["layers"].as_array().unwrap();
        assert!(!layers.is_empty());
        assert!(
            layers.iter().all(|l| l["kernel"]
                .as_str()
                .is_some_and(|k| k.contains(" [conv2d.wgsl"))),
            "{layers:?}"
        );
    }
    std::fs::remove_dir_all(root).unwrap();
}
