//! `esd`, Eulerian self-distillation (METHOD §4, optional): the `emd` residual on the
//! off-diagonal pairs with the teacher velocity replaced by the network's own diagonal
//! sg(v(s, s, ·)), plus the diagonal flow-matching term on the diagonal pairs.

use super::emd::eulerian;
use super::{self_distillation, Batch, Ctx, Loss};
use flowmap::rng::Rng;
use flowmap::Result;

pub fn loss(ctx: &Ctx, batch: &Batch, rng: &mut Rng) -> Result<Loss> {
    self_distillation(ctx, batch, rng, |ctx, off, s, t, _| {
        eulerian(ctx, ctx.student_sg, off, s, t, batch.n)
    })
}
