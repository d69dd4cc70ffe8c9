//! conv2d.wgsl's output tiles, and the choice of one per layer (issue 10 §5: "tiles sized to the
//! channel count").
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

/// How the GPU backend picks a convolution's tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ConvTiles {
    /// [`ConvTile::for_layer`] (the default).
    #[default]
    ByLayer,
    /// Always this tile (the GPU report's comparison, and the tests of each variant).
    Fixed(ConvTile),
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
        const BM: &str = "const BM: u32 = 64u;";
        const BK: &str = "const BK: u32 = 16u;";
        debug_assert!(conv2d.matches(BM).count() == 1 && conv2d.matches(BK).count() == 1);
        Cow::Owned(
            conv2d
                .replacen(BM, &format!("const BM: u32 = {}u;", self.channels()), 1)
                .replacen(BK, &format!("const BK: u32 = {}u;", self.k_step()), 1),
        )
    }
}

/// The WGSL source behind a pipeline's shader name: a file of [`super::SHADERS`], or a tile
/// variant of conv2d.wgsl ([`ConvTile::shader`]). `None` for an unknown name.
pub fn kernel_source(shader: &str) -> Option<Cow<'static, str>> {
    let file = |name: &str| super::SHADERS.iter().find(|(n, _)| *n == name).map(|f| f.1);
    if let Some(src) = file(shader) {
        return Some(Cow::Borrowed(src));
    }
    let tile = ConvTile::ALL.into_iter().find(|t| t.shader() == shader)?;
    Some(tile.source(file("conv2d.wgsl")?))
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
