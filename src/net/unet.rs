//! The `unet` architecture (layout documented on [`crate::config::UnetConfig`]).

use super::blocks::{AttnBlock, Conv, Norm, ResBlock};
use super::embed::Cond;
use super::ParamSource;
use crate::backend::{Backend, Conv2d};
use crate::config::UnetConfig;
use crate::error::Result;

struct Stage<B: Backend> {
    res: ResBlock<B>,
    attn: Option<AttnBlock<B>>,
}

impl<B: Backend> Stage<B> {
    fn forward(&self, be: &B, x: &B::Tensor, cond: &Cond<B>) -> B::Tensor {
        let h = self.res.forward(be, x, cond);
        match &self.attn {
            Some(a) => a.forward(be, &h),
            None => h,
        }
    }
}

struct Level<B: Backend> {
    stages: Vec<Stage<B>>,
    /// Stride-2 conv (down path) or a conv that reads its input upsampled ×2 (up path,
    /// [`Conv2d::UP`]).
    resample: Option<Conv<B>>,
}

pub struct Unet<B: Backend> {
    conv_in: Conv<B>,
    down: Vec<Level<B>>,
    mid: [Stage<B>; 2],
    up: Vec<Level<B>>,
    out_norm: Norm<B>,
    out_conv: Conv<B>,
}

impl<B: Backend> Unet<B> {
    pub fn build(c: &UnetConfig, src: &mut dyn ParamSource<B>) -> Result<Self> {
        let (g, eps, cond) = (c.groups, c.eps, c.time.hidden);
        let levels = c.channel_mult.len();
        let stage = |src: &mut dyn ParamSource<B>,
                     prefix: String,
                     i: usize,
                     cin: usize,
                     cout: usize,
                     attn: bool|
         -> Result<Stage<B>> {
            Ok(Stage {
                res: ResBlock::build(src, &format!("{prefix}.res.{i}"), cin, cout, cond, g, eps)?,
                attn: if attn {
                    Some(AttnBlock::build(
                        src,
                        &format!("{prefix}.attn.{i}"),
                        cout,
                        c.heads,
                        g,
                        eps,
                    )?)
                } else {
                    None
                },
            })
        };

        let stem = c.stem_stride == 2;
        let conv_in = Conv::build(
            src,
            "conv_in",
            c.in_channels,
            c.base_channels,
            3,
            if stem { Conv2d::DOWN } else { Conv2d::SAME },
        )?;
        // Channels of each skip connection, in push order.
        let mut skips = vec![c.base_channels];
        let mut ch = c.base_channels;
        let mut down = Vec::with_capacity(levels);
        for (level, &mult) in c.channel_mult.iter().enumerate() {
            let out = c.base_channels * mult;
            let attn = c.attention_levels.contains(&level);
            let mut stages = Vec::new();
            for i in 0..c.blocks_per_level {
                stages.push(stage(src, format!("down.{level}"), i, ch, out, attn)?);
                ch = out;
                skips.push(ch);
            }
            let resample = if level + 1 < levels {
                skips.push(ch);
                Some(Conv::build(
                    src,
                    &format!("down.{level}.downsample"),
                    ch,
                    ch,
                    3,
                    Conv2d::DOWN,
                )?)
            } else {
                None
            };
            down.push(Level { stages, resample });
        }

        let mid = [
            Stage {
                res: ResBlock::build(src, "mid.res.0", ch, ch, cond, g, eps)?,
                attn: Some(AttnBlock::build(src, "mid.attn", ch, c.heads, g, eps)?),
            },
            Stage {
                res: ResBlock::build(src, "mid.res.1", ch, ch, cond, g, eps)?,
                attn: None,
            },
        ];

        let mut up = Vec::with_capacity(levels);
        for (level, &mult) in c.channel_mult.iter().enumerate().rev() {
            let out = c.base_channels * mult;
            let attn = c.attention_levels.contains(&level);
            let mut stages = Vec::new();
            for i in 0..=c.blocks_per_level {
                let skip = skips.pop().expect("one skip per up block");
                stages.push(stage(src, format!("up.{level}"), i, ch + skip, out, attn)?);
                ch = out;
            }
            let resample = if level > 0 {
                Some(Conv::build(
                    src,
                    &format!("up.{level}.upsample"),
                    ch,
                    ch,
                    3,
                    Conv2d::UP,
                )?)
            } else {
                None
            };
            up.push(Level { stages, resample });
        }
        debug_assert!(skips.is_empty());

        Ok(Unet {
            conv_in,
            down,
            mid,
            up,
            out_norm: Norm::build(src, "out.norm", ch, g, eps)?,
            // After a stride-2 stem, the last conv reads its input upsampled back to full size.
            out_conv: Conv::build(
                src,
                "out.conv",
                ch,
                c.in_channels,
                3,
                if stem { Conv2d::UP } else { Conv2d::SAME },
            )?,
        })
    }

    pub fn forward(&self, be: &B, x: &B::Tensor, cond: &Cond<B>) -> B::Tensor {
        let mut h = self.conv_in.forward(be, x, None);
        let mut skips = vec![h.clone()];
        for level in &self.down {
            for st in &level.stages {
                h = st.forward(be, &h, cond);
                skips.push(h.clone());
            }
            if let Some(d) = &level.resample {
                h = d.forward(be, &h, None);
                skips.push(h.clone());
            }
        }
        for st in &self.mid {
            h = st.forward(be, &h, cond);
        }
        for level in &self.up {
            for st in &level.stages {
                let skip = skips.pop().expect("one skip per up block");
                h = st.forward(be, &be.concat_channels(&h, &skip), cond);
            }
            if let Some(u) = &level.resample {
                h = u.forward(be, &h, None);
            }
        }
        let h = self.out_norm.forward(be, &h, None, true);
        self.out_conv.forward(be, &h, None)
    }
}
