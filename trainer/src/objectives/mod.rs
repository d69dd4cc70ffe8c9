//! The training objectives of METHOD §2 and §4, one file each. A loss is the per-sample squared
//! norm summed over pixels, averaged over the batch (METHOD §4).

pub mod derivative;
pub mod emd;
pub mod esd;
pub mod fm;
pub mod lmd;
pub mod lsd;
pub mod pfmm;
pub mod psd;

use crate::burn_backend::{BurnBackend, BurnTensor};
use crate::flow::FlowModel;
use crate::interpolant::interpolate;
use burn::tensor::Tensor;
use flowmap::config::Interpolant;
use flowmap::rng::Rng;
use flowmap::Result;

/// The objective names the CLI uses (METHOD §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    Fm,
    Lmd,
    Emd,
    Pfmm,
    Lsd,
    Psd,
    Esd,
}

impl Objective {
    pub const ALL: [Objective; 7] = [
        Objective::Fm,
        Objective::Lmd,
        Objective::Emd,
        Objective::Pfmm,
        Objective::Lsd,
        Objective::Psd,
        Objective::Esd,
    ];

    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|o| o.name() == s)
            .ok_or_else(|| format!("unknown objective `{s}` (fm, lmd, emd, pfmm, lsd, psd, esd)"))
    }

    pub fn name(self) -> &'static str {
        match self {
            Objective::Fm => "fm",
            Objective::Lmd => "lmd",
            Objective::Emd => "emd",
            Objective::Pfmm => "pfmm",
            Objective::Lsd => "lsd",
            Objective::Psd => "psd",
            Objective::Esd => "esd",
        }
    }

    /// Distillation objectives need a frozen teacher velocity model.
    pub fn needs_teacher(self) -> bool {
        matches!(self, Objective::Lmd | Objective::Emd | Objective::Pfmm)
    }
}

/// A training batch: noise x0 ~ N(0, σ0² I) and data x1, `n` samples of `shape`.
pub struct Batch {
    pub x0: Vec<f32>,
    pub x1: Vec<f32>,
    pub shape: Vec<usize>,
    pub n: usize,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// The rows in `idx` as a new batch.
    pub fn subset(&self, idx: &[usize]) -> Batch {
        let len = self.len();
        let pick = |v: &[f32]| {
            idx.iter()
                .flat_map(|&i| v[i * len..(i + 1) * len].iter().copied())
                .collect()
        };
        Batch {
            x0: pick(&self.x0),
            x1: pick(&self.x1),
            shape: self.shape.clone(),
            n: idx.len(),
        }
    }

    pub fn full_shape(&self) -> Vec<usize> {
        let mut s = vec![self.n];
        s.extend(&self.shape);
        s
    }
}

/// Everything a loss may use.
pub struct Ctx<'a> {
    pub be: &'a BurnBackend,
    /// The network being trained (gradients flow into its parameters).
    pub student: &'a dyn FlowModel,
    /// The same network on detached parameters, for stop-gradient targets sg(·).
    pub student_sg: &'a dyn FlowModel,
    /// A frozen teacher velocity model, read on its diagonal b̂_t(x) = v(t, t, x).
    pub teacher: Option<&'a dyn FlowModel>,
    /// The frozen teacher map of the current progressive stage (`pfmm`); None means the
    /// teacher's Euler step.
    pub teacher_map: Option<&'a dyn FlowModel>,
    pub interpolant: Interpolant,
    /// Largest |t − s| of the current `pfmm` stage.
    pub max_gap: f32,
    /// `psd`: draw γ ~ U[0, 1] (PSD-U) instead of γ = 1/2 (PSD-M).
    pub psd_uniform: bool,
    /// Consecutive samples that share one draw of their times (`TrainConfig::share_times`).
    pub share_times: usize,
    /// Share of diagonal pairs in the (s, t) sampler (`TrainConfig::eta`).
    pub eta: f64,
}

/// A loss value and its parts (already divided by the batch size), for logging.
pub struct Loss {
    pub total: Tensor<1>,
    pub parts: Vec<(&'static str, Tensor<1>)>,
}

pub struct TimePairs {
    pub s: Vec<f32>,
    pub t: Vec<f32>,
    pub diagonal: Vec<bool>,
}

/// The (s, t) sampler of METHOD §4: with probability η (`TrainConfig::eta`, default 0.75) a
/// diagonal pair t = s ~ U[0, 1], else the min and max of two U[0, 1] draws. Each draw is shared
/// by `share` consecutive samples (the last run cut at n).
pub fn sample_pairs(rng: &mut Rng, n: usize, eta: f64, share: usize) -> TimePairs {
    let mut p = TimePairs {
        s: Vec::with_capacity(n),
        t: Vec::with_capacity(n),
        diagonal: Vec::with_capacity(n),
    };
    for (s, t, diagonal) in shared_draws(n, share, || {
        if rng.uniform() < eta {
            let u = rng.uniform() as f32;
            (u, u, true)
        } else {
            let (a, b) = (rng.uniform() as f32, rng.uniform() as f32);
            (a.min(b), a.max(b), false)
        }
    }) {
        p.s.push(s);
        p.t.push(t);
        p.diagonal.push(diagonal);
    }
    p
}

/// n values, each draw repeated for `share` consecutive samples (the last run cut at n).
pub fn shared_draws<T: Clone>(n: usize, share: usize, mut draw: impl FnMut() -> T) -> Vec<T> {
    let share = share.max(1);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let v = draw();
        let k = share.min(n - out.len());
        out.extend(std::iter::repeat_n(v, k));
    }
    out
}

