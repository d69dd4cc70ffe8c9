//! `lsd`, Lagrangian self-distillation (METHOD §4), teacher-free:
//! L_diag = E_t |v(t, t, I_t) − İ_t|² on the diagonal pairs and
//! L_off = E_{s<t} |∂_t X_{s,t}(I_s) − sg(v(t, t, sg(X_{s,t}(I_s))))|² on the others; the teacher is
//! the current network itself. ∂_t by finite differences (METHOD §5); X_{s,t}(I_s) is the
//! detached midpoint of the two difference evaluations.

use super::derivative::{time_derivative, Wrt, FD_STEP};
use super::{
    diagonal_fm, interpolant, pick, sample_pairs, split_diagonal, sq_err, zero, Batch, Ctx, Loss,
    ETA,
};
use flowmap::rng::Rng;
use flowmap::Result;

pub fn loss(ctx: &Ctx, batch: &Batch, rng: &mut Rng) -> Result<Loss> {
    let p = sample_pairs(rng, batch.n, ETA);
    let (diag, off) = split_diagonal(&p);
    let l_diag = if diag.is_empty() {
        zero(ctx)
    } else {
        diagonal_fm(
            ctx,
            ctx.student,
            &batch.subset(&diag),
            &pick(&p.t, &diag),
            batch.n,
        )?
    };
    let l_off = if off.is_empty() {
        zero(ctx)
    } else {
        let (s, t) = (pick(&p.s, &off), pick(&p.t, &off));
        let sub = batch.subset(&off);
        let (is, _) = interpolant(ctx, &sub, &s);
        let (dx, x_st) = time_derivative(ctx.student, ctx.be, &is, &s, &t, Wrt::T, FD_STEP)?;
        let x_st = x_st.detached();
        let target = ctx.student_sg.velocity(ctx.be, &x_st, &t, &t)?;
        let target = target.detached();
        sq_err(&dx, &target, batch.n)
    };
    Ok(Loss {
        total: l_diag.clone() + l_off.clone(),
        parts: vec![("diag", l_diag), ("off", l_off)],
    })
}
