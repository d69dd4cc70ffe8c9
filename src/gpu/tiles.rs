//! The convolution kernels and tiles, and the choice of one per layer: conv2d.wgsl's output
//! tiles (issue 10 §5: "tiles sized to the channel count", below) and conv3x3.wgsl, the direct
//! kernel for same-size 3×3 layers ([`ConvKernel`], [`direct`]; docs/GPU.md has the analysis of
//! both). The GPU report times every choice per layer and batch ("Convolutions alone, by
//! kernel"), and those numbers are what [`ConvKernel::for_layer`] is to be set from.
//!
//! Every variant has 256 threads, each computing a 4 × 4 block, so a tile holds 4,096 outputs:
//! 64 channels × 64 pixels as written in the file, or 32 × 128 and 16 × 256 built from it by
//! rewriting its `BM` and `BK` constants. The shipped U-Net's layers have 1, 16 or 32 output
//! channels, so with the 64-channel tile alone three quarters (16 channels) or half (32) of every
//! FMA was spent on channels that do not exist: at batch 256 most of the network's convolution
//! work. The narrow tiles do the same useful work with a quarter or half of the FMAs.
//!
//! They are not always faster. With fewer workgroups than the GPU has multiprocessors, a layer is
//! latency-bound and the narrow tile's workgroup walks the same K with twice the loads per
//! thread (and, at 16 channels, twice the k-steps), so a small grid keeps the 64 × 64 tile:
//! [`ConvTile::for_layer`] uses a narrow tile only when it still yields at least
//! [`MIN_NARROW_GRID`] workgroups (an H100 has 132 multiprocessors). Neither choice has been
//! timed on a real GPU yet: the GPU report times the 64 × 64 tile beside this choice
//! (`scripts/gpu-report.sh`, "Kernels"), and its numbers decide.

use std::borrow::Cow;

/// One of conv2d.wgsl's output tiles (channels × pixels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvTile {
    /// 64 channels × 64 pixels, k-steps of 16: the file as written.
    C64,
    /// 32 channels × 128 pixels, k-steps of 16.
    C32,
    /// 16 channels × 256 pixels, k-steps of 8 (16 would need 16.6 KiB of workgroup memory, over
    /// WebGPU's default 16 KiB).
    C16,
}

/// How the GPU backend picks a convolution's kernel and tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ConvTiles {
    /// [`ConvKernel::for_layer`] (the default): conv3x3.wgsl where it applies and its grid is
    /// large enough, else conv2d.wgsl with [`ConvTile::for_layer`]'s tile.
    #[default]
    ByLayer,
    /// conv2d.wgsl alone, with [`ConvTile::for_layer`]'s tile: the choice before conv3x3.wgsl
    /// (the GPU report's comparison).
    GemmOnly,
    /// conv3x3.wgsl with this tile wherever it applies, whatever the grid, else as
    /// [`ConvTiles::ByLayer`] (the tests, whose layers are small, and the GPU report's sweep).
    Direct(DirectTile),
    /// Always conv2d.wgsl with this tile (the GPU report's comparison, and the tests of each
    /// variant).
    Fixed(ConvTile),
}

/// The kernel one convolution runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvKernel {
    /// conv2d.wgsl, the implicit GEMM, with this tile.
    Gemm(ConvTile),
    /// conv3x3.wgsl with this tile: 3×3, stride 1, padding 1, from input patches in workgroup
    /// memory.
    Direct(DirectTile),
}

/// conv3x3.wgsl's two tiles. Both have 128 threads of 4 pixels, 16 output channels a workgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DirectTile {
    /// Each thread all 16 channels: 512 pixels a workgroup, 64 FMAs per 8 workgroup-memory
    /// loads (the file as written). For large grids.
    Wide,
    /// Each thread 4 of the 16 channels (four groups of 32 threads): 128 pixels a workgroup, so
    /// four times the workgroups and a quarter of each thread's chain, at 16 FMAs per 5 loads.
    /// For small grids, where a layer is latency-bound (not chosen by default until a GPU run
    /// times it: the report's sweep does).
    Small,
}

impl DirectTile {
    pub const ALL: [DirectTile; 2] = [DirectTile::Wide, DirectTile::Small];

