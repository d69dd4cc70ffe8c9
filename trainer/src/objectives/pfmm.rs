//! `pfmm`, progressive flow map matching (METHOD §4) from a frozen teacher map X̌:
//! E |X_{s,t}(I_s) − sg(X̌_{u,t}(X̌_{s,u}(I_s)))|², u = (s + t)/2, with |t − s| ≤ δ_k. X̌ is the
//! teacher velocity's Euler step x + (t − s) b̂_s(x) in the first stage and the previous stage's
//! student after that; δ_k doubles per stage (the schedule lives in train.rs).

use super::{interpolant, shared_draws, sq_err, Batch, Ctx, Loss};
use crate::burn_backend::{BurnBackend, BurnTensor};
use flowmap::backend::Shaped;
use flowmap::rng::Rng;
use flowmap::{Error, Result};

/// X̌_{s,t}(x): the stage's teacher map.
fn teacher_map(
    ctx: &Ctx,
    be: &BurnBackend,
    x: &BurnTensor,
    s: &[f32],
    t: &[f32],
) -> Result<BurnTensor> {
    match ctx.teacher_map {
        Some(m) => m.flow_map(be, x, s, t),
        None => {
            let b = ctx
                .teacher
                .ok_or_else(|| Error::Argument("pfmm needs --teacher".into()))?;
            // Euler step of the teacher velocity: x + (t − s) b̂_s(x).
            let v = b.velocity(be, x, s, s)?;
            let dt: Vec<f32> = s.iter().zip(t).map(|(s, t)| t - s).collect();
            Ok(BurnTensor::new(
                x.t.clone() + crate::flow::scale_rows(be, &v, &dt).t,
                x.shape(),
            ))
        }
    }
}

pub fn loss(ctx: &Ctx, batch: &Batch, rng: &mut Rng) -> Result<Loss> {
    let n = batch.n;
    let (s, t): (Vec<f32>, Vec<f32>) = shared_draws(n, ctx.share_times, || {
        let a = rng.uniform() as f32;
        let gap = ctx.max_gap * rng.uniform() as f32;
        let lo = (a * (1.0 - gap)).max(0.0);
        (lo, (lo + gap).min(1.0))
    })
    .into_iter()
    .unzip();
    let u: Vec<f32> = s.iter().zip(&t).map(|(s, t)| 0.5 * (s + t)).collect();
    let (is, _) = interpolant(ctx, batch, &s);
    let x = ctx.student.flow_map(ctx.be, &is, &s, &t)?;
    let mid = teacher_map(ctx, ctx.be, &is, &s, &u)?;
    let target = teacher_map(ctx, ctx.be, &mid, &u, &t)?;
    let target = target.detached();
    let total = sq_err(&x, &target, n);
    Ok(Loss {
        parts: vec![("pfmm", total.clone())],
        total,
    })
}
