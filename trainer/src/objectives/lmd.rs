//! `lmd`, Lagrangian map distillation (METHOD §4) from a frozen teacher b̂:
//! E |∂_t X_{s,t}(I_s) − b̂_t(X_{s,t}(I_s))|², with (s, t) from the η-sampler (a diagonal pair
//! matches v(t, t, ·) to b̂_t directly). ∂_t by finite differences (METHOD §5).

use super::derivative::{time_derivative, Wrt, FD_STEP};
use super::{interpolant, sample_pairs, sq_err, Batch, Ctx, Loss, ETA};
use flowmap::rng::Rng;
use flowmap::{Error, Result};

pub fn loss(ctx: &Ctx, batch: &Batch, rng: &mut Rng) -> Result<Loss> {
    let teacher = ctx
        .teacher
        .ok_or_else(|| Error::Argument("lmd needs --teacher".into()))?;
    let p = sample_pairs(rng, batch.n, ETA);
    let (is, _) = interpolant(ctx, batch, &p.s);
    let (dx, x_st) = time_derivative(ctx.student, ctx.be, &is, &p.s, &p.t, Wrt::T, FD_STEP)?;
    // b̂_t at the moved point; the gradient reaches the student through X_{s,t} as written.
    let target = teacher.velocity(ctx.be, &x_st, &p.t, &p.t)?;
    let total = sq_err(&dx, &target, batch.n);
    Ok(Loss {
        parts: vec![("lmd", total.clone())],
        total,
    })
}