/// Σ (a − b)² over every element, divided by `n` (the batch size).
pub fn sq_err(a: &BurnTensor, b: &BurnTensor, n: usize) -> Tensor<1> {
    (a.t.clone() - b.t.clone()).square().sum() / n as f32
}

/// I_t and İ_t as tensors.
pub fn interpolant(ctx: &Ctx, batch: &Batch, t: &[f32]) -> (BurnTensor, BurnTensor) {
    let (it, dit) = interpolate(ctx.interpolant, &batch.x0, &batch.x1, t);
    let shape = batch.full_shape();
    (ctx.be.tensor(it, &shape), ctx.be.tensor(dit, &shape))
}

/// The diagonal flow-matching term E_t |v(t, t, I_t) − İ_t|² (METHOD §2, the L_diag of §4) over
/// `batch`, divided by `n_total`.
pub fn diagonal_fm(
    ctx: &Ctx,
    model: &dyn FlowModel,
    batch: &Batch,
    t: &[f32],
    n_total: usize,
) -> Result<Tensor<1>> {
    let (it, dit) = interpolant(ctx, batch, t);
    let v = model.velocity(ctx.be, &it, t, t)?;
    Ok(sq_err(&v, &dit, n_total))
}

/// The diagonal term of a distillation loss, |v(t, t, I_t) − b̂_t(I_t)|² over `batch`, divided by
/// `n_total`: what both `lmd` and `emd` reduce to at t = s (X_{t,t} = id, ∂_t X = −∂_s X = v
/// there and ∇_x X_{t,t} = I; METHOD §3). The teacher runs outside the graph.
pub fn distilled_diagonal(
    ctx: &Ctx,
    teacher: &dyn FlowModel,
    batch: &Batch,
    t: &[f32],
    n_total: usize,
) -> Result<Tensor<1>> {
    let (it, _) = interpolant(ctx, batch, t);
    let v = ctx.student.velocity(ctx.be, &it, t, t)?;
    let target = teacher.velocity(ctx.be, &it, t, t)?.detached();
    Ok(sq_err(&v, &target, n_total))
}

/// The self-distillation split (METHOD §4): the η-sampler's diagonal pairs get the
/// flow-matching term L_diag, the others the objective's own `off` term, both divided by the full
/// batch size. `off` receives the off-diagonal sub-batch and its (s, t).
pub fn self_distillation(
    ctx: &Ctx,
    batch: &Batch,
    rng: &mut Rng,
    off: impl FnOnce(&Ctx, &Batch, &[f32], &[f32], &mut Rng) -> Result<Tensor<1>>,
) -> Result<Loss> {
    split_pairs(
        ctx,
        batch,
        rng,
        |ctx, diag, t| diagonal_fm(ctx, ctx.student, diag, t, batch.n),
        off,
    )
}

/// Draws the η-sampler's pairs and evaluates `diag` on the diagonal sub-batch (with its t) and
/// `off` on the rest (with its s and t); the loss is their sum, with parts "diag" and "off".
/// Both terms divide by the full batch size. A diagonal pair needs no difference pair: under the
/// parameterization X_{t,t}(x) = x and ∂_t X_{s,t}(x) at t = s is v(s, s, x) exactly (METHOD §3,
/// §5), so a loss's diagonal term is a single forward.
pub fn split_pairs(
    ctx: &Ctx,
    batch: &Batch,
    rng: &mut Rng,
    diag: impl FnOnce(&Ctx, &Batch, &[f32]) -> Result<Tensor<1>>,
    off: impl FnOnce(&Ctx, &Batch, &[f32], &[f32], &mut Rng) -> Result<Tensor<1>>,
) -> Result<Loss> {
    let p = sample_pairs(rng, batch.n, ctx.eta, ctx.share_times);
    let (diag_idx, off_idx) = split_diagonal(&p);
    let l_diag = if diag_idx.is_empty() {
        zero(ctx)
    } else {
        diag(ctx, &batch.subset(&diag_idx), &pick(&p.t, &diag_idx))?
    };
    let l_off = if off_idx.is_empty() {
        zero(ctx)
    } else {
        off(
            ctx,
            &batch.subset(&off_idx),
            &pick(&p.s, &off_idx),
            &pick(&p.t, &off_idx),
            rng,
        )?
    };
    Ok(Loss {
        total: l_diag.clone() + l_off.clone(),
        parts: vec![("diag", l_diag), ("off", l_off)],
    })
}

/// Splits a batch by the diagonal flags of its time pairs.
pub fn split_diagonal(pairs: &TimePairs) -> (Vec<usize>, Vec<usize>) {
    (0..pairs.s.len()).partition(|&i| pairs.diagonal[i])
}

pub fn pick(v: &[f32], idx: &[usize]) -> Vec<f32> {
    idx.iter().map(|&i| v[i]).collect()
}

/// Dispatches to the objective's loss.
pub fn loss(obj: Objective, ctx: &Ctx, batch: &Batch, rng: &mut Rng) -> Result<Loss> {
    match obj {
        Objective::Fm => fm::loss(ctx, batch, rng),
        Objective::Lmd => lmd::loss(ctx, batch, rng),
        Objective::Emd => emd::loss(ctx, batch, rng),
        Objective::Pfmm => pfmm::loss(ctx, batch, rng),
        Objective::Lsd => lsd::loss(ctx, batch, rng),
        Objective::Psd => psd::loss(ctx, batch, rng),
        Objective::Esd => esd::loss(ctx, batch, rng),
    }
}

/// The zero loss with the right device, for empty subsets.
pub fn zero(ctx: &Ctx) -> Tensor<1> {
    Tensor::<1>::zeros([1], &ctx.be.device)
}
