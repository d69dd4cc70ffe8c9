//! 2-D convolution for training on burn's `flex` CPU backend: im2col + one GEMM per sample
//! (flowmap's [`im2col`](flowmap::cpu::im2col) and [`gemm`](flowmap::cpu::gemm) wrapper over the
//! `gemm` crate that flex itself uses for matmul; the forward is flowmap's fast CPU conv), forward
//! and both backward products, registered as a burn backend extension with a hand-written
//! autodiff node.
//!
//! Why: the training profile (`trainer bench --profile`, docs/BENCHMARKS.md) found flex's
//! conv2d and its default backward at 17–20 GFLOP/s, a quarter of what flex's own matmul reaches
//! on the same cores, and 70% of a U-Net training step. Here every product is a GEMM:
//! forward Y_n = W · col(x_n), input gradient col⁻¹(Wᵀ · dY_n), weight gradient
//! Σ_n dY_n · col(x_n)ᵀ, bias gradient Σ dY. Only the input gradient of a
//! strided convolution builds col (col2im): the forward and, for stride 1, the input gradient (a
//! convolution of dY with the flipped, transposed kernel) run on flowmap's direct convolution,
//! and the weight gradient is one strided GEMM per tap on the padded image
//! ([`flowmap::cpu::direct`]). Samples run in parallel (rayon), each product single-threaded.
//!
//! The linear layer is one too ([`linear`]): burn's `matmul` + bias + its autodiff ran the MLP's
//! 1024 × 256 × 256 products at 21–35 GFLOP/s, a third of its own 1024³ matmul; here the
//! forward is the sampler's fast linear (GEMM started at the bias, blocks of rows in parallel),
//! the input gradient dY · W in the same row blocks and the weight gradient dYᵀ · X one GEMM
//! over the batch.
//!
//! So is attention ([`attention`]): the forward is the sampler's fast attention (two GEMMs and a
//! vectorized softmax per sample and head), the backward recomputes the probabilities and runs
//! the five products of its gradient through the GEMM ([`attention_backward`]), where burn's ops
//! copied the strided q, k, v views and ran the softmax and its gradient as separate passes on
//! one thread (`fused_attention_matches_burn_ops` holds both to burn's).
//!
//! Other devices (burn-wgpu) keep burn's own conv2d and matmul: [`BurnBackend`](crate::burn_backend)
//! only calls these on flex. `fast_conv_matches_burns_conv2d` and
//! `fast_linear_matches_burns_matmul` hold values and all three gradients to burn's.

use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, TensorMetadata};
use burn::tensor::{Tensor, TensorData};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_autodiff::{Autodiff, NodeId};
use burn_flex::{Flex, FlexTensor};
use flowmap::backend::Conv2d;
use flowmap::config::Activation;
use flowmap::cpu::gemm::{
    matmul,
    Threads::{All, One},
};
use flowmap::cpu::im2col::ConvGeom;
use flowmap::cpu::pool::Output;
use flowmap::cpu::{direct, exp_fast, sum16};
use rayon::prelude::*;

