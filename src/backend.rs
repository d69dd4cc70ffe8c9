//! The op set the network is written against. The CPU reference (`cpu/`), the WGSL kernels
//! (`gpu/`) and the shape/FLOP analyser (`shape.rs`) implement it, so the network in `net/` is
//! written once and the backends cannot drift apart. Each op has one WGSL file, one CPU function
//! and one parity test.

use crate::config::Activation;
use crate::error::Result;

/// 2-D convolution geometry (square kernels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conv2d {
    pub stride: usize,
    pub padding: usize,
    /// The convolution reads its input upsampled ×2 by nearest neighbour ([N, C, 2H, 2W],
    /// value (y, x) = input (⌊y/2⌋, ⌊x/2⌋)) without that tensor being stored: the U-Net's up
    /// path, one op (one GPU dispatch) where an upsample and a convolution were two.
    pub upsample: bool,
}

impl Conv2d {
    pub const SAME: Conv2d = Conv2d {
        stride: 1,
        padding: 1,
        upsample: false,
    };
    pub const POINTWISE: Conv2d = Conv2d {
        stride: 1,
        padding: 0,
        upsample: false,
    };
    pub const DOWN: Conv2d = Conv2d {
        stride: 2,
        padding: 1,
        upsample: false,
    };
    /// Nearest ×2 upsampling, then a same-size convolution.
    pub const UP: Conv2d = Conv2d {
        stride: 1,
        padding: 1,
        upsample: true,
    };

    /// A stride and padding, without upsampling.
    pub const fn new(stride: usize, padding: usize) -> Conv2d {
        Conv2d {
            stride,
            padding,
            upsample: false,
        }
    }

    /// The same geometry on an input already upsampled (`upsample` off).
    pub const fn plain(self) -> Conv2d {
        Conv2d::new(self.stride, self.padding)
    }

    /// Output size along one axis for input size `n` (before any upsampling) and kernel size
    /// `k`.
    pub fn out_size(&self, n: usize, k: usize) -> usize {
        let n = if self.upsample { 2 * n } else { n };
        (n + 2 * self.padding - k) / self.stride + 1
    }
}

/// Op families, for FLOP accounting and per-family benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpFamily {
    Conv2d,
    GroupNorm,
    Linear,
    Embedding,
    Attention,
    Upsample,
    Concat,
    Elementwise,
}

impl OpFamily {
    pub const ALL: [OpFamily; 8] = [
        OpFamily::Conv2d,
        OpFamily::GroupNorm,
        OpFamily::Linear,
        OpFamily::Embedding,
        OpFamily::Attention,
        OpFamily::Upsample,
        OpFamily::Concat,
        OpFamily::Elementwise,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpFamily::Conv2d => "conv2d",
            OpFamily::GroupNorm => "group_norm",
            OpFamily::Linear => "linear",
            OpFamily::Embedding => "embedding",
            OpFamily::Attention => "attention",
            OpFamily::Upsample => "upsample",
            OpFamily::Concat => "concat",
            OpFamily::Elementwise => "elementwise",
        }
    }
}

/// A tensor's shape (row-major, batch first).
pub trait Shaped {
    fn shape(&self) -> &[usize];
    fn len(&self) -> usize {
        self.shape().iter().product()
    }
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The operations of the flow-map networks. Layouts: images NCHW, vectors [N, F];
/// conv weights [C_out, C_in, k, k]; linear weights [out, in] (PyTorch's convention).
pub trait Backend {
    type Tensor: Shaped + Clone;

    /// Copies host data into a new tensor.
    fn upload(&self, data: &[f32], shape: &[usize]) -> Result<Self::Tensor>;
    /// Copies times for [`Self::timestep_embedding`] into a new tensor, kept in f32 where
    /// tensors are otherwise stored in f16 (crate::precision): f16 would move the embedding's
    /// phases. The same as `upload` elsewhere.
    fn upload_times(&self, data: &[f32], shape: &[usize]) -> Result<Self::Tensor> {
        self.upload(data, shape)
    }
    /// Copies a tensor back to the host (waits for pending work).
    fn download(&self, t: &Self::Tensor) -> Result<Vec<f32>>;
    /// Waits until all recorded work has finished (for timing); a no-op on the CPU.
    fn sync(&self) -> Result<()>;
    /// Starts the work recorded so far without waiting for it (the GPU submits its command
    /// encoder), so the host records the next step while the device runs this one. A no-op
    /// where ops run as they are called.
    fn flush(&self) {}

    /// y = conv(x, w) + bias (+ residual). x: [N, Cin, H, W], w: [Cout, Cin, k, k]; with
    /// `geom.upsample` the convolution reads x upsampled ×2 ([`Conv2d::upsample`]).
    fn conv2d(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        bias: &Self::Tensor,
        geom: Conv2d,
        residual: Option<&Self::Tensor>,
    ) -> Self::Tensor;

    /// A residual block's second convolution with its 1×1 skip projection:
    /// conv(x, w) + bias + conv1×1(skip, skip_w) + skip_b, skip [N, Cs, Ho, Wo] at the
    /// output's size. By default the two convolutions (the skip's output as the residual);
    /// the CPU's fast path on AVX-512 runs them as one pass over both inputs.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_skip(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        bias: &Self::Tensor,
        geom: Conv2d,
        skip: &Self::Tensor,
        skip_w: &Self::Tensor,
        skip_b: &Self::Tensor,
    ) -> Self::Tensor {
        conv2d_skip_unfused(self, x, w, bias, geom, skip, skip_w, skip_b)
    }

