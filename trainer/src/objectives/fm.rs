//! `fm`: the flow-matching teacher (METHOD §2): E_{t, x0, x1} |v(t, t, I_t) − İ_t|², i.e. the
//! network trained on its diagonal, where v(t, t, ·) is the velocity b_t.

use super::{diagonal_fm, shared_draws, Batch, Ctx, Loss};
use flowmap::rng::Rng;
use flowmap::Result;

pub fn loss(ctx: &Ctx, batch: &Batch, rng: &mut Rng) -> Result<Loss> {
    let t = shared_draws(batch.n, ctx.share_times, || rng.uniform() as f32);
    let total = diagonal_fm(ctx, ctx.student, batch, &t, batch.n)?;
    Ok(Loss {
        parts: vec![("fm", total.clone())],
        total,
    })
}
