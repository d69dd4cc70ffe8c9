//! `esd`, Eulerian self-distillation (METHOD §4, optional): the `emd` residual on the
//! off-diagonal pairs with the teacher velocity replaced by the network's own diagonal
//! sg(v(s, s, ·)), plus the diagonal flow-matching term on the diagonal pairs.

use super::emd::eulerian;
use super::{diagonal_fm, pick, sample_pairs, split_diagonal, zero, Batch, Ctx, Loss, ETA};
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
        let sub = super::TimePairs {
            s: pick(&p.s, &off),
            t: pick(&p.t, &off),
            diagonal: vec![false; off.len()],
        };
        eulerian(ctx, ctx.student_sg, &batch.subset(&off), &sub, batch.n)?
    };
    Ok(Loss {
        total: l_diag.clone() + l_off.clone(),
        parts: vec![("diag", l_diag), ("off", l_off)],
    })
}