    /// Output channels per thread (`CO_T` in the file).
    pub fn channels_per_thread(self) -> usize {
        match self {
            DirectTile::Wide => 16,
            DirectTile::Small => 4,
        }
    }

    /// Output pixels per workgroup.
    pub fn pixels(self) -> usize {
        direct::THREADS * 4 * self.channels_per_thread() / direct::CHANNELS
    }

    /// The pipeline's shader name: the file's own for the wide tile.
    pub fn shader(self) -> &'static str {
        match self {
            DirectTile::Wide => direct::SHADER,
            DirectTile::Small => "conv3x3.wgsl#small",
        }
    }

    /// conv3x3.wgsl's source rewritten for this tile.
    pub fn source(self, conv3x3: &str) -> Cow<'_, str> {
        match self {
            DirectTile::Wide => Cow::Borrowed(conv3x3),
            DirectTile::Small => {
                Cow::Owned(set_const(conv3x3, "CO_T", 16, self.channels_per_thread()))
            }
        }
    }
}

/// `src` with the line `const {name}: u32 = {from}u;`, which it must hold once, set to `to`:
/// how the host builds a kernel's variants from its file.
fn set_const(src: &str, name: &str, from: usize, to: usize) -> String {
    let line = format!("const {name}: u32 = {from}u;");
    debug_assert!(src.matches(&line).count() == 1, "{name}");
    src.replacen(&line, &format!("const {name}: u32 = {to}u;"), 1)
}

/// conv3x3.wgsl's constants (tests/shaders.rs holds the file to them): threads a workgroup,
/// output channels a workgroup, values a patch channel may hold; and its geometry rules.
pub mod direct {
    use super::DirectTile;

    pub const THREADS: usize = 128;
    pub const CHANNELS: usize = 16;
    pub const PATCH: usize = 800;
    /// The most patch rows one loader thread takes per channel (`MAXR` in the file).
    pub const MAXR: usize = 12;
    pub const SHADER: &str = "conv3x3.wgsl";

    /// Patch rows loaded side by side per pass: one column per thread, at most one row per
    /// image (plus its zero row), so a loader's (image, row) carry crosses one image a step.
    pub fn rows_per_pass(h: usize, w: usize) -> usize {
        (THREADS / (w + 2)).min(h + 1)
    }

    /// The most patch rows a workgroup of `tile` needs on `n` images of `h` × `w` outputs: the
    /// rows its (at most `tile.pixels()`) consecutive pixels span, the zero rows between the
    /// images they cross, and one row above and below.
    pub fn patch_rows(tile: DirectTile, n: usize, h: usize, w: usize) -> usize {
        let hw = (h * w).max(1);
        let px = tile.pixels().min(n * hw).max(1);
        (w.max(1) - 1 + px - 1) / w.max(1) + (hw - 1 + px - 1) / hw + 3
    }

    /// Whether conv3x3.wgsl's `tile` computes this convolution: a 3×3 kernel, stride 1,
    /// padding 1 (the input read upsampled ×2 or not), onto `[n, _, h, w]` outputs whose
    /// patches fit, each loader thread taking at most [`MAXR`] rows of a channel.
    pub fn applies(
        tile: DirectTile,
        ksize: usize,
        geom: crate::backend::Conv2d,
        out: [usize; 3],
    ) -> bool {
        let [n, h, w] = out;
        let rs = w + 2;
        let rows = patch_rows(tile, n, h, w);
        ksize == 3
            && geom.stride == 1
            && geom.padding == 1
            && n * h * w > 0
            && rs <= THREADS
            && rows * rs <= PATCH
            && rows.div_ceil(rows_per_pass(h, w)) <= MAXR
    }

    /// (tiles along pixels, tiles in all) for `c_out` channels and `npix` output pixels.
    pub fn grid(tile: DirectTile, c_out: usize, npix: usize) -> (usize, usize) {
        let tiles_n = npix.div_ceil(tile.pixels());
        (tiles_n, c_out.div_ceil(CHANNELS) * tiles_n)
    }
}

