//! `emd`, Eulerian map distillation, semi-gradient form (METHOD §4):
//! E |∂_s X_{s,t}(I_s) + sg(∇_x X_{s,t}(I_s) · b̂_s(I_s))|², with (s, t) from the η-sampler.
//! The diagonal pairs reduce exactly to |v(t, t, I_t) − b̂_t(I_t)|² (as in `lmd`); on the others
//! both derivatives are taken by finite differences (METHOD §5), the transport term on detached
//! parameters.

use super::derivative::{space_derivative, time_derivative, Wrt, FD_STEP};
use super::{distilled_diagonal, interpolant, split_pairs, sq_err, Batch, Ctx, Loss};
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
    split_pairs(
        ctx,
        batch,
        rng,
        |ctx, diag, t| distilled_diagonal(ctx, teacher, diag, t, batch.n),
        |ctx, off, s, t, _| eulerian(ctx, teacher, off, s, t, batch.n),
    )
}

/// Σ |∂_s X_{s,t}(I_s) + sg(∇_x X_{s,t}(I_s) · b_s(I_s))|² / n_total, with the velocity field `b`
/// read on its diagonal (shared with `esd`).
pub fn eulerian(
    ctx: &Ctx,
    b: &dyn FlowModel,
    batch: &Batch,
    s: &[f32],
    t: &[f32],
    n_total: usize,
) -> Result<Tensor<1>> {
    let (is, _) = interpolant(ctx, batch, s);
    let (ds, _) = time_derivative(ctx.student, ctx.be, &is, s, t, Wrt::S, FD_STEP)?;
    let bs = b.velocity(ctx.be, &is, s, s)?;
    let bs = bs.detached();
    let transport = space_derivative(ctx.student_sg, ctx.be, &is, &bs, s, t, FD_STEP)?;
    // |∂_s X + sg(∇X·b)|² = |∂_s X − (−sg(∇X·b))|².
    let target = BurnTensor::new(transport.t.clone().detach().neg(), transport.shape());
    Ok(sq_err(&ds, &target, n_total))
}
