//! `emd`, Eulerian map distillation, semi-gradient form (METHOD §4):
//! E |∂_s X_{s,t}(I_s) + sg(∇_x X_{s,t}(I_s) · b̂_s(I_s))|². Both derivatives by finite
//! differences (METHOD §5); the transport term on detached parameters.

use super::derivative::{space_derivative, time_derivative, Wrt, FD_STEP};
use super::{interpolant, sample_pairs, sq_err, Batch, Ctx, Loss, TimePairs, ETA};
use crate::burn_backend::BurnTensor;
use crate::flow::FlowModel;
use burn::tensor::Tensor;
use flowmap::backend::Shaped;
use flowmap::rng::Rng;
use flowmap::{Error, Result};

pub fn loss(ctx: &Ctx, batch: &Batch, rng: &mut Rng) -> Result<Loss> {
    let teacher = ctx
        .teacher
        .ok_or_else(|| Error::Argument("emd needs --teacher".into()))?;
    let pairs = sample_pairs(rng, batch.n, ETA);
    let total = eulerian(ctx, teacher, batch, &pairs, batch.n)?;
    Ok(Loss {
        parts: vec![("emd", total.clone())],
        total,
    })
}

/// Σ |∂_s X_{s,t}(I_s) + sg(∇_x X_{s,t}(I_s) · b_s(I_s))|² / n_total, with the velocity field `b`
/// read on its diagonal (shared with `esd`).
pub fn eulerian(
    ctx: &Ctx,
    b: &dyn FlowModel,
    batch: &Batch,
    p: &TimePairs,
    n_total: usize,
) -> Result<Tensor<1>> {
    let (is, _) = interpolant(ctx, batch, &p.s);
    let (ds, _) = time_derivative(ctx.student, ctx.be, &is, &p.s, &p.t, Wrt::S, FD_STEP)?;
    let bs = b.velocity(ctx.be, &is, &p.s, &p.s)?;
    let bs = bs.detached();
    let transport = space_derivative(ctx.student_sg, ctx.be, &is, &bs, &p.s, &p.t, FD_STEP)?;
    // |∂_s X + sg(∇X·b)|² = |∂_s X − (−sg(∇X·b))|².
    let target = BurnTensor::new(transport.t.clone().detach().neg(), transport.shape());
    Ok(sq_err(&ds, &target, n_total))
}