impl ConvKernel {
    /// The kernel for a convolution of `c_out` × `c_in` × `ksize`² weights with `geom` onto
    /// `[n, c_out, h, w]`, as `tiles` asks. By default conv3x3.wgsl where it applies and gives
    /// at least [`MIN_NARROW_GRID`] workgroups; below that a layer is latency-bound and
    /// conv2d.wgsl's smaller workgroups (256 threads of 16 outputs, against 128 threads of 64)
    /// spread it over more multiprocessors.
    pub fn for_layer(
        tiles: ConvTiles,
        c_out: usize,
        ksize: usize,
        geom: crate::backend::Conv2d,
        out: [usize; 3],
    ) -> ConvKernel {
        let npix = out.iter().product();
        let fits = |t| direct::applies(t, ksize, geom, out);
        let wide = DirectTile::Wide;
        match tiles {
            ConvTiles::Fixed(t) => ConvKernel::Gemm(t),
            ConvTiles::GemmOnly => ConvKernel::Gemm(ConvTile::for_layer(c_out, npix)),
            ConvTiles::Direct(t) if fits(t) => ConvKernel::Direct(t),
            ConvTiles::ByLayer
                if fits(wide) && direct::grid(wide, c_out, npix).1 >= MIN_NARROW_GRID =>
            {
                ConvKernel::Direct(wide)
            }
            ConvTiles::ByLayer | ConvTiles::Direct(_) => {
                ConvKernel::Gemm(ConvTile::for_layer(c_out, npix))
            }
        }
    }

    /// Every kernel and tile, in the order a tuner tries them.
    pub const ALL: [ConvKernel; 5] = [
        ConvKernel::Gemm(ConvTile::C64),
        ConvKernel::Gemm(ConvTile::C32),
        ConvKernel::Gemm(ConvTile::C16),
        ConvKernel::Direct(DirectTile::Wide),
        ConvKernel::Direct(DirectTile::Small),
    ];

    /// The kernel behind a pipeline's shader name ([`Self::shader`]).
    pub fn from_shader(name: &str) -> Option<ConvKernel> {
        Self::ALL.into_iter().find(|k| k.shader() == name)
    }

    /// Whether this kernel computes a convolution of a `ksize`² kernel with `geom` onto
    /// `[n, _, h, w]` outputs: conv2d.wgsl's tiles every one, conv3x3.wgsl's where
    /// [`direct::applies`].
    pub fn applies(self, ksize: usize, geom: crate::backend::Conv2d, out: [usize; 3]) -> bool {
        match self {
            ConvKernel::Gemm(_) => true,
            ConvKernel::Direct(t) => direct::applies(t, ksize, geom, out),
        }
    }

    /// The pipeline's shader name.
    pub fn shader(self) -> &'static str {
        match self {
            ConvKernel::Gemm(t) => t.shader(),
            ConvKernel::Direct(t) => t.shader(),
        }
    }

    /// (tiles along pixels, tiles in all) for `c_out` channels and `npix` output pixels.
    pub fn grid(self, c_out: usize, npix: usize) -> (usize, usize) {
        match self {
            ConvKernel::Gemm(t) => t.grid(c_out, npix),
            ConvKernel::Direct(t) => direct::grid(t, c_out, npix),
        }
    }
}

/// One convolution's operands as a kernel choice depends on them: the input `[n, c, h, w]`, the
/// weights `[c_out, c_in, k, k]`, the geometry and whether a residual is added. The key of a
/// tuning ([`super::tune::Tuning`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvShape {
    pub x: [usize; 4],
    pub w: [usize; 4],
    pub geom: crate::backend::Conv2d,
    pub residual: bool,
}

impl ConvShape {
    /// `None` unless both shapes have four dimensions.
    pub fn new(
        x: &[usize],
        w: &[usize],
        geom: crate::backend::Conv2d,
        residual: bool,
    ) -> Option<Self> {
        Some(ConvShape {
            x: x.try_into().ok()?,
            w: w.try_into().ok()?,
            geom,
            residual,
        })
    }

    /// The output's `[n, h, w]`.
    pub fn out(&self) -> [usize; 3] {
        let o = crate::backend::conv2d_out_shape(&self.x, &self.w, self.geom);
        [o[0], o[2], o[3]]
    }

