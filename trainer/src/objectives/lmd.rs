//! `lmd`, Lagrangian map distillation (METHOD §4) from a frozen teacher b̂:
//! E |∂_t X_{s,t}(I_s) − b̂_t(X_{s,t}(I_s))|², with (s, t) from the η-sampler.
//!
//! The diagonal pairs (t = s, the η share) reduce exactly to |v(t, t, I_t) − b̂_t(I_t)|²
//! (X_{t,t} = id, ∂_t X at t = s is v: METHOD §3), so they take one student forward and a
//! teacher forward outside the graph. The off-diagonal pairs take ∂_t by finite differences
//! (METHOD §5), and the gradient reaches the student through the teacher's input X_{s,t}(I_s)
//! as the loss is written.

use super::derivative::{time_derivative, Wrt, FD_STEP};
use super::{distilled_diagonal, interpolant, split_pairs, sq_err, Batch, Ctx, Loss};
use flowmap::rng::Rng;
use flowmap::{Error, Result};

pub fn loss(ctx: &Ctx, batch: &Batch, rng: &mut Rng) -> Result<Loss> {
    let teacher = ctx
        .teacher
        .ok_or_else(|| Error::Argument("lmd needs --teacher".into()))?;
    split_pairs(
        ctx,
        batch,
        rng,
        |ctx, diag, t| distilled_diagonal(ctx, teacher, diag, t, batch.n),
        |ctx, off, s, t, _| {
            let (is, _) = interpolant(ctx, off, s);
            let (dx, x_st) = time_derivative(ctx.student, ctx.be, &is, s, t, Wrt::T, FD_STEP)?;
            let target = teacher.velocity(ctx.be, &x_st, t, t)?;
            Ok(sq_err(&dx, &target, batch.n))
        },
    )
}
