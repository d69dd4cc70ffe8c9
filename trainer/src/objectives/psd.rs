//! `psd`, progressive self-distillation (METHOD §4): L_diag plus, on the off-diagonal pairs,
//! E |v(s, t, I_s) − sg((1 − γ) v(s, u, I_s) + γ v(u, t, X_{s,u}(I_s)))|² with u = γ s + (1 − γ) t,
//! γ = 1/2 (PSD-M) or γ ~ U[0, 1] (PSD-U, `--psd-uniform`).

use super::{interpolant, self_distillation, sq_err, Batch, Ctx, Loss};
use crate::burn_backend::BurnTensor;
use crate::flow::scale_rows;
use flowmap::backend::Shaped;
use flowmap::rng::Rng;
use flowmap::Result;

pub fn loss(ctx: &Ctx, batch: &Batch, rng: &mut Rng) -> Result<Loss> {
    self_distillation(ctx, batch, rng, |ctx, off, s, t, rng| {
        let gamma: Vec<f32> = (0..off.n)
            .map(|_| {
                if ctx.psd_uniform {
                    rng.uniform() as f32
                } else {
                    0.5
                }
            })
            .collect();
        let u: Vec<f32> = s
            .iter()
            .zip(t)
            .zip(&gamma)
            .map(|((s, t), g)| g * s + (1.0 - g) * t)
            .collect();
        let (is, _) = interpolant(ctx, off, s);
        let v_st = ctx.student.velocity(ctx.be, &is, s, t)?;
        let sg = ctx.student_sg;
        let v_su = sg.velocity(ctx.be, &is, s, &u)?;
        let x_su = sg.flow_map(ctx.be, &is, s, &u)?;
        let v_ut = sg.velocity(ctx.be, &x_su, &u, t)?;
        let one_minus: Vec<f32> = gamma.iter().map(|g| 1.0 - g).collect();
        let target = scale_rows(ctx.be, &v_su, &one_minus).t + scale_rows(ctx.be, &v_ut, &gamma).t;
        let target = BurnTensor::new(target, v_st.shape()).detached();
        Ok(sq_err(&v_st, &target, batch.n))
    })
}