    /// Multiply-adds × 2.
    pub fn flops(&self) -> f64 {
        let [n, h, w] = self.out();
        2.0 * (n * h * w * self.w.iter().product::<usize>()) as f64
    }

    /// The kernels that compute it, in [`ConvKernel::ALL`]'s order.
    pub fn candidates(&self) -> Vec<ConvKernel> {
        ConvKernel::ALL
            .into_iter()
            .filter(|k| k.applies(self.w[2], self.geom, self.out()))
            .collect()
    }

    /// What [`ConvKernel::for_layer`] picks for it with `tiles`.
    pub fn rule(&self, tiles: ConvTiles) -> ConvKernel {
        ConvKernel::for_layer(tiles, self.w[0], self.w[2], self.geom, self.out())
    }
}

/// The fewest workgroups a narrow tile must give a layer to be used (about one per
/// multiprocessor of a datacenter GPU); smaller grids keep the 64 × 64 tile.
pub const MIN_NARROW_GRID: usize = 128;

impl ConvTile {
    pub const ALL: [ConvTile; 3] = [ConvTile::C64, ConvTile::C32, ConvTile::C16];

    /// Output channels per tile.
    pub fn channels(self) -> usize {
        match self {
            ConvTile::C64 => 64,
            ConvTile::C32 => 32,
            ConvTile::C16 => 16,
        }
    }

    /// Output pixels per tile.
    pub fn pixels(self) -> usize {
        4096 / self.channels()
    }

    /// The reduction dimension's step (`BK`).
    pub fn k_step(self) -> usize {
        match self {
            ConvTile::C16 => 8,
            _ => 16,
        }
    }

    /// The pipeline's shader name: the file's own for the 64 × 64 tile.
    pub fn shader(self) -> &'static str {
        match self {
            ConvTile::C64 => "conv2d.wgsl",
            ConvTile::C32 => "conv2d.wgsl#c32",
            ConvTile::C16 => "conv2d.wgsl#c16",
        }
    }

    /// (tiles along pixels, tiles in all) for `c_out` channels and `npix` output pixels.
    pub fn grid(self, c_out: usize, npix: usize) -> (usize, usize) {
        let tiles_n = npix.div_ceil(self.pixels());
        (tiles_n, c_out.div_ceil(self.channels()) * tiles_n)
    }

    /// The tile for a layer: the narrowest that holds its channels, unless that leaves fewer
    /// than [`MIN_NARROW_GRID`] workgroups.
    pub fn for_layer(c_out: usize, npix: usize) -> ConvTile {
        let narrow = match c_out {
            0..=16 => ConvTile::C16,
            17..=32 => ConvTile::C32,
            _ => return ConvTile::C64,
        };
        if narrow.grid(c_out, npix).1 >= MIN_NARROW_GRID {
            narrow
        } else {
            ConvTile::C64
        }
    }

    /// conv2d.wgsl's source rewritten for this tile.
    pub fn source(self, conv2d: &str) -> Cow<'_, str> {
        if self == ConvTile::C64 {
            return Cow::Borrowed(conv2d);
        }
        let src = set_const(conv2d, "BM", 64, self.channels());
        Cow::Owned(set_const(&src, "BK", 16, self.k_step()))
    }
}

