//! `lsd`, Lagrangian self-distillation (METHOD §4), teacher-free:
//! L_diag = E_t |v(t, t, I_t) − İ_t|² on the diagonal pairs and
//! L_off = E_{s<t} |∂_t X_{s,t}(I_s) − sg(v(t, t, sg(X_{s,t}(I_s))))|² on the others; the teacher is
//! the current network itself. ∂_t by finite differences (METHOD §5); X_{s,t}(I_s) is the
//! detached midpoint of the two difference evaluations.

use super::derivative::{time_derivative, Wrt, FD_STEP};
use super::{interpolant, self_distillation, sq_err, Batch, Ctx, Loss};
use flowmap::rng::Rng;
use flowmap::Result;

pub fn loss(ctx: &Ctx, batch: &Batch, rng: &mut Rng) -> Result<Loss> {
    self_distillation(ctx, batch, rng, |ctx, off, s, t, _| {
        let (is, _) = interpolant(ctx, off, s);
        let (dx, x_st) = time_derivative(ctx.student, ctx.be, &is, s, t, Wrt::T, FD_STEP)?;
        let target = ctx
            .student_sg
            .velocity(ctx.be, &x_st.detached(), t, t)?
            .detached();
        Ok(sq_err(&dx, &target, batch.n))
    })
}