    /// Whether [`Self::conv2d_skip`] runs as one op here rather than the default's two
    /// convolutions (profilers count ops, and a GPU timer counts dispatches).
    fn fuses_conv2d_skip(&self) -> bool {
        false
    }

    /// GroupNorm over (C/groups, H, W) with affine gamma/beta, then optionally the time
    /// scale-shift y·(1 + scale) + shift with `modulation` [M, 2C] = [scale | shift], then
    /// optionally SiLU. M divides N and each row serves N / M consecutive samples
    /// ([`modulation_repeat`]): a batch that shares its times passes one row, not N copies.
    #[allow(clippy::too_many_arguments)]
    fn group_norm(
        &self,
        x: &Self::Tensor,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
        groups: usize,
        eps: f32,
        modulation: Option<&Self::Tensor>,
        silu: bool,
    ) -> Self::Tensor;

    /// y = act((x wᵀ + b) · (1 + scale) + shift). x: [N, in], w: [out, in], modulation
    /// [M, 2·out], each row serving N / M consecutive rows of x as in [`Self::group_norm`].
    fn linear(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        bias: &Self::Tensor,
        modulation: Option<&Self::Tensor>,
        act: Activation,
    ) -> Self::Tensor;

    /// Sinusoidal embedding of times [N] into [N, dim] = [cos(ω_i τ) | sin(ω_i τ)],
    /// τ = time_scale · t, ω_i = max_period^(−i / (dim/2)).
    fn timestep_embedding(
        &self,
        times: &Self::Tensor,
        dim: usize,
        max_period: f32,
        time_scale: f32,
    ) -> Self::Tensor;

    /// Multi-head self-attention on qkv [N, 3C, L] (q, k, v stacked on channels, heads split
    /// each into C/heads channels) → [N, C, L]; softmax(qᵀk / √d) applied to v.
    fn attention(&self, qkv: &Self::Tensor, heads: usize) -> Self::Tensor;

    /// Nearest-neighbour ×2 upsampling of [N, C, H, W].
    fn upsample_nearest2x(&self, x: &Self::Tensor) -> Self::Tensor;

    /// Concatenation of [N, Ca, H, W] and [N, Cb, H, W] along channels.
    fn concat_channels(&self, a: &Self::Tensor, b: &Self::Tensor) -> Self::Tensor;

    /// The same data viewed with another shape of equal size (free on every backend).
    fn reshape(&self, t: &Self::Tensor, shape: &[usize]) -> Self::Tensor;

    /// a + b, same shapes.
    fn add(&self, a: &Self::Tensor, b: &Self::Tensor) -> Self::Tensor;

    /// act(x) elementwise.
    fn activation(&self, x: &Self::Tensor, act: Activation) -> Self::Tensor;

    /// The flow-map update x + (t − s) · v (METHOD §3), `dt` = t − s.
    fn flow_step(&self, x: &Self::Tensor, v: &Self::Tensor, dt: f32) -> Self::Tensor;
}

/// How many consecutive samples of a batch of `n` share each row of a time modulation of
/// `mod_len` values, [M, 2·`channels`]: n / M. Panics unless M is a positive divisor of n (the
/// network builds the modulation; a mismatch is a bug, not bad input).
pub fn modulation_repeat(n: usize, channels: usize, mod_len: usize) -> usize {
    let rows = mod_len / (2 * channels).max(1);
    assert!(
        rows > 0 && rows * 2 * channels == mod_len && n.is_multiple_of(rows),
        "a modulation of {mod_len} values is not [M, 2·{channels}] with M dividing {n}"
    );
    n / rows
}

/// The check every backend's upload makes: `len` values must fill `shape` exactly.
pub fn check_fill(len: usize, shape: &[usize]) -> Result<()> {
    if len != shape.iter().product::<usize>() {
        return Err(crate::error::Error::Argument(format!(
            "{len} values do not fill shape {shape:?}"
        )));
    }
    Ok(())
}

/// Shape of a conv2d output.
/// [`Backend::conv2d_skip`] as its definition, two convolutions: the skip's 1×1 output is the
/// main convolution's residual. The default, and what a fusing backend falls back to.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_skip_unfused<B: Backend + ?Sized>(
    be: &B,
    x: &B::Tensor,
    w: &B::Tensor,
    bias: &B::Tensor,
    geom: Conv2d,
    skip: &B::Tensor,
    skip_w: &B::Tensor,
    skip_b: &B::Tensor,
) -> B::Tensor {
    let s = be.conv2d(skip, skip_w, skip_b, Conv2d::POINTWISE, None);
    be.conv2d(x, w, bias, geom, Some(&s))
}

pub fn conv2d_out_shape(x: &[usize], w: &[usize], geom: Conv2d) -> Vec<usize> {
    vec![
        x[0],
        w[0],
        geom.out_size(x[2], w[2]),
        geom.out_size(x[3], w[3]),
    ]
}
