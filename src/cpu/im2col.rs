//! im2col: a convolution as a matrix product. For one sample x_n [C, H, W] the matrix
//! col [C·k·k, Ho·Wo] holds, in row (c, ky, kx) and column (oy, ox), the input that tap meets at
//! that output (zero in the padding), so conv(x_n, W) = W [O, C·k·k] · col. `ConvGeom` is the one
//! geometry of the sampler's fast conv and the trainer's flex conv; the matrix itself is now only
//! the definition the direct convolution is tested against and, through col2im, the trainer's
//! input gradient for strides > 1 ([`super::direct`] builds no col).

/// Geometry of one convolution (square kernels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub ho: usize,
    pub wo: usize,
    /// h and w are the input's size after a nearest ×2 upsampling that is read, not stored:
    /// the stored input is [C, h/2, w/2] per sample ([`crate::backend::Conv2d::upsample`]).
    pub up: bool,
    /// Channels of a second input [skip, H, W] whose 1×1 convolution is added to this one
    /// (a residual block's skip projection, fused: [`Self::with_skip`]); 0 for none. Only the
    /// direct convolution's forward reads it.
    pub skip: usize,
}

impl ConvGeom {
    /// From the input shape [N, C, H, W], the weight shape [O, C, k, k], stride and padding.
    pub fn new(x: &[usize], w: &[usize], stride: usize, pad: usize) -> Self {
        let (n, c, h, wd) = (x[0], x[1], x[2], x[3]);
        let (o, k) = (w[0], w[2]);
        ConvGeom {
            n,
            c,
            h,
            w: wd,
            o,
            k,
            stride,
            pad,
            ho: (h + 2 * pad - k) / stride + 1,
            wo: (wd + 2 * pad - k) / stride + 1,
            up: false,
            skip: 0,
        }
    }

    /// This geometry with a fused 1×1 convolution of a second input of `skip` channels, the
    /// same H × W as the output: its weight rows follow the C·k·k rows of each output channel.
    /// Stride 1, an input not upsampled, and an output of the input's size (the residual
    /// block's second convolution); panics otherwise.
    pub fn with_skip(self, skip: usize) -> Self {
        assert!(
            self.stride == 1 && !self.up && self.ho == self.h && self.wo == self.w,
            "a fused skip convolution needs a stride-1, same-size convolution: {self:?}"
        );
        ConvGeom { skip, ..self }
    }

    /// [`Self::new`] for an input [N, C, H, W] read upsampled ×2: the geometry of the
    /// convolution over [N, C, 2H, 2W], with [`Self::in_len`] still the stored C·H·W.
    pub fn upsampled(x: &[usize], w: &[usize], stride: usize, pad: usize) -> Self {
        ConvGeom {
            up: true,
            ..Self::new(&[x[0], x[1], 2 * x[2], 2 * x[3]], w, stride, pad)
        }
    }

    /// Weight rows per output channel: the im2col matrix's C·k·k, plus the fused skip
    /// convolution's channels.
    pub fn rows(&self) -> usize {
        self.c * self.k * self.k + self.skip
    }

    /// Output positions per sample (Ho·Wo).
    pub fn positions(&self) -> usize {
        self.ho * self.wo
    }

    /// Values of one stored input sample (C·H·W, or C·H/2·W/2 when it is read upsampled).
    pub fn in_len(&self) -> usize {
        if self.up {
            self.c * (self.h / 2) * (self.w / 2)
        } else {
            self.c * self.h * self.w
        }
    }