/// The WGSL source behind a pipeline's shader name: a file of [`super::SHADERS`], or a tile
/// variant of conv2d.wgsl ([`ConvTile::shader`]). `None` for an unknown name.
pub fn kernel_source(shader: &str) -> Option<Cow<'static, str>> {
    let file = |name: &str| super::SHADERS.iter().find(|(n, _)| *n == name).map(|f| f.1);
    if let Some(src) = file(shader) {
        return Some(Cow::Borrowed(src));
    }
    if let Some(tile) = ConvTile::ALL.into_iter().find(|t| t.shader() == shader) {
        return Some(tile.source(file("conv2d.wgsl")?));
    }
    let tile = DirectTile::ALL.into_iter().find(|t| t.shader() == shader)?;
    Some(tile.source(file(direct::SHADER)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_follow_the_channels_where_the_grid_is_large_enough() {
        // The shipped U-Net's 28×28 layers: 784 pixels per sample.
        assert_eq!(ConvTile::for_layer(16, 784), ConvTile::C64); // batch 1: 4 narrow workgroups
        assert_eq!(ConvTile::for_layer(16, 784 * 64), ConvTile::C16);
        assert_eq!(ConvTile::for_layer(1, 784 * 256), ConvTile::C16);
        assert_eq!(ConvTile::for_layer(32, 196 * 256), ConvTile::C32);
        assert_eq!(ConvTile::for_layer(33, 784 * 256), ConvTile::C64);
        // The threshold itself: 128 workgroups of 256 pixels.
        assert_eq!(ConvTile::for_layer(16, 128 * 256), ConvTile::C16);
        assert_eq!(ConvTile::for_layer(16, 128 * 256 - 256), ConvTile::C64);
        for t in ConvTile::ALL {
            assert_eq!(t.channels() * t.pixels(), 4096);
            assert_eq!(t.grid(t.channels() + 1, t.pixels() + 1), (2, 4));
        }
    }

    #[test]
    fn the_direct_kernel_takes_the_large_same_size_3x3_layers() {
        use crate::backend::Conv2d;
        let by =
            |c_out, k, geom, out| ConvKernel::for_layer(ConvTiles::ByLayer, c_out, k, geom, out);
        const DIRECT: ConvKernel = ConvKernel::Direct(DirectTile::Wide);
        // The U-Net at batch 256: 28×28 (16 channels: 392 workgroups), 14×14 and the 28×28
        // upsampling convolution (32 channels), but not 7×7 (50 workgroups), nor stride 2 or 1×1.
        assert_eq!(by(16, 3, Conv2d::SAME, [256, 28, 28]), DIRECT);
        assert_eq!(by(32, 3, Conv2d::SAME, [256, 14, 14]), DIRECT);
        assert_eq!(by(32, 3, Conv2d::UP, [256, 28, 28]), DIRECT);
        // (7×7: 98 workgroups of the 32 × 128 tile, so the 64 × 64 tile.)
        assert_eq!(
            by(32, 3, Conv2d::SAME, [256, 7, 7]),
            ConvKernel::Gemm(ConvTile::C64)
        );
        assert_eq!(
            by(32, 3, Conv2d::DOWN, [256, 14, 14]),
            ConvKernel::Gemm(ConvTile::C32)
        );
        assert_eq!(
            by(32, 1, Conv2d::POINTWISE, [256, 28, 28]),
            ConvKernel::Gemm(ConvTile::C32)
        );
        // Batch 64: only the 28×28 upsampling convolution (196 workgroups); the 16-channel
        // 28×28 layers have 98 and keep the 16 × 256 tile (196 of those).
        assert_eq!(by(32, 3, Conv2d::UP, [64, 28, 28]), DIRECT);
        assert_eq!(
            by(16, 3, Conv2d::SAME, [64, 28, 28]),
            ConvKernel::Gemm(ConvTile::C16)
        );
        // Batch 1: every grid is small.
        assert_eq!(
            by(16, 3, Conv2d::SAME, [1, 28, 28]),
            ConvKernel::Gemm(ConvTile::C64)
        );
        // Forced, either tile takes every layer it applies to; the other modes never take it,
        // and the default never takes the small tile.
        for t in DirectTile::ALL {
            let forced =
                ConvKernel::for_layer(ConvTiles::Direct(t), 16, 3, Conv2d::SAME, [1, 7, 7]);
            assert_eq!(forced, ConvKernel::Direct(t));
            for tiles in [
                ConvTiles::GemmOnly,
                ConvTiles::Fixed(ConvTile::C16),
                ConvTiles::ByLayer,
            ] {
                let k = ConvKernel::for_layer(tiles, 16, 3, Conv2d::SAME, [1, 28, 28]);
                assert_ne!(k, ConvKernel::Direct(t));
            }
        }
        // The wide tile's patches of 512 pixels: 23 rows of 30 at 28×28, 43 of 16 at 14×14,
        // 87 of 9 at 7×7, 12 of 66 at 64×64; 80 wide no longer fits, nor 127 (a row over the
        // 128 loaders), nor many 6×6 images (104 rows of 8), though two of them (72 pixels)
        // do. The small tile's 128 pixels: 9 rows at 28×28, 25 at 7×7; 6×6 images fit.
        let wide = DirectTile::Wide;
        let small = DirectTile::Small;
        assert_eq!((wide.pixels(), small.pixels()), (512, 128));
        assert_eq!(direct::patch_rows(wide, 256, 28, 28), 23);
        assert_eq!(direct::patch_rows(wide, 256, 14, 14), 43);
        assert_eq!(direct::patch_rows(wide, 256, 7, 7), 87);
        assert_eq!(direct::patch_rows(small, 256, 28, 28), 9);
        assert_eq!(direct::patch_rows(small, 256, 7, 7), 25);
        let same = Conv2d::SAME;
        assert!(direct::applies(wide, 3, same, [4, 64, 64]));
        assert!(!direct::applies(wide, 3, same, [4, 80, 80]));
        assert!(!direct::applies(wide, 3, same, [1, 1, 127]));
        assert!(direct::applies(wide, 3, same, [1, 1, 1]));
        assert!(!direct::applies(wide, 3, same, [64, 6, 6]));
        assert!(direct::applies(wide, 3, same, [2, 6, 6]));
        assert!(direct::applies(small, 3, same, [64, 6, 6]));
        // Each loader thread's rows a channel: 6 of 23 at 28×28 (4 rows a pass), 6 of 43 at
        // 14×14 (8), 11 of 87 at 7×7 (8: one image and its zero row a pass, not 14), 12 of 12
        // at 64×64 (1). Many one-row images take too many: 16 rows of 20 pixels fit the patch
        // (35 rows of 22 values) but give 2 rows a pass (one image and its zero row), 18 each.
        assert_eq!(direct::rows_per_pass(28, 28), 4);
        assert_eq!(direct::rows_per_pass(14, 14), 8);
        assert_eq!(direct::rows_per_pass(7, 7), 8);
        assert_eq!(direct::rows_per_pass(64, 64), 1);
        assert_eq!(direct::patch_rows(wide, 256, 7, 7).div_ceil(8), 11);
        assert_eq!(direct::patch_rows(wide, 16, 1, 20), 35);
        assert!(!direct::applies(wide, 3, same, [16, 1, 20]));
        assert!(direct::applies(wide, 3, same, [4, 1, 20]));
    }

    /// Every patch conv3x3.wgsl reads is within the rows [`direct::patch_rows`] allows: the
    /// bound against each workgroup's exact span, over image sizes and batches.
    #[test]
    fn the_patch_bound_holds_for_every_workgroup() {
        let tall = |q: usize, h: usize, w: usize| {
            let n = q / (h * w);
            n * (h + 1) + (q - n * h * w) / w + 1
        };
        for h in 1..40 {
            for w in 1..40 {
                for (batch, tile) in [1, 2, 3, 7]
                    .into_iter()
                    .flat_map(|b| DirectTile::ALL.map(|t| (b, t)))
                {
                    let npix = batch * h * w;
                    let mut p0 = 0;
                    while p0 < npix {
                        let last = (p0 + tile.pixels()).min(npix) - 1;
                        let rows = tall(last, h, w) + 2 - (tall(p0, h, w) - 1);
                        let bound = direct::patch_rows(tile, batch, h, w);
                        assert!(rows <= bound, "{h}x{w} batch {batch} {tile:?}");
                        p0 += tile.pixels();
                    }
                }
            }
        }
    }

    #[test]
    fn every_variant_has_a_source_and_only_its_constants_differ() {
        let base = kernel_source("conv2d.wgsl").unwrap();
        for t in ConvTile::ALL {
            let src = kernel_source(t.shader()).unwrap();
            let changed: Vec<(&str, &str)> = base
                .lines()
                .zip(src.lines())
                .filter(|(a, b)| a != b)
                .collect();
            assert_eq!(base.lines().count(), src.lines().count());
            let want = usize::from(t != ConvTile::C64) + usize::from(t.k_step() != 16);
            assert_eq!(changed.len(), want, "{t:?}: {changed:?}");
        }
        assert!(kernel_source("conv2d.wgsl#c8").is_none());
    }
}