/// The fused ops (convolution, linear layer, modulation + activation, GroupNorm) as a backend
/// extension: implemented for flex and, with their own autodiff nodes, for autodiff over it.
/// Their backward products are [`FlexGrads`].
#[backend_extension(Flex, Autodiff)]
pub trait FlexOps: Backend {
    /// y = conv(x, w) + b; x [N, C, H, W], w [O, C, k, k], b [O].
    fn fast_conv2d(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self>;

    /// y = x · wᵀ + b; x [N, in], w [out, in] (flowmap's layout), b [out].
    fn fast_linear(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// z = act(y · (1 + scale) + shift); y [N, F], m = [scale | shift] [N, 2F]: the linear
    /// layer's time modulation and activation in one pass.
    fn fast_modulate_act(
        y: FloatTensor<Self>,
        m: FloatTensor<Self>,
        act: Activation,
    ) -> FloatTensor<Self>;

    /// z = act(y), elementwise.
    fn fast_act(y: FloatTensor<Self>, act: Activation) -> FloatTensor<Self>;

    /// y = act(x̂ · a + b) with x̂ = GroupNorm(x) over (C/groups, H, W), per-(sample, channel)
    /// a, b [N, C], act = SiLU or identity. x [N, C, H, W].
    fn fast_group_norm(
        x: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        groups: usize,
        eps: f32,
        silu: bool,
    ) -> FloatTensor<Self>;

    /// Multi-head self-attention: qkv [N, 3C, L] (q, k, v stacked on channels) → [N, C, L].
    fn fast_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self>;
}

/// The backward products of [`FlexOps`], on the inner (non-autodiff) backend only: the
/// autodiff nodes call them, nothing dispatches to them.
pub trait FlexGrads: Backend {
    /// ∂L/∂x given dy = ∂L/∂y (x supplies the shape).
    fn fast_conv2d_dx(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self>;

    /// (∂L/∂w, ∂L/∂b) given dy.
    fn fast_conv2d_dwb(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// ∂L/∂x = dy · w given dy = ∂L/∂y.
    fn fast_linear_dx(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// (∂L/∂w = dyᵀ · x, ∂L/∂b = Σ_n dy) given dy.
    fn fast_linear_dwb(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// (∂L/∂y, ∂L/∂m) given dz.
    fn fast_modulate_act_backward(
        y: FloatTensor<Self>,
        m: FloatTensor<Self>,
        dz: FloatTensor<Self>,
        act: Activation,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// ∂L/∂y given dz.
    fn fast_act_backward(
        y: FloatTensor<Self>,
        dz: FloatTensor<Self>,
        act: Activation,
    ) -> FloatTensor<Self>;

    /// (∂L/∂x, ∂L/∂a, ∂L/∂b) given dy.
    #[allow(clippy::too_many_arguments)]
    fn fast_group_norm_backward(
        x: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        groups: usize,
        eps: f32,
        silu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// ∂L/∂qkv given dy = ∂L/∂out.
    fn fast_attention_backward(
        qkv: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self>;
}

/// The differentiable fused GroupNorm → per-channel affine → SiLU on burn tensors (flex
/// devices): x [N, C, H, W], a and b [N, C].
pub fn group_norm(
    x: Tensor<4>,
    a: Tensor<2>,
    b: Tensor<2>,
    groups: usize,
    eps: f32,
    silu: bool,
) -> Tensor<4> {
    use burn::backend::Dispatch;
    Tensor::from_dispatch(<Dispatch as FlexOps>::fast_group_norm(
        x.into_dispatch(),
        a.into_dispatch(),
        b.into_dispatch(),
        groups,
        eps,
        silu,
    ))
}

/// The differentiable multi-head self-attention on burn tensors (flex devices): qkv [N, 3C, L]
/// → [N, C, L].
pub fn attention(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
    use burn::backend::Dispatch;
    Tensor::from_dispatch(<Dispatch as FlexOps>::fast_attention(
        qkv.into_dispatch(),
        heads,
    ))
}

/// The differentiable linear layer y = x · wᵀ + b on burn tensors (flex devices): x [N, in],
/// w [out, in], b [out].
pub fn linear(x: Tensor<2>, w: Tensor<2>, b: Tensor<1>) -> Tensor<2> {
    use burn::backend::Dispatch;
    Tensor::from_dispatch(<Dispatch as FlexOps>::fast_linear(
        x.into_dispatch(),
        w.into_dispatch(),
        b.into_dispatch(),
    ))
}

/// The differentiable act(y · (1 + scale) + shift) on burn tensors (flex devices): y [N, F],
/// m = [scale | shift] [N, 2F]; without m, act(y).
pub fn modulate_act(y: Tensor<2>, m: Option<Tensor<2>>, act: Activation) -> Tensor<2> {
    use burn::backend::Dispatch;
    Tensor::from_dispatch(match m {
        Some(m) => {
            <Dispatch as FlexOps>::fast_modulate_act(y.into_dispatch(), m.into_dispatch(), act)
        }
        None => <Dispatch as FlexOps>::fast_act(y.into_dispatch(), act),
    })
}

/// The differentiable convolution on burn tensors (flex devices, with or without autodiff).
pub fn conv2d(
    x: Tensor<4>,
    w: Tensor<4>,
    b: Tensor<1>,
    stride: usize,
    padding: usize,
) -> Tensor<4> {
    use burn::backend::Dispatch;
    Tensor::from_dispatch(<Dispatch as FlexOps>::fast_conv2d(
        x.into_dispatch(),
        w.into_dispatch(),
        b.into_dispatch(),
        stride,
        padding,
    ))
}

/// A contiguous f32 view of a tensor (copied only if it is strided or not f32).
fn contiguous(t: FlexTensor) -> FlexTensor {
    let t = if t.is_contiguous() {
        t
    } else {
        t.to_contiguous()
    };
    if t.dtype() == burn::tensor::DType::F32 {
        t
    } else {
        FlexTensor::from_data(t.into_data().convert::<f32>())
    }
}

fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("a contiguous f32 tensor")
}

fn dims4(t: &FlexTensor) -> [usize; 4] {
    let s = t.shape();
    let mut d = [1usize; 4];
    for (i, v) in s.iter().enumerate().take(4) {
        d[i] = *v;
    }
    d
}

fn dims3(t: &FlexTensor) -> [usize; 3] {
    let s = t.shape();
    assert_eq!(s.len(), 3, "a rank-3 tensor, got shape {s:?}");
    [s[0], s[1], s[2]]
}

fn dims2(t: &FlexTensor) -> [usize; 2] {
    let s = t.shape();
    assert_eq!(s.len(), 2, "a matrix, got shape {s:?}");
    [s[0], s[1]]
}

fn flex(data: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape.to_vec()))
}

pub(crate) fn backward_x(w: &[f32], dy: &[f32], g: ConvGeom) -> Vec<f32> {
    if g.stride == 1 && !g.pointwise() && g.pad < g.k {
        // For stride 1 the input gradient is itself a stride-1 convolution: dY convolved with
        // the flipped, transposed kernel W'[c, o, ky, kx] = W[o, c, k−1−ky, k−1−kx] at padding
        // k − 1 − p, whose output is H × W again. It runs on the direct path
        // (flowmap::cpu::direct) with no im2col matrix and no scatter.
        let k = g.k;
        let mut wt = vec![0.0f32; g.c * g.o * k * k];
        for o in 0..g.o {
            for c in 0..g.c {
                for ky in 0..k {
                    for kx in 0..k {
                        wt[((c * g.o + o) * k + (k - 1 - ky)) * k + (k - 1 - kx)] =
                            w[((o * g.c + c) * k + ky) * k + kx];
                    }
                }
            }
        }
        let (dx, shape) = flowmap::cpu::conv2d(
            dy,
            &[g.n, g.o, g.ho, g.wo],
            &wt,
            &[g.c, g.o, k, k],
            &vec![0.0f32; g.c],
            Conv2d::new(1, k - 1 - g.pad),
            None,
        );
        debug_assert_eq!(shape, [g.n, g.c, g.h, g.w]);
        return dx;
    }
    let (rows, p) = (g.rows(), g.positions());
    let in_len = g.c * g.h * g.w;
    let mut dx = vec![0.0f32; g.n * in_len];
    dx.par_chunks_mut(in_len).enumerate().for_each_init(
        || vec![0.0f32; if g.pointwise() { 0 } else { rows * p }],
        |col, (i, dxn)| {
            let dyn_ = &dy[i * g.o * p..(i + 1) * g.o * p];
            if g.pointwise() {
                matmul(rows, p, g.o, dxn, false, w, true, dyn_, false, One);
            } else {
                matmul(rows, p, g.o, col, false, w, true, dyn_, false, One);
                g.col2im(col, dxn);
            }
        },
    );
    dx
}

pub(crate) fn backward_wb(x: &[f32], dy: &[f32], g: ConvGeom) -> (Vec<f32>, Vec<f32>) {
    let (rows, p) = (g.rows(), g.positions());
    let in_len = g.c * g.h * g.w;
    let zero = || {
        (
            vec![0.0f32; g.o * rows],
            vec![0.0f32; g.o],
            direct::Scratch::default(),
        )
    };
    let (dw, db) = (0..g.n)
        .into_par_iter()
        .fold(zero, |(mut dw, mut db, mut scratch), i| {
            let xn = &x[i * in_len..(i + 1) * in_len];
            let dyn_ = &dy[i * g.o * p..(i + 1) * g.o * p];
            for (o, row) in dyn_.chunks(p).enumerate() {
                db[o] += sum16(row, |v| v) as f32;
            }
            // One GEMM per tap straight from the padded image, no im2col.
            direct::weight_grad(&g, xn, dyn_, &mut dw, &mut scratch);
            (dw, db, scratch)
        })
        .map(|(dw, db, _)| (dw, db))
        .reduce(
            || (vec![0.0f32; g.o * rows], vec![0.0f32; g.o]),
            |(mut a, mut da), (b, db)| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                da.iter_mut().zip(&db).for_each(|(a, b)| *a += b);
                (a, da)
            },
        );
    (dw, db)
}

/// dx [N, in] = dy [N, out] · w [out, in]: one product over the batch, split over the cores
/// by the GEMM.
fn linear_dx(w: &[f32], dy: &[f32], n: usize, inp: usize, out: usize) -> Vec<f32> {
    let mut dx = vec![0.0f32; n * inp];
    matmul(n, inp, out, &mut dx, false, dy, false, w, false, All);
    dx
}

/// (dw [out, in] = dyᵀ · x, db [out] = Σ_n dy): one product over the whole batch, split over
/// the cores by the GEMM.
fn linear_dwb(x: &[f32], dy: &[f32], n: usize, inp: usize, out: usize) -> (Vec<f32>, Vec<f32>) {
    let mut dw = vec![0.0f32; out * inp];
    matmul(out, inp, n, &mut dw, false, dy, true, x, false, All);
    let mut db = vec![0.0f32; out];
    for row in dy.chunks_exact(out) {
        db.iter_mut().zip(row).for_each(|(d, v)| *d += v);
    }
    (dw, db)
}

/// An activation of the linear layer's fused epilogue, as a type: the loops below are compiled
/// once per activation, so they have no branch per element and vectorize (a `match` on the
/// activation inside them left them scalar, a quarter of an MLP training step).
trait Act: Send + Sync {
    fn value(u: f32) -> f32;
    fn grad(u: f32) -> f32;
}

struct Identity;
struct Relu;
/// Through `exp_fast`, as the sampler's fast path.
struct Silu;
/// With erf (burn's and flowmap's definition).
struct Gelu;

impl Act for Identity {
    #[inline(always)]
    fn value(u: f32) -> f32 {
        u
    }
    #[inline(always)]
    fn grad(_: f32) -> f32 {
        1.0
    }
}

impl Act for Relu {
    #[inline(always)]
    fn value(u: f32) -> f32 {
        u.max(0.0)
    }
    #[inline(always)]
    fn grad(u: f32) -> f32 {
        if u > 0.0 {
            1.0
        } else {
            0.0
        }
    }
}

impl Act for Silu {
    #[inline(always)]
    fn value(u: f32) -> f32 {
        u * sigmoid(u)
    }
    #[inline(always)]
    fn grad(u: f32) -> f32 {
        let sg = sigmoid(u);
        sg * (1.0 + u * (1.0 - sg))
    }
}

impl Act for Gelu {
    #[inline(always)]
    fn value(u: f32) -> f32 {
        u * Self::cdf(u)
    }
    #[inline(always)]
    fn grad(u: f32) -> f32 {
        let pdf = (-0.5 * u * u).exp() / (2.0 * std::f32::consts::PI).sqrt();
        Self::cdf(u) + u * pdf
    }
}

impl Gelu {
    #[inline(always)]
    fn cdf(u: f32) -> f32 {
        0.5 * (1.0 + libm::erff(u * std::f32::consts::FRAC_1_SQRT_2))
    }
}

/// Rows of [N, F] per task of the epilogue's parallel loops.
fn epilogue_rows(f: usize) -> usize {
    (1usize << 14).div_ceil(f.max(1))
}

/// z = act(y · (1 + scale) + shift) row by row; m None: act(y).
fn modulate_act_forward(y: &[f32], m: Option<&[f32]>, f: usize, act: Activation) -> Vec<f32> {
    let rows = epilogue_rows(f);
    let mut z = vec![0.0f32; y.len()];
    let chunks = z.par_chunks_mut(rows * f).zip(y.par_chunks(rows * f));
    match m {
        Some(m) => chunks
            .zip(m.par_chunks(rows * 2 * f))
            .for_each(|((zb, yb), mb)| modulate_block_forward(zb, yb, Some(mb), f, act)),
        None => chunks.for_each(|(zb, yb)| modulate_block_forward(zb, yb, None, f, act)),
    }
    z
}

/// (dy, dm) of [`modulate_act_forward`]: with g = dz · act'(u), dy = g · (1 + scale),
/// dscale = g · y, dshift = g (dm empty without m).
fn modulate_act_backward(
    y: &[f32],
    m: Option<&[f32]>,
    dz: &[f32],
    f: usize,
    act: Activation,
) -> (Vec<f32>, Vec<f32>) {
    let rows = epilogue_rows(f);
    let mut dy = vec![0.0f32; y.len()];
    let chunks = dy
        .par_chunks_mut(rows * f)
        .zip(y.par_chunks(rows * f))
        .zip(dz.par_chunks(rows * f));
    let Some(m) = m else {
        chunks.for_each(|((dyb, yb), dzb)| {
            modulate_block_backward(dyb, yb, None, dzb, &mut [], f, act)
        });
        return (dy, Vec::new());
    };
    let mut dm = vec![0.0f32; 2 * y.len()];
    chunks
        .zip(dm.par_chunks_mut(rows * 2 * f))
        .zip(m.par_chunks(rows * 2 * f))
        .for_each(|((((dyb, yb), dzb), dmb), mb)| {
            modulate_block_backward(dyb, yb, Some(mb), dzb, dmb, f, act)
        });
    (dy, dm)
}

flowmap::multiversion! {
    /// One block of rows of [`modulate_act_forward`], compiled for the CPU's vector width; the
    /// activation is matched once, outside the loops.
    fn modulate_block_forward(zb: &mut [f32], yb: &[f32], mb: Option<&[f32]>, f: usize, act: Activation) {
        match act {
            Activation::None => modulate_rows_forward::<Identity>(zb, yb, mb, f),
            Activation::Relu => modulate_rows_forward::<Relu>(zb, yb, mb, f),
            Activation::Silu => modulate_rows_forward::<Silu>(zb, yb, mb, f),
            Activation::Gelu => modulate_rows_forward::<Gelu>(zb, yb, mb, f),
        }
    }
}

flowmap::multiversion! {
    /// One block of rows of [`modulate_act_backward`] (dmb empty without mb), compiled for the
    /// CPU's vector width; the activation is matched once, outside the loops.
    #[allow(clippy::too_many_arguments)]
    fn modulate_block_backward(
        dyb: &mut [f32],
        yb: &[f32],
        mb: Option<&[f32]>,
        dzb: &[f32],
        dmb: &mut [f32],
        f: usize,
        act: Activation,
    ) {
        match act {
            Activation::None => modulate_rows_backward::<Identity>(dyb, yb, mb, dzb, dmb, f),
            Activation::Relu => modulate_rows_backward::<Relu>(dyb, yb, mb, dzb, dmb, f),
            Activation::Silu => modulate_rows_backward::<Silu>(dyb, yb, mb, dzb, dmb, f),
            Activation::Gelu => modulate_rows_backward::<Gelu>(dyb, yb, mb, dzb, dmb, f),
        }
    }
}

#[inline(always)]
fn modulate_rows_forward<A: Act>(zb: &mut [f32], yb: &[f32], mb: Option<&[f32]>, f: usize) {
    let Some(mb) = mb else {
        for (z, &y) in zb.iter_mut().zip(yb) {
            *z = A::value(y);
        }
        return;
    };
    for ((zr, yr), mr) in zb.chunks_mut(f).zip(yb.chunks(f)).zip(mb.chunks(2 * f)) {
        let (scale, shift) = mr.split_at(f);
        for (((z, &y), &s), &t) in zr.iter_mut().zip(yr).zip(scale).zip(shift) {
            *z = A::value(y * (1.0 + s) + t);
        }
    }
}

#[inline(always)]
fn modulate_rows_backward<A: Act>(
    dyb: &mut [f32],
    yb: &[f32],
    mb: Option<&[f32]>,
    dzb: &[f32],
    dmb: &mut [f32],
    f: usize,
) {
    let Some(mb) = mb else {
        for ((d, &y), &g) in dyb.iter_mut().zip(yb).zip(dzb) {
            *d = g * A::grad(y);
        }
        return;
    };
    let rows = dyb
        .chunks_mut(f)
        .zip(yb.chunks(f))
        .zip(dzb.chunks(f))
        .zip(dmb.chunks_mut(2 * f))
        .zip(mb.chunks(2 * f));
    for ((((dyr, yr), dzr), dmr), mr) in rows {
        let (scale, shift) = mr.split_at(f);
        let (ds, dt) = dmr.split_at_mut(f);
        let each = dyr
            .iter_mut()
            .zip(ds.iter_mut().zip(dt))
            .zip(yr.iter().zip(dzr))
            .zip(scale.iter().zip(shift));
        for (((dy, (ds, dt)), (&y, &dz)), (&s, &t)) in each {
            let g = dz * A::grad(y * (1.0 + s) + t);
            *dy = g * (1.0 + s);
            *ds = g * y;
            *dt = g;
        }
    }
}

/// ∂L/∂qkv [N, 3C, L] of multi-head self-attention (the forward: flowmap's
/// [`attention`](flowmap::cpu::attention)) given dY [N, C, L]. Per (sample, head), with Q, K, V
/// and dO the head's [d, L] blocks and S = s·QᵀK (s = 1/√d), P = softmax(S) by rows, O = V·Pᵀ:
/// P is recomputed by the forward's own [`attention_probs`](flowmap::cpu::attention_probs) (a
/// product and a softmax, cheaper than keeping L × L per head), then
/// dV = dO·P, dP = dOᵀ·V, dS = P ∘ (dP − rowsum(P ∘ dP)), dQ = s·K·dSᵀ, dK = s·Q·dS, each product
/// through the GEMM on the sample's thread, samples in parallel.
fn attention_backward(
    qkv: &[f32],
    dy: &[f32],
    n: usize,
    c: usize,
    l: usize,
    heads: usize,
) -> Vec<f32> {
    let d = c / heads;
    let scale = 1.0 / (d as f32).sqrt();
    let mut dqkv = vec![0.0f32; n * 3 * c * l];
    dqkv.par_chunks_mut(3 * c * l).enumerate().for_each_init(
        || (vec![0.0f32; l * l], vec![0.0f32; l * l]),
        |(p, dp), (b, dst)| {
            for h in 0..heads {
                let block = |part: usize| (part * c + h * d) * l;
                let src = &qkv[b * 3 * c * l..][..3 * c * l];
                let (q, k, v) = (
                    &src[block(0)..][..d * l],
                    &src[block(1)..][..d * l],
                    &src[block(2)..][..d * l],
                );
                let dout = &dy[(b * c + h * d) * l..][..d * l];
                // P = softmax(s·QᵀK) by rows, as the forward computed it.
                flowmap::cpu::attention_probs(q, k, p, d, l);
                // dV = dO·P, dP = dOᵀ·V.
                matmul(
                    d,
                    l,
                    l,
                    &mut dst[block(2)..][..d * l],
                    false,
                    dout,
                    false,
                    p,
                    false,
                    One,
                );
                matmul(l, l, d, dp, false, dout, true, v, false, One);
                // dS = P ∘ (dP − rowsum(P ∘ dP)), into dp.
                for (prow, dprow) in p.chunks_exact(l).zip(dp.chunks_exact_mut(l)) {
                    let dot: f32 = prow.iter().zip(dprow.iter()).map(|(a, b)| a * b).sum();
                    for (g, &pv) in dprow.iter_mut().zip(prow) {
                        *g = pv * (*g - dot);
                    }
                }
                // dQ = s·K·dSᵀ, dK = s·Q·dS.
                let (dq, rest) = dst.split_at_mut(block(1));
                let dq = &mut dq[block(0)..][..d * l];
                matmul(d, l, l, dq, false, k, false, dp, true, One);
                let dk = &mut rest[..d * l];
                matmul(d, l, l, dk, false, q, false, dp, false, One);
                dq.iter_mut().chain(dk.iter_mut()).for_each(|g| *g *= scale);
            }
        },
    );
    dqkv
}

/// (mean, 1/√(var + eps)) of a group: two passes of vectorizable sums (sixteen f32 lanes,
/// combined in f64).
#[inline(always)]
fn stats(v: &[f32], eps: f32) -> (f32, f32) {
    let m = v.len() as f64;
    let mean = (sum16(v, |x| x) / m) as f32;
    let var = sum16(v, |x| (x - mean) * (x - mean)) / m;
    (mean, (1.0 / (var + eps as f64).sqrt()) as f32)
}

/// σ(z) without a libm call per element ([`exp_fast`], ≤ 2 ulp), so the loops vectorize.
#[inline(always)]
fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + exp_fast(-z))
}

/// Geometry of a GroupNorm call: samples, channels, positions per channel, groups.
#[derive(Debug, Clone, Copy)]
struct NormGeom {
    n: usize,
    c: usize,
    hw: usize,
    groups: usize,
}

impl NormGeom {
    fn new(x: [usize; 4], groups: usize) -> Self {
        NormGeom {
            n: x[0],
            c: x[1],
            hw: x[2] * x[3],
            groups,
        }
    }
    /// Channels per group; a group of one sample is a contiguous block of `cg · hw` values.
    fn cg(&self) -> usize {
        self.c / self.groups
    }
}

fn norm_forward(x: &[f32], a: &[f32], b: &[f32], g: NormGeom, eps: f32, silu: bool) -> Vec<f32> {
    let (cg, hw) = (g.cg(), g.hw);
    let mut y = Output::new(x.len());
    y.par_chunks_mut(cg * hw)
        .zip(x.par_chunks(cg * hw))
        .enumerate()
        .for_each(|(blk, (yb, xb))| {
            // Block blk is sample blk / groups, group blk % groups: channels blk·cg.. of [N·C].
            let ch = blk * cg..(blk + 1) * cg;
            norm_block_forward(yb, xb, &a[ch.clone()], &b[ch], hw, eps, silu);
        });
    y.into_vec()
}

flowmap::multiversion! {
    /// One (sample, group) block of [`norm_forward`]: its statistics, then each channel's
    /// y = act(x̂ · a + b), compiled for the CPU's vector width.
    fn norm_block_forward(
        yb: &mut [f32],
        xb: &[f32],
        a: &[f32],
        b: &[f32],
        hw: usize,
        eps: f32,
        silu: bool,
    ) {
        let (mean, rstd) = stats(xb, eps);
        for ((yc, xc), (&aj, &bj)) in yb.chunks_mut(hw).zip(xb.chunks(hw)).zip(a.iter().zip(b)) {
            let scale = aj * rstd;
            let shift = bj - scale * mean;
            if silu {
                for (yv, &xv) in yc.iter_mut().zip(xc) {
                    let z = xv * scale + shift;
                    *yv = z * sigmoid(z);
                }
            } else {
                for (yv, &xv) in yc.iter_mut().zip(xc) {
                    *yv = xv * scale + shift;
                }
            }
        }
    }
}

/// (dx, da, db) of [`norm_forward`].
fn norm_backward(
    x: &[f32],
    a: &[f32],
    b: &[f32],
    dy: &[f32],
    g: NormGeom,
    eps: f32,
    silu: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (cg, hw) = (g.cg(), g.hw);
    let mut dx = Output::new(x.len());
    let (mut da, mut db) = (vec![0.0f32; g.n * g.c], vec![0.0f32; g.n * g.c]);
    dx.par_chunks_mut(cg * hw)
        .zip(x.par_chunks(cg * hw))
        .zip(dy.par_chunks(cg * hw))
        .zip(da.par_chunks_mut(cg).zip(db.par_chunks_mut(cg)))
        .enumerate()
        .for_each(|(blk, (((dxb, xb), dyb), (dab, dbb)))| {
            // Block blk is sample blk / groups, group blk % groups: channels blk·cg.. of [N·C].
            let ch = blk * cg..(blk + 1) * cg;
            norm_block_backward(
                dxb,
                xb,
                dyb,
                &a[ch.clone()],
                &b[ch],
                dab,
                dbb,
                hw,
                eps,
                silu,
            );
        });
    (dx.into_vec(), da, db)
}

flowmap::multiversion! {
    /// One (sample, group) block of [`norm_backward`]: dx into `dxb`, each channel's da and db
    /// into `da`, `db`, compiled for the CPU's vector width.
    #[allow(clippy::too_many_arguments)]
    fn norm_block_backward(
        dxb: &mut [f32],
        xb: &[f32],
        dyb: &[f32],
        a: &[f32],
        b: &[f32],
        da_out: &mut [f32],
        db_out: &mut [f32],
        hw: usize,
        eps: f32,
        silu: bool,
    ) {
        let m = xb.len() as f64;
        let (mean, rstd) = stats(xb, eps);
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        // Pass 1, per channel: dz (the gradient before the affine) into dx, then
        // da = Σ dz · x̂ and db = Σ dz in sixteen f32 lanes (vectorizable), combined in f64.
        // With dx̂ = dz · a: Σ dx̂ = a · db and Σ dx̂ · x̂ = a · da.
        for j in 0..a.len() {
            let (aj, bj) = (a[j], b[j]);
            let range = j * hw..(j + 1) * hw;
            let (d, xc) = (&mut dxb[range.clone()], &xb[range.clone()]);
            if silu {
                for ((d, &xv), &gy) in d.iter_mut().zip(xc).zip(&dyb[range]) {
                    let z = ((xv - mean) * rstd) * aj + bj;
                    let sg = sigmoid(z);
                    *d = gy * sg * (1.0 + z * (1.0 - sg));
                }
            } else {
                d.copy_from_slice(&dyb[range]);
            }
            // Sixteen lanes, not eight: see flowmap's `sum16`.
            let (mut da, mut db) = ([0.0f32; 16], [0.0f32; 16]);
            let (dch, xch) = (d.chunks_exact(16), xc.chunks_exact(16));
            let (dr, xr) = (dch.remainder(), xch.remainder());
            for (dz, xv) in dch.zip(xch) {
                for (((da, db), &dz), &xv) in da.iter_mut().zip(db.iter_mut()).zip(dz).zip(xv) {
                    *da += dz * ((xv - mean) * rstd);
                    *db += dz;
                }
            }
            let mut da: f64 = da.iter().map(|&v| v as f64).sum();
            let mut db: f64 = db.iter().map(|&v| v as f64).sum();
            for (&dz, &xv) in dr.iter().zip(xr) {
                da += (dz * ((xv - mean) * rstd)) as f64;
                db += dz as f64;
            }
            (da_out[j], db_out[j]) = (da as f32, db as f32);
            s1 += aj as f64 * db;
            s2 += aj as f64 * da;
        }
        // Pass 2: dx = rstd · (dz · a − mean(dx̂) − x̂ · mean(dx̂ · x̂)).
        let (m1, m2) = ((s1 / m) as f32, (s2 / m) as f32);
        for (j, &aj) in a.iter().enumerate() {
            let range = j * hw..(j + 1) * hw;
            for (d, &xv) in dxb[range.clone()].iter_mut().zip(&xb[range]) {
                let xh = (xv - mean) * rstd;
                *d = rstd * (*d * aj - m1 - xh * m2);
            }
        }
    }
}

impl FlexOps for Flex {
    fn fast_modulate_act(y: FlexTensor, m: FlexTensor, act: Activation) -> FlexTensor {
        let (y, m) = (contiguous(y), contiguous(m));
        let [n, f] = dims2(&y);
        flex(
            modulate_act_forward(slice(&y), Some(slice(&m)), f, act),
            &[n, f],
        )
    }

    fn fast_act(y: FlexTensor, act: Activation) -> FlexTensor {
        let y = contiguous(y);
        let [n, f] = dims2(&y);
        flex(modulate_act_forward(slice(&y), None, f, act), &[n, f])
    }

    fn fast_linear(x: FlexTensor, w: FlexTensor, b: FlexTensor) -> FlexTensor {
        let (x, w, b) = (contiguous(x), contiguous(w), contiguous(b));
        let ([n, inp], out) = (dims2(&x), dims2(&w)[0]);
        // One GEMM over the batch, started at the bias, split over the cores by the GEMM.
        let mut y = vec![0.0f32; n * out];
        for row in y.chunks_exact_mut(out) {
            row.copy_from_slice(slice(&b));
        }
        matmul(
            n,
            out,
            inp,
            &mut y,
            true,
            slice(&x),
            false,
            slice(&w),
            true,
            All,
        );
        flex(y, &[n, out])
    }

    fn fast_conv2d(
        x: FlexTensor,
        w: FlexTensor,
        b: FlexTensor,
        stride: usize,
        padding: usize,
    ) -> FlexTensor {
        let (x, w, b) = (contiguous(x), contiguous(w), contiguous(b));
        // The forward is the sampler's fast CPU conv (the direct convolution).
        let (y, shape) = flowmap::cpu::conv2d(
            slice(&x),
            &dims4(&x),
            slice(&w),
            &dims4(&w),
            slice(&b),
            Conv2d::new(stride, padding),
            None,
        );
        flex(y, &shape)
    }

    fn fast_group_norm(
        x: FlexTensor,
        a: FlexTensor,
        b: FlexTensor,
        groups: usize,
        eps: f32,
        silu: bool,
    ) -> FlexTensor {
        let (x, a, b) = (contiguous(x), contiguous(a), contiguous(b));
        let xs = dims4(&x);
        let g = NormGeom::new(xs, groups);
        flex(
            norm_forward(slice(&x), slice(&a), slice(&b), g, eps, silu),
            &xs,
        )
    }

    fn fast_attention(qkv: FlexTensor, heads: usize) -> FlexTensor {
        let qkv = contiguous(qkv);
        let [n, c3, l] = dims3(&qkv);
        flex(
            flowmap::cpu::attention(slice(&qkv), n, c3 / 3, l, heads),
            &[n, c3 / 3, l],
        )
    }
}

impl FlexGrads for Flex {
    fn fast_modulate_act_backward(
        y: FlexTensor,
        m: FlexTensor,
        dz: FlexTensor,
        act: Activation,
    ) -> (FlexTensor, FlexTensor) {
        let (y, m, dz) = (contiguous(y), contiguous(m), contiguous(dz));
        let [n, f] = dims2(&y);
        let (dy, dm) = modulate_act_backward(slice(&y), Some(slice(&m)), slice(&dz), f, act);
        (flex(dy, &[n, f]), flex(dm, &[n, 2 * f]))
    }

    fn fast_act_backward(y: FlexTensor, dz: FlexTensor, act: Activation) -> FlexTensor {
        let (y, dz) = (contiguous(y), contiguous(dz));
        let [n, f] = dims2(&y);
        flex(
            modulate_act_backward(slice(&y), None, slice(&dz), f, act).0,
            &[n, f],
        )
    }

    fn fast_linear_dx(x: FlexTensor, w: FlexTensor, dy: FlexTensor) -> FlexTensor {
        let ([n, inp], out) = (dims2(&x), dims2(&w)[0]);
        let (w, dy) = (contiguous(w), contiguous(dy));
        flex(linear_dx(slice(&w), slice(&dy), n, inp, out), &[n, inp])
    }

    fn fast_linear_dwb(x: FlexTensor, w: FlexTensor, dy: FlexTensor) -> (FlexTensor, FlexTensor) {
        let [out, inp] = dims2(&w);
        let (x, dy) = (contiguous(x), contiguous(dy));
        let n = dims2(&x)[0];
        let (dw, db) = linear_dwb(slice(&x), slice(&dy), n, inp, out);
        (flex(dw, &[out, inp]), flex(db, &[out]))
    }

    fn fast_conv2d_dx(
        x: FlexTensor,
        w: FlexTensor,
        dy: FlexTensor,
        stride: usize,
        padding: usize,
    ) -> FlexTensor {
        let xs = dims4(&x);
        let (w, dy) = (contiguous(w), contiguous(dy));
        let g = ConvGeom::new(&xs, &dims4(&w), stride, padding);
        flex(backward_x(slice(&w), slice(&dy), g), &xs)
    }

    fn fast_conv2d_dwb(
        x: FlexTensor,
        w: FlexTensor,
        dy: FlexTensor,
        stride: usize,
        padding: usize,
    ) -> (FlexTensor, FlexTensor) {
        let ws = dims4(&w);
        let (x, dy) = (contiguous(x), contiguous(dy));
        let g = ConvGeom::new(&dims4(&x), &ws, stride, padding);
        let (dw, db) = backward_wb(slice(&x), slice(&dy), g);
        (flex(dw, &ws), flex(db, &[g.o]))
    }

    fn fast_group_norm_backward(
        x: FlexTensor,
        a: FlexTensor,
        b: FlexTensor,
        dy: FlexTensor,
        groups: usize,
        eps: f32,
        silu: bool,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (x, a, b, dy) = (contiguous(x), contiguous(a), contiguous(b), contiguous(dy));
        let xs = dims4(&x);
        let g = NormGeom::new(xs, groups);
        let (dx, da, db) = norm_backward(slice(&x), slice(&a), slice(&b), slice(&dy), g, eps, silu);
        (flex(dx, &xs), flex(da, &[g.n, g.c]), flex(db, &[g.n, g.c]))
    }

    fn fast_attention_backward(qkv: FlexTensor, dy: FlexTensor, heads: usize) -> FlexTensor {
        let (qkv, dy) = (contiguous(qkv), contiguous(dy));
        let [n, c3, l] = dims3(&qkv);
        flex(
            attention_backward(slice(&qkv), slice(&dy), n, c3 / 3, l, heads),
            &[n, c3, l],
        )
    }
}

/// The backward of a fused op with K inputs: from the checkpointed inputs, the output's
/// gradient and the op's settings, the gradient of each input that `wanted` asks for.
trait FusedGrad<const K: usize>: std::fmt::Debug + Send + 'static {
    /// The op's settings (stride, activation, …), kept on the graph for the backward.
    type Extra: Clone + Send + std::fmt::Debug + 'static;

    fn grads<B: Backend + FlexGrads>(
        inputs: [B::FloatTensorPrimitive; K],
        dy: B::FloatTensorPrimitive,
        extra: Self::Extra,
        wanted: [bool; K],
    ) -> [Option<B::FloatTensorPrimitive>; K];
}

/// The autodiff node of every fused op: retrieves the checkpointed inputs, asks `G` for the
/// gradients and registers them.
#[derive(Debug)]
struct FusedNode<G>(std::marker::PhantomData<G>);

impl<G> FusedNode<G> {
    fn new() -> Self {
        FusedNode(std::marker::PhantomData)
    }
}

impl<B: Backend + FlexGrads, G: FusedGrad<K>, const K: usize> Backward<B, K> for FusedNode<G> {
    /// Checkpointed inputs; the op's settings.
    type State = ([NodeId; K], G::Extra);

    fn backward(
        self,
        ops: Ops<Self::State, K>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let dy = grads.consume::<B>(&ops.node);
        let (ids, extra) = ops.state;
        let inputs = ids.map(|id| checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(id));
        let wanted = ops.parents.each_ref().map(Option::is_some);
        let out = G::grads::<B>(inputs, dy, extra, wanted);
        for (node, grad) in ops.parents.into_iter().zip(out) {
            if let (Some(node), Some(grad)) = (node, grad) {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// Convolution: x, w, b; (stride, padding).
#[derive(Debug)]
struct ConvGrad;

impl FusedGrad<3> for ConvGrad {
    type Extra = (usize, usize);

    fn grads<B: Backend + FlexGrads>(
        [x, w, _]: [B::FloatTensorPrimitive; 3],
        dy: B::FloatTensorPrimitive,
        (stride, padding): (usize, usize),
        wanted: [bool; 3],
    ) -> [Option<B::FloatTensorPrimitive>; 3] {
        input_and_params(
            wanted,
            [x, w, dy],
            |[x, w, dy]| B::fast_conv2d_dx(x, w, dy, stride, padding),
            |[x, w, dy]| B::fast_conv2d_dwb(x, w, dy, stride, padding),
        )
    }
}

/// The gradients of an op on (x, w, b) whose input gradient is one product (`dx`) and whose
/// weight and bias gradients come from another (`dwb`), each run only when wanted.
fn input_and_params<P: Clone>(
    [want_x, want_w, want_b]: [bool; 3],
    [x, w, dy]: [P; 3],
    dx: impl FnOnce([P; 3]) -> P,
    dwb: impl FnOnce([P; 3]) -> (P, P),
) -> [Option<P>; 3] {
    let dx = want_x.then(|| dx([x.clone(), w.clone(), dy.clone()]));
    let (dw, db) = if want_w || want_b {
        let (dw, db) = dwb([x, w, dy]);
        (Some(dw), Some(db))
    } else {
        (None, None)
    };
    [dx, dw, db]
}

/// Linear layer: x, w, b.
#[derive(Debug)]
struct LinearGrad;

impl FusedGrad<3> for LinearGrad {
    type Extra = ();

    fn grads<B: Backend + FlexGrads>(
        [x, w, _]: [B::FloatTensorPrimitive; 3],
        dy: B::FloatTensorPrimitive,
        (): (),
        wanted: [bool; 3],
    ) -> [Option<B::FloatTensorPrimitive>; 3] {
        input_and_params(
            wanted,
            [x, w, dy],
            |[x, w, dy]| B::fast_linear_dx(x, w, dy),
            |[x, w, dy]| B::fast_linear_dwb(x, w, dy),
        )
    }
}

/// Modulation + activation: y, m; the activation.
#[derive(Debug)]
struct ModulateActGrad;

impl FusedGrad<2> for ModulateActGrad {
    type Extra = Activation;

    fn grads<B: Backend + FlexGrads>(
        [y, m]: [B::FloatTensorPrimitive; 2],
        dz: B::FloatTensorPrimitive,
        act: Activation,
        _: [bool; 2],
    ) -> [Option<B::FloatTensorPrimitive>; 2] {
        let (dy, dm) = B::fast_modulate_act_backward(y, m, dz, act);
        [Some(dy), Some(dm)]
    }
}

/// Activation alone: y; the activation.
#[derive(Debug)]
struct ActGrad;

impl FusedGrad<1> for ActGrad {
    type Extra = Activation;

    fn grads<B: Backend + FlexGrads>(
        [y]: [B::FloatTensorPrimitive; 1],
        dz: B::FloatTensorPrimitive,
        act: Activation,
        _: [bool; 1],
    ) -> [Option<B::FloatTensorPrimitive>; 1] {
        [Some(B::fast_act_backward(y, dz, act))]
    }
}

/// GroupNorm → affine → SiLU: x, a, b; (groups, eps, SiLU).
#[derive(Debug)]
struct NormGrad;

impl FusedGrad<3> for NormGrad {
    type Extra = (usize, f32, bool);

    fn grads<B: Backend + FlexGrads>(
        [x, a, b]: [B::FloatTensorPrimitive; 3],
        dy: B::FloatTensorPrimitive,
        (groups, eps, silu): (usize, f32, bool),
        _: [bool; 3],
    ) -> [Option<B::FloatTensorPrimitive>; 3] {
        let (dx, da, db) = B::fast_group_norm_backward(x, a, b, dy, groups, eps, silu);
        [Some(dx), Some(da), Some(db)]
    }
}

/// Attention: qkv; the number of heads.
#[derive(Debug)]
struct AttentionGrad;

impl FusedGrad<1> for AttentionGrad {
    type Extra = usize;

    fn grads<B: Backend + FlexGrads>(
        [qkv]: [B::FloatTensorPrimitive; 1],
        dy: B::FloatTensorPrimitive,
        heads: usize,
        _: [bool; 1],
    ) -> [Option<B::FloatTensorPrimitive>; 1] {
        [Some(B::fast_attention_backward(qkv, dy, heads))]
    }
}

/// Puts a K-input op on the autodiff graph: the inputs are checkpointed for `node`'s
/// backward, which receives their ids with `extra`; `forward` computes the value on the inner
/// backend.
fn record<B, C, N, E, const K: usize>(
    node: N,
    inputs: [FloatTensor<Autodiff<B, C>>; K],
    extra: E,
    forward: impl FnOnce([B::FloatTensorPrimitive; K]) -> B::FloatTensorPrimitive,
) -> FloatTensor<Autodiff<B, C>>
where
    B: Backend,
    C: CheckpointStrategy,
    N: Backward<B, K, State = ([NodeId; K], E)>,
    E: Clone + Send + std::fmt::Debug + 'static,
{
    match node
        .prepare::<C>(inputs.each_ref().map(|t| t.node()))
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let ids = inputs.each_ref().map(|t| prep.checkpoint(t));
            let out = forward(inputs.map(|t| t.into_primitive()));
            prep.finish((ids, extra), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(inputs.map(|t| t.into_primitive()))),
    }
}

impl<B: Backend + FlexOps + FlexGrads, C: CheckpointStrategy> FlexOps for Autodiff<B, C> {
    fn fast_modulate_act(
        y: FloatTensor<Self>,
        m: FloatTensor<Self>,
        act: Activation,
    ) -> FloatTensor<Self> {
        record::<B, C, _, _, 2>(FusedNode::<ModulateActGrad>::new(), [y, m], act, |[y, m]| {
            B::fast_modulate_act(y, m, act)
        })
    }

    fn fast_act(y: FloatTensor<Self>, act: Activation) -> FloatTensor<Self> {
        record::<B, C, _, _, 1>(FusedNode::<ActGrad>::new(), [y], act, |[y]| {
            B::fast_act(y, act)
        })
    }

    fn fast_linear(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        record::<B, C, _, _, 3>(FusedNode::<LinearGrad>::new(), [x, w, b], (), |[x, w, b]| {
            B::fast_linear(x, w, b)
        })
    }

    fn fast_group_norm(
        x: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        groups: usize,
        eps: f32,
        silu: bool,
    ) -> FloatTensor<Self> {
        record::<B, C, _, _, 3>(
            FusedNode::<NormGrad>::new(),
            [x, a, b],
            (groups, eps, silu),
            |[x, a, b]| B::fast_group_norm(x, a, b, groups, eps, silu),
        )
    }

    fn fast_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
        record::<B, C, _, _, 1>(FusedNode::<AttentionGrad>::new(), [qkv], heads, |[qkv]| {
            B::fast_attention(qkv, heads)
        })
    }

    fn fast_conv2d(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        record::<B, C, _, _, 3>(
            FusedNode::<ConvGrad>::new(),
            [x, w, b],
            (stride, padding),
            |[x, w, b]| B::fast_conv2d(x, w, b, stride, padding),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::module::conv2d as burn_conv2d;
    use burn::tensor::ops::ConvOptions;
    use burn::tensor::{Device, Distribution};

    /// Each named pair, the fast op's value or gradient and the reference's, within 1e-4 of the
    /// reference's largest magnitude.
    pub(super) fn assert_close<const N: usize>(
        case: &str,
        names: [&str; N],
        fast: [Tensor<4>; N],
        reference: [Tensor<4>; N],
    ) {
        for ((what, a), b) in names.into_iter().zip(fast).zip(reference) {
            let (worst, scale) = max_diff(a, b);
            assert!(
                worst <= 1e-4 * scale,
                "{what} for {case}: off by {worst} (scale {scale})"
            );
        }
    }

    fn max_diff(a: Tensor<4>, b: Tensor<4>) -> (f32, f32) {
        let (a, b) = (
            a.try_into_vec_as::<f32>().unwrap(),
            b.try_into_vec_as::<f32>().unwrap(),
        );
        let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        let worst = a
            .iter()
            .zip(&b)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        (worst, scale)
    }

    /// Values and the x, w and b gradients of the flex conv and of burn-wgpu's im2col + matmul
    /// path ([`crate::burn_backend::conv2d_gemm`], run here on flex) against burn's own conv2d,
    /// for every geometry the networks use (3×3 same, 3×3 stride 2, 1×1), odd sizes, batch > 1.
    #[test]
    fn fast_conv_matches_burns_conv2d() {
        let dev = Device::flex().autodiff();
        for (n, c, o, h, w, k, stride, pad) in [
            (3, 5, 7, 9, 11, 3, 1, 1),
            (2, 4, 6, 10, 7, 3, 2, 1),
            (3, 6, 5, 8, 9, 1, 1, 0),
            (1, 1, 8, 28, 28, 3, 2, 1),
            // The input gradient of these two runs as a direct convolution (stride 1).
            (2, 16, 16, 28, 28, 3, 1, 1),
            (2, 3, 4, 6, 5, 3, 1, 0),
            // On AVX-512 the forward, the input gradient and the weight gradient of this one
            // take the channels-in-lanes tiles (blocks of 32 and 8 output channels).
            (2, 24, 40, 14, 14, 3, 1, 1),
        ] {
            let x = Tensor::<4>::random([n, c, h, w], Distribution::Normal(0.0, 1.0), &dev);
            let wt = Tensor::<4>::random([o, c, k, k], Distribution::Normal(0.0, 0.3), &dev);
            let b = Tensor::<1>::random([o], Distribution::Normal(0.0, 0.3), &dev);
            // A weighted sum makes every output's gradient differ.
            let run = |path: &str| {
                let (x, wt, b) = (
                    x.clone().require_grad(),
                    wt.clone().require_grad(),
                    b.clone().require_grad(),
                );
                let y = match path {
                    "fast" => conv2d(x.clone(), wt.clone(), b.clone(), stride, pad),
                    "gemm" => crate::burn_backend::conv2d_gemm(
                        x.clone(),
                        wt.clone(),
                        b.clone(),
                        stride,
                        pad,
                    ),
                    _ => {
                        let opts = ConvOptions::new([stride; 2], [pad; 2], [1, 1], 1);
                        burn_conv2d(x.clone(), wt.clone(), Some(b.clone()), opts)
                    }
                };
                let weights = y.clone().detach().sin();
                let grads = (y.clone() * weights).sum().backward();
                [
                    y.detach(),
                    x.grad(&grads).unwrap(),
                    wt.grad(&grads).unwrap(),
                    b.grad(&grads).unwrap().reshape([o, 1, 1, 1]),
                ]
            };
            for path in ["fast", "gemm"] {
                assert_close(
                    &format!("{path}: {n}×{c}×{h}×{w} → {o}, k {k} stride {stride} pad {pad}"),
                    ["y", "dx", "dw", "db"],
                    run(path),
                    run("burn"),
                );
            }
        }
    }
}

#[cfg(test)]
mod linear_tests {
    use super::tests::assert_close;
    use super::*;
    use burn::tensor::{Device, Distribution};

    /// Values and the x, w and b gradients against burn's matmul + bias, for batches below, at
    /// and past the row block (128) and the MLP's shapes.
    #[test]
    fn fast_linear_matches_burns_matmul() {
        let dev = Device::flex().autodiff();
        for (n, inp, out) in [(1, 3, 5), (7, 2, 256), (130, 33, 17), (300, 256, 512)] {
            let x = Tensor::<2>::random([n, inp], Distribution::Normal(0.0, 1.0), &dev);
            let w = Tensor::<2>::random([out, inp], Distribution::Normal(0.0, 0.3), &dev);
            let b = Tensor::<1>::random([out], Distribution::Normal(0.0, 0.3), &dev);
            let run = |fast: bool| {
                let (x, w, b) = (
                    x.clone().require_grad(),
                    w.clone().require_grad(),
                    b.clone().require_grad(),
                );
                let y = if fast {
                    linear(x.clone(), w.clone(), b.clone())
                } else {
                    x.clone().matmul(w.clone().transpose()) + b.clone().reshape([1, out])
                };
                // A weighted sum makes every output's gradient differ.
                let weights = y.clone().detach().sin();
                let grads = (y.clone() * weights).sum().backward();
                [
                    y.detach().reshape([n, out, 1, 1]),
                    x.grad(&grads).unwrap().reshape([n, inp, 1, 1]),
                    w.grad(&grads).unwrap().reshape([out, inp, 1, 1]),
                    b.grad(&grads).unwrap().reshape([out, 1, 1, 1]),
                ]
            };
            assert_close(
                &format!("[{n}, {inp}] → {out}"),
                ["y", "dx", "dw", "db"],
                run(true),
                run(false),
            );
        }
    }
}

#[cfg(test)]
mod modulate_tests {
    use super::tests::assert_close;
    use super::*;
    use burn::tensor::activation::{gelu, relu, silu};
    use burn::tensor::{Device, Distribution};

    /// The fused modulation + activation against burn's ops, with and without the modulation,
    /// for every activation: values and the gradients of y and m.
    #[test]
    fn fused_modulate_act_matches_burn_ops() {
        let dev = Device::flex().autodiff();
        let (n, f) = (37, 19);
        let y = Tensor::<2>::random([n, f], Distribution::Normal(0.0, 2.0), &dev);
        let m = Tensor::<2>::random([n, 2 * f], Distribution::Normal(0.0, 0.5), &dev);
        for act in [
            Activation::None,
            Activation::Relu,
            Activation::Silu,
            Activation::Gelu,
        ] {
            for modulated in [true, false] {
                let run = |fast: bool| {
                    let (y, m) = (y.clone().require_grad(), m.clone().require_grad());
                    let mm = modulated.then(|| m.clone());
                    let z = if fast {
                        modulate_act(y.clone(), mm, act)
                    } else {
                        let u = match mm {
                            Some(m) => {
                                let scale = m.clone().slice([0..n, 0..f]);
                                let shift = m.slice([0..n, f..2 * f]);
                                y.clone() * (scale + 1.0) + shift
                            }
                            None => y.clone(),
                        };
                        match act {
                            Activation::None => u,
                            Activation::Relu => relu(u),
                            Activation::Silu => silu(u),
                            Activation::Gelu => gelu(u),
                        }
                    };
                    // Leaves m out of the graph when it is unused; a tensor that takes part
                    // keeps every output's gradient different.
                    let weights = z.clone().detach().cos();
                    let loss = (z.clone() * weights).sum() + m.clone().sum() * 0.0;
                    let grads = loss.backward();
                    [
                        z.detach().reshape([n, f, 1, 1]),
                        y.grad(&grads).unwrap().reshape([n, f, 1, 1]),
                        m.grad(&grads).unwrap().reshape([n, 2 * f, 1, 1]),
                    ]
                };
                assert_close(
                    &format!("{act:?}, modulated {modulated}"),
                    ["z", "dy", "dm"],
                    run(true),
                    run(false),
                );
            }
        }
    }
}

#[cfg(test)]
mod norm_tests {
    use crate::burn_backend::{BurnBackend, BurnTensor};
    use burn::tensor::{Device, Distribution, Tensor};
    use flowmap::backend::{Backend, Shaped};

    /// The fused GroupNorm (with and without the time scale-shift and SiLU) against the same
    /// op written in burn's tensor ops: values and the gradients of x, γ, β and the modulation.
    #[test]
    fn fused_group_norm_matches_burn_ops() {
        let dev = Device::flex().autodiff();
        let (n, c, h, w, groups) = (3, 12, 5, 7, 4);
        let rand = |shape: &[usize], std: f64| {
            let numel: usize = shape.iter().product();
            let t = Tensor::<1>::random([numel], Distribution::Normal(0.3, std), &dev);
            BurnTensor::from_flat(t, shape)
        };
        let (x, gamma, beta, m) = (
            rand(&[n, c, h, w], 2.0),
            rand(&[c], 1.0),
            rand(&[c], 1.0),
            rand(&[n, 2 * c], 0.5),
        );
        for (modulated, silu) in [(false, false), (true, true), (false, true), (true, false)] {
            let run = |fast: bool| {
                let mut be = BurnBackend::new(dev.clone());
                be.fast_ops = fast;
                // Gradient leaves, and the same tensors in the backend's shape.
                let leaves: Vec<Tensor<1>> = [&x, &gamma, &beta, &m]
                    .iter()
                    .map(|t| t.r1().detach().require_grad())
                    .collect();
                let wrap = |i: usize, like: &BurnTensor| {
                    BurnTensor::from_flat(leaves[i].clone(), like.shape())
                };
                let (xl, gl, bl, ml) = (wrap(0, &x), wrap(1, &gamma), wrap(2, &beta), wrap(3, &m));
                let y = be.group_norm(&xl, &gl, &bl, groups, 1e-5, modulated.then_some(&ml), silu);
                let weights = y.t.clone().detach().cos();
                let grads = (y.t.clone() * weights).sum().backward();
                let flat = |t: Tensor<1>| t.try_into_vec_as::<f32>().unwrap();
                let grad = |i: usize| flat(leaves[i].grad(&grads).unwrap());
                let mut out = vec![
                    ("y", flat(y.r1().detach())),
                    ("dx", grad(0)),
                    ("dgamma", grad(1)),
                    ("dbeta", grad(2)),
                ];
                if modulated {
                    out.push(("dmod", grad(3)));
                }
                out
            };
            for ((what, a), (_, b)) in run(true).into_iter().zip(run(false)) {
                let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
                let worst = a
                    .iter()
                    .zip(&b)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(
                    worst <= 2e-4 * scale,
                    "{what} (modulation {modulated}, silu {silu}): off by {worst} of {scale}"
                );
            }
        }
    }
}

#[cfg(test)]
mod attention_tests {
    use crate::burn_backend::{BurnBackend, BurnTensor};
    use burn::tensor::{Device, Distribution, Tensor};
    use flowmap::backend::{Backend, Shaped};

    /// The fused attention against the same op in burn's tensor ops: values and the gradient of
    /// qkv, for the U-Net's geometry (49 tokens, 32 channels, one head) and for several heads
    /// with large scores.
    #[test]
    fn fused_attention_matches_burn_ops() {
        let dev = Device::flex().autodiff();
        for (n, c, l, heads, std) in [(3, 32, 49, 1, 1.0), (2, 24, 13, 3, 3.0), (1, 8, 1, 2, 1.0)] {
            let numel = n * 3 * c * l;
            let qkv = Tensor::<1>::random([numel], Distribution::Normal(0.1, std), &dev);
            let run = |fast: bool| {
                let mut be = BurnBackend::new(dev.clone());
                be.fast_ops = fast;
                let leaf = qkv.clone().detach().require_grad();
                let x = BurnTensor::from_flat(leaf.clone(), &[n, 3 * c, l]);
                let y = be.attention(&x, heads);
                assert_eq!(y.shape(), &[n, c, l]);
                let weights = y.t.clone().detach().cos();
                let grads = (y.t.clone() * weights).sum().backward();
                let flat = |t: Tensor<1>| t.try_into_vec_as::<f32>().unwrap();
                [flat(y.r1().detach()), flat(leaf.grad(&grads).unwrap())]
            };
            for (what, (a, b)) in ["y", "dqkv"]
                .into_iter()
                .zip(run(true).into_iter().zip(run(false)))
            {
                let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
                let worst = a
                    .iter()
                    .zip(&b)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(
                    worst <= 1e-4 * scale,
                    "{what} (n {n}, c {c}, l {l}, heads {heads}): off by {worst} of {scale}"
                );
            }
        }
    }
}