    /// A 1×1, stride-1, unpadded convolution: the input already is its im2col matrix.
    pub fn pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0 && !self.up
    }

    /// For each im2col row r = (c, ky, kx) and output row oy whose input row is inside the
    /// image: (offset of the output row in col, offset of its first input in x, the output
    /// columns [ox0, ox1) whose inputs are inside). Inputs of a row are `stride` apart.
    fn for_each_row(&self, mut f: impl FnMut(usize, usize, usize, usize)) {
        let p = self.positions();
        let (pad, s) = (self.pad as isize, self.stride as isize);
        for c in 0..self.c {
            for ky in 0..self.k {
                for kx in 0..self.k {
                    let r = (c * self.k + ky) * self.k + kx;
                    // Output columns with 0 ≤ ox·s + kx − pad < w.
                    let lo = (pad - kx as isize).max(0);
                    let ox0 = ((lo + s - 1) / s) as usize;
                    let hi = self.w as isize + pad - kx as isize; // exclusive bound on ox·s
                    let ox1 = (((hi + s - 1) / s).max(0) as usize).min(self.wo);
                    if ox0 >= ox1 {
                        continue;
                    }
                    for oy in 0..self.ho {
                        let iy = oy as isize * s + ky as isize - pad;
                        if iy < 0 || iy >= self.h as isize {
                            continue;
                        }
                        let ix0 = (ox0 as isize * s + kx as isize - pad) as usize;
                        f(
                            r * p + oy * self.wo,
                            (c * self.h + iy as usize) * self.w + ix0,
                            ox0,
                            ox1,
                        );
                    }
                }
            }
        }
    }

    /// col [C·k·k, Ho·Wo] of one sample x_n [C, H, W].
    pub fn im2col(&self, x: &[f32], col: &mut [f32]) {
        self.im2col_band(x, col, 0, self.ho);
    }

    /// The columns of output rows [y0, y1) only: col [C·k·k, (y1 − y0)·Wo]. Every value is
    /// written once (zeros only where a tap falls in the padding), no clearing pass.
    pub fn im2col_band(&self, x: &[f32], col: &mut [f32], y0: usize, y1: usize) {
        let (wo, p) = (self.wo, (y1 - y0) * self.wo);
        let (pad, s) = (self.pad as isize, self.stride as isize);
        for c in 0..self.c {
            for ky in 0..self.k {
                for kx in 0..self.k {
                    let r = (c * self.k + ky) * self.k + kx;
                    let row = &mut col[r * p..(r + 1) * p];
                    // Output columns with 0 ≤ ox·s + kx − pad < w.
                    let lo = (pad - kx as isize).max(0);
                    let ox0 = (((lo + s - 1) / s) as usize).min(wo);
                    let hi = self.w as isize + pad - kx as isize;
                    let ox1 = (((hi + s - 1) / s).max(0) as usize).clamp(ox0, wo);
                    for (oy, dst) in (y0..y1).zip(row.chunks_mut(wo)) {
                        let iy = oy as isize * s + ky as isize - pad;
                        if iy < 0 || iy >= self.h as isize || ox0 == ox1 {
                            dst.fill(0.0);
                            continue;
                        }
                        dst[..ox0].fill(0.0);
                        dst[ox1..].fill(0.0);
                        let ix0 = (ox0 as isize * s + kx as isize - pad) as usize;
                        let src = &x[(c * self.h + iy as usize) * self.w + ix0..];
                        let dst = &mut dst[ox0..ox1];
                        if s == 1 {
                            dst.copy_from_slice(&src[..dst.len()]);
                        } else {
                            for (j, d) in dst.iter_mut().enumerate() {
                                *d = src[j * self.stride];
                            }
                        }
                    }
                }
            }
        }
    }

    /// The adjoint of [`im2col`](Self::im2col): scatter-adds col into dx_n.
    pub fn col2im(&self, col: &[f32], dx: &mut [f32]) {
        let s = self.stride;
        self.for_each_row(|out, inp, ox0, ox1| {
            for (j, v) in col[out + ox0..out + ox1].iter().enumerate() {
                dx[inp + j * s] += v;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ⟨im2col(x), c⟩ = ⟨x, col2im(c)⟩ for every geometry the networks use, and each entry
    /// of col is the input its tap meets.
    #[test]
    fn col2im_is_the_adjoint_and_entries_are_taps() {
        for (k, s, p) in [(3, 1, 1), (3, 2, 1), (1, 1, 0), (3, 2, 0), (2, 2, 0)] {
            let g = ConvGeom::new(&[1, 2, 5, 6], &[3, 2, k, k], s, p);
            let x: Vec<f32> = (0..g.in_len()).map(|i| (i as f32 * 0.7).sin()).collect();
            let mut col = vec![f32::NAN; g.rows() * g.positions()];
            g.im2col(&x, &mut col);
            for (r, row) in col.chunks(g.positions()).enumerate() {
                let (c, ky, kx) = (r / (k * k), (r / k) % k, r % k);
                for (q, &v) in row.iter().enumerate() {
                    let iy = (q / g.wo * s + ky) as isize - p as isize;
                    let ix = (q % g.wo * s + kx) as isize - p as isize;
                    let inside = iy >= 0 && ix >= 0 && iy < 5 && ix < 6;
                    let want = if inside {
                        x[(c * 5 + iy as usize) * 6 + ix as usize]
                    } else {
                        0.0
                    };
                    assert_eq!(v, want, "k={k} s={s} p={p} row {r} col {q}");
                }
            }
            // A band is the matching slice of every row.
            let (y0, y1) = (1, g.ho.min(3));
            let mut band = vec![f32::NAN; g.rows() * (y1 - y0) * g.wo];
            g.im2col_band(&x, &mut band, y0, y1);
            for (r, row) in band.chunks((y1 - y0) * g.wo).enumerate() {
                let full = &col[r * g.positions() + y0 * g.wo..r * g.positions() + y1 * g.wo];
                assert_eq!(row, full, "band row {r}");
            }
            let c: Vec<f32> = (0..col.len()).map(|i| (i as f32 * 0.3).cos()).collect();
            let mut dx = vec![0.0f32; x.len()];
            g.col2im(&c, &mut dx);
            let lhs: f64 = col.iter().zip(&c).map(|(a, b)| (a * b) as f64).sum();
            let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| (a * b) as f64).sum();
            assert!(
                (lhs - rhs).abs() < 1e-4,
                "k={k} s={s} p={p}: {lhs} vs {rhs}"
            );
        }
    }
}
