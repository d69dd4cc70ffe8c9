//! U-Net building blocks: convolutions, norms, the time-conditioned residual block and the
//! self-attention block.

use super::embed::{Cond, Dense};
use super::ParamSource;
use crate::backend::{Backend, Conv2d, Shaped};
use crate::error::Result;

pub struct Conv<B: Backend> {
    w: B::Tensor,
    b: B::Tensor,
    geom: Conv2d,
}

impl<B: Backend> Conv<B> {
    pub fn build(
        src: &mut dyn ParamSource<B>,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        geom: Conv2d,
    ) -> Result<Self> {
        Ok(Conv {
            w: src.param(&format!("{name}.weight"), &[cout, cin, k, k])?,
            b: src.param(&format!("{name}.bias"), &[cout])?,
            geom,
        })
    }

    pub fn forward(&self, be: &B, x: &B::Tensor, residual: Option<&B::Tensor>) -> B::Tensor {
        be.conv2d(x, &self.w, &self.b, self.geom, residual)
    }

    /// self(x) + skip(s) for a 1×1 convolution `skip`, as one op ([`Backend::conv2d_skip`]).
    pub fn forward_with_skip(
        &self,
        be: &B,
        x: &B::Tensor,
        skip: &Conv<B>,
        s: &B::Tensor,
    ) -> B::Tensor {
        debug_assert_eq!(skip.geom, Conv2d::POINTWISE, "a skip convolution is 1×1");
        be.conv2d_skip(x, &self.w, &self.b, self.geom, s, &skip.w, &skip.b)
    }
}

pub struct Norm<B: Backend> {
    gamma: B::Tensor,
    beta: B::Tensor,
    groups: usize,
    eps: f32,
}

impl<B: Backend> Norm<B> {
    pub fn build(
        src: &mut dyn ParamSource<B>,
        name: &str,
        ch: usize,
        groups: usize,
        eps: f32,
    ) -> Result<Self> {
        Ok(Norm {
            gamma: src.param(&format!("{name}.weight"), &[ch])?,
            beta: src.param(&format!("{name}.bias"), &[ch])?,
            groups,
            eps,
        })
    }

    pub fn forward(
        &self,
        be: &B,
        x: &B::Tensor,
        modulation: Option<&B::Tensor>,
        silu: bool,
    ) -> B::Tensor {
        be.group_norm(
            x,
            &self.gamma,
            &self.beta,
            self.groups,
            self.eps,
            modulation,
            silu,
        )
    }
}

/// h = conv1(SiLU(GN(x))); h = conv2(SiLU(GN(h)·(1 + scale) + shift)) + skip(x), with
/// (scale, shift) = emb(cond).
pub struct ResBlock<B: Backend> {
    norm1: Norm<B>,
    conv1: Conv<B>,
    emb: Dense<B>,
    norm2: Norm<B>,
    conv2: Conv<B>,
    skip: Option<Conv<B>>,
}

impl<B: Backend> ResBlock<B> {
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        src: &mut dyn ParamSource<B>,
        name: &str,
        cin: usize,
        cout: usize,
        cond: usize,
        groups: usize,
        eps: f32,
    ) -> Result<Self> {
        Ok(ResBlock {
            norm1: Norm::build(src, &format!("{name}.norm1"), cin, groups, eps)?,
            conv1: Conv::build(src, &format!("{name}.conv1"), cin, cout, 3, Conv2d::SAME)?,
            emb: Dense::build(src, &format!("{name}.emb"), cond, 2 * cout)?,
            norm2: Norm::build(src, &format!("{name}.norm2"), cout, groups, eps)?,
            conv2: Conv::build(src, &format!("{name}.conv2"), cout, cout, 3, Conv2d::SAME)?,
            skip: if cin != cout {
                Some(Conv::build(
                    src,
                    &format!("{name}.skip"),
                    cin,
                    cout,
                    1,
                    Conv2d::POINTWISE,
                )?)
            } else {
                None
            },
        })
    }

    pub fn forward(&self, be: &B, x: &B::Tensor, cond: &Cond<B>) -> B::Tensor {
        let h = self.norm1.forward(be, x, None, true);
        let h = self.conv1.forward(be, &h, None);
        let m = cond.project(be, &self.emb);
        let h = self.norm2.forward(be, &h, Some(&m), true);
        match &self.skip {
            // The 1×1 projection with the second convolution: one op where the backend fuses
            // them (no residual tensor in between).
            Some(s) => self.conv2.forward_with_skip(be, &h, s, x),
            None => self.conv2.forward(be, &h, Some(x)),
        }
    }
}

/// x + proj(attention(qkv(GN(x)))), attention over the H·W positions.
pub struct AttnBlock<B: Backend> {
    norm: Norm<B>,
    qkv: Conv<B>,
    proj: Conv<B>,
    heads: usize,
}

impl<B: Backend> AttnBlock<B> {
    pub fn build(
        src: &mut dyn ParamSource<B>,
        name: &str,
        ch: usize,
        heads: usize,
        groups: usize,
        eps: f32,
    ) -> Result<Self> {
        Ok(AttnBlock {
            norm: Norm::build(src, &format!("{name}.norm"), ch, groups, eps)?,
            qkv: Conv::build(
                src,
                &format!("{name}.qkv"),
                ch,
                3 * ch,
                1,
                Conv2d::POINTWISE,
            )?,
            proj: Conv::build(src, &format!("{name}.proj"), ch, ch, 1, Conv2d::POINTWISE)?,
            heads,
        })
    }

    pub fn forward(&self, be: &B, x: &B::Tensor) -> B::Tensor {
        let s = x.shape().to_vec();
        let h = self.norm.forward(be, x, None, false);
        let qkv = self.qkv.forward(be, &h, None);
        let qkv = be.reshape(&qkv, &[s[0], 3 * s[1], s[2] * s[3]]);
        let o = be.attention(&qkv, self.heads);
        let o = be.reshape(&o, &s);
        self.proj.forward(be, &o, Some(x))
    }
}
