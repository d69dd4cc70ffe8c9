//! Direct convolution for every kernel size, stride and padding: an implicit GEMM over the
//! zero-padded image with a register-blocked microkernel, and no im2col matrix.
//!
//! Pad one sample's input x_n [C, H, W] to [C, H + 2p, W + 2p] and lay it out flat. Index the
//! outputs on the padded grid, q = oy·Wp + ox (Wp = W + 2p): the input that tap (c, ky, kx)
//! meets at output q is then `xpad[c·Hp·Wp + ky·Wp + kx + q]`, so for a block of NR consecutive
//! q the im2col matrix's NR columns of row (c, ky, kx) are one contiguous run of the padded
//! image at a fixed offset. The microkernel (`tile`) accumulates an MR × NR block of
//! Y = W · col straight from those runs; positions whose ox falls in the padding (ox ≥ Wo) are
//! computed and dropped, the price of not packing (Wo / Wp of the work is kept: 93% at 28×28,
//! 88% at 14×14, 78% at 7×7). The drop happens in the store, which adds each row run of the
//! tile into the output, so the epilogue (bias, residual) is whatever the output already holds.
//! A stride s > 1 splits the padded image into s² phases (pixels (s·i + py, s·j + px) for each
//! (py, px)), in which every tap is again a contiguous run at a fixed offset (`Band`).
//!
//! The tile shape follows the vector unit, chosen once per call by CPUID: 4 × 48 on AVX-512
//! (12 zmm accumulators; 4 × 32 when that wastes fewer positions, e.g. at 7×7), 6 × 16 on
//! AVX2+FMA (12 ymm, the classic Haswell shape), 4 × 8 elsewhere (SSE2, wasm simd128, NEON).
//! One generic body, compiled per target feature set, as in [`super::simd`]. The shapes were
//! picked by timing the 16 → 16, 28×28 convolution on one core for 10 shapes per instruction
//! set: the compiler keeps these accumulators in registers, while e.g. 8 × 32 on AVX-512 fell
//! to scalar-like speed (1.1 GFLOP/s against 80–90).
//!
//! A residual block's 1×1 skip projection can ride along (`ConvGeom::skip`): its weights are
//! more rows of each output channel, and its input [Cs, H, W], which has the output's size, is
//! read at each output's own pixel: in place by the channels-in-lanes tiles, as extra planes of
//! the padded copy by the others.
//!
//! Those tiles put positions in the vector lanes and broadcast weights. On AVX-512 a second
//! family (`lanes`) puts the output channels in the lanes and broadcasts inputs, for output
//! widths that are multiples of 7 and at least 16 output channels; the first family keeps the
//! rest (other widths, the 1-channel output layer, CPUs without AVX-512).

use super::gemm;
use super::im2col::ConvGeom;

#[cfg(target_arch = "x86_64")]
mod lanes;

pub use super::simd::Isa;

impl Isa {
    /// (MR, NR): output channels × positions per tile (the widest NR of the set).
    pub fn tile(self) -> (usize, usize) {
        match self {
            Isa::Avx512 => (4, 48),
            Isa::Avx2 => (6, 16),
            Isa::Base => (4, 8),
        }
    }
}

/// Whether the geometry has work: a kernel, a stride and a non-empty output.
fn valid(g: &ConvGeom) -> bool {
    g.stride >= 1 && g.k >= 1 && g.ho >= 1 && g.wo >= 1
}

/// The weights of one convolution packed for the microkernel: per block of MR output
/// channels, [C·k·k][MR] (rows past O are zero).
#[derive(Debug, Clone)]
pub struct Direct {
    isa: Isa,
    o: usize,
    rows: usize,
    packed: Vec<f32>,
    /// The same weights for the channels-in-lanes tiles (AVX-512, at least 16 output
    /// channels; empty otherwise): per block of 16 output channels, [C·k·k][16], channels
    /// past O zero.
    lanes: Vec<f32>,
}

/// Per-thread buffers: the padded band of the input, and the tap offsets of the band
/// geometries this thread has met.
#[derive(Debug, Default)]
pub struct Scratch {
    xpad: Vec<f32>,
    offsets: Vec<TapOffsets>,
    /// The output gradient on the padded grid ([`weight_grad`]).
    dy: Vec<f32>,
}

/// Every (channel, tap)'s offset in a band's padded copy, for one geometry: a forward meets the
/// same few dozen again and again (each layer's bands), and computing C·k² offsets and their
/// maximum for every band was a twentieth of a small layer's time at batch 1.
#[derive(Debug)]
struct TapOffsets {
    /// (channels, kernel size, stride, plane, padded row width, skip channels): what the
    /// offsets depend on.
    key: [usize; 6],
    offsets: Vec<usize>,
    max: usize,
}

/// Geometries a thread keeps offsets for; past it the cache starts afresh (the U-Net meets
/// about 40).
const MAX_CACHED_GEOMETRIES: usize = 128;

impl Direct {
    /// Packs w [O, C, k, k] for the CPU's widest tiles.
    pub fn new(w: &[f32], o: usize, rows: usize) -> Self {
        Self::with_isa(Isa::detect(), w, o, rows)
    }

    /// Packs for a given instruction set (one this CPU runs; see [`Isa::available`]).
    pub fn with_isa(isa: Isa, w: &[f32], o: usize, rows: usize) -> Self {
        assert!(
            w.len() >= o * rows,
            "direct conv: weight smaller than [{o}, {rows}]"
        );
        let mr = isa.tile().0;
        let blocks = o.div_ceil(mr);
        let mut packed = vec![0.0f32; blocks * rows * mr];
        // Each weight row read in order, written every MR-th value of its block: no bounds
        // check per element (at batch 1 this packing was a fifth of the kernels' time).
        for (oc, src) in w.chunks_exact(rows).take(o).enumerate() {
            let block = &mut packed[(oc / mr) * rows * mr..][..rows * mr];
            for (d, &v) in block.iter_mut().skip(oc % mr).step_by(mr).zip(src) {
                *d = v;
            }
        }
        #[cfg(target_arch = "x86_64")]
        let lanes = match lanes::width(isa) {
            Some(n) if o >= lanes::MIN_O => lanes::pack(w, o, rows, n),
            _ => Vec::new(),
        };
        #[cfg(not(target_arch = "x86_64"))]
        let lanes = Vec::new();
        Direct {
            isa,
            o,
            rows,
            packed,
            lanes,
        }
    }

    /// The same weights without the channels-in-lanes packing: every call runs the
    /// positions-in-lanes tiles (tests and benchmarks compare the two).
    pub fn positions_in_lanes(mut self) -> Self {
        self.lanes = Vec::new();
        self
    }

    /// Whether calls with output width `wo` run the channels-in-lanes tiles (module `lanes`).
    pub fn channels_in_lanes(&self, wo: usize) -> bool {
        !self.lanes.is_empty() && wo.is_multiple_of(7)
    }

    /// y [O, (y1 − y0)·Wo] = the convolution's output rows [y0, y1) for sample xn [C, H, W]
    /// (and the fused skip input [g.skip, H, W], empty without one) plus the epilogue, whose
    /// residual covers the same rows. y's old values are not read.
    #[allow(clippy::too_many_arguments)]
    pub fn band(
        &self,
        g: &ConvGeom,
        xn: &[f32],
        skip: &[f32],
        y0: usize,
        y1: usize,
        y: &mut [f32],
        epilogue: Epilogue,
        scratch: &mut Scratch,
    ) {
        assert!(valid(g), "direct conv: empty geometry {g:?}");
        assert_eq!(
            (g.o, g.rows()),
            (self.o, self.rows),
            "direct conv: weight shape"
        );
        assert!(y0 < y1 && y1 <= g.ho && y.len() >= g.o * (y1 - y0) * g.wo);
        let args = self.band_of(g, xn, skip, y0, y1, scratch);
        let span = (y1 - y0) * g.wo;
        self.dispatch(
            &args,
            &self.packed,
            &self.lanes,
            Out::of(&mut y[..g.o * span], g.o, epilogue),
        );
    }

    /// The whole sample, y [O, Ho·Wo] = conv(xn) + epilogue, split into up to `parts` rayon
    /// tasks: the way to use several cores on one sample (batch 1). [`Split::Channels`]: blocks
    /// of MR output channels per task, all sharing one padded input; [`Split::Rows`]: bands of
    /// output rows per task, each padding its own rows (and the halo) and writing straight into
    /// its rows of y.
    #[allow(clippy::too_many_arguments)]
    pub fn sample_split(
        &self,
        g: &ConvGeom,
        xn: &[f32],
        skip: &[f32],
        y: &mut [f32],
        parts: usize,
        split: Split,
        epilogue: Epilogue,
        scratch: &mut Scratch,
    ) {
        use rayon::prelude::*;
        assert!(valid(g), "direct conv: empty geometry {g:?}");
        assert_eq!(
            (g.o, g.rows()),
            (self.o, self.rows),
            "direct conv: weight shape"
        );
        let mr = self.isa.tile().0;
        let pb = g.positions();
        let y = &mut y[..g.o * pb];
        epilogue.check(g.o, pb);
        match split {
            Split::Channels => {
                let lanes = self.channels_in_lanes(g.wo);
                let args = self.band_of(g, xn, skip, 0, g.ho, scratch);
                // Each task's channels: whole blocks of the tiles that run (a vector's lanes of
                // channels, else MR), and those blocks' weights.
                let block = if lanes { 16 } else { mr };
                let per = g.o.div_ceil(block).div_ceil(parts.max(1)) * block;
                y.par_chunks_mut(per * pb).enumerate().for_each(|(i, y)| {
                    let o = y.len() / pb;
                    let w = i * per * self.rows..(i * per + o.div_ceil(block) * block) * self.rows;
                    let (packed, lanes) = if lanes {
                        (&[][..], &self.lanes[w])
                    } else {
                        (&self.packed[w], &[][..])
                    };
                    let epi = epilogue.channels(i * per, o, pb);
                    self.dispatch(&Band { o, ..args }, packed, lanes, Out::of(y, o, epi));
                });
            }
            Split::Rows => {
                let rows_per = g.ho.div_ceil(parts.max(1));
                let base = SharedPtr(y.as_mut_ptr());
                (0..g.ho.div_ceil(rows_per)).into_par_iter().for_each(|p| {
                    let (y0, y1) = (p * rows_per, ((p + 1) * rows_per).min(g.ho));
                    let span = (y1 - y0) * g.wo;
                    // SAFETY: y holds O · Ho·Wo values; this task alone writes rows [y0, y1)
                    // of each channel, [o·Ho·Wo + y0·Wo, + span), inside y and disjoint from
                    // every other task's rows. The residual has y's layout (checked above).
                    let out = unsafe {
                        Out::rows(base.at(y0 * g.wo), pb, span, g.o, epilogue, y0 * g.wo)
                    };
                    SCRATCH.with_borrow_mut(|s| {
                        let args = self.band_of(g, xn, skip, y0, y1, s);
                        self.dispatch(&args, &self.packed, &self.lanes, out);
                    });
                });
            }
        }
    }

    /// Output rows [y0, y1) of sample xn (and its skip input) prepared for this convolution's
    /// tiles: padded for the widest of them, the skip input read in place where they can.
    fn band_of<'a>(
        &self,
        g: &ConvGeom,
        xn: &'a [f32],
        skip: &'a [f32],
        y0: usize,
        y1: usize,
        s: &'a mut Scratch,
    ) -> Band<'a> {
        let lanes = self.channels_in_lanes(g.wo);
        Band::new(g, xn, skip, lanes, y0, y1, self.nr(), s)
    }

    /// Whether this convolution runs [`tile_few`] (AVX-512, at most [`FEW_MAX`] outputs): the
    /// one test for both the tile and the padded copy it needs ([`Self::nr`]).
    #[cfg(target_arch = "x86_64")]
    fn few(&self) -> bool {
        self.isa == Isa::Avx512 && self.o <= FEW_MAX
    }

    /// The widest tile's positions, which each band's padded copy is sized for: [`tile_few`]'s
    /// 128 where it runs, else the instruction set's NR.
    fn nr(&self) -> usize {
        #[cfg(target_arch = "x86_64")]
        if self.few() {
            return 128;
        }
        self.isa.tile().1
    }

    /// Runs every tile of `args` on the channels-in-lanes tiles with the weights `lanes`
    /// (blocks of `args.o` channels) where they take its width, else with `packed` (MR blocks).
    fn dispatch(&self, args: &Band, packed: &[f32], lanes: &[f32], y: Out) {
        #[cfg(not(target_arch = "x86_64"))]
        let _ = lanes; // packed only on x86-64 (AVX-512)
        #[cfg(target_arch = "x86_64")]
        if self.channels_in_lanes(args.wo) {
            // Packed only for AVX-512 (`lanes::width`).
            assert!(std::arch::is_x86_feature_detected!("avx512f"));
            // SAFETY: the CPU has AVX-512F (asserted), the one feature it is built for.
            return unsafe { lanes::tiles_avx512(args, lanes, y) };
        }
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                assert!(std::arch::is_x86_feature_detected!("avx512f"));
                // Whole tiles over [0, q_end): the narrower tile when it wastes fewer positions.
                let slots = |nr: usize| args.q_end.div_ceil(nr) * nr;
                // SAFETY: the CPU has AVX-512F (asserted), the one feature these are built for.
                unsafe {
                    if self.few() {
                        avx512_few(args, packed, y)
                    } else if slots(32) < slots(48) {
                        avx512_narrow(args, packed, y)
                    } else {
                        avx512(args, packed, y)
                    }
                }
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                assert!(
                    std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                );
                // SAFETY: the CPU has AVX2 and FMA (asserted), the features avx2 is built for.
                unsafe { avx2(args, packed, y) }
            }
            _ => run::<4, 8, { cfg!(target_arch = "aarch64") }, 0>(args, packed, y),
        }
    }
}

/// How [`Direct::sample_split`] divides one sample among tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Blocks of output channels, one shared padded input.
    Channels,
    /// Bands of output rows, each with its own padded rows.
    Rows,
}

/// What each output of a convolution starts from, added as the tiles store it (the fused
/// epilogue): its channel's bias, plus the value at its place in `residual`, which has the
/// output's layout [O, positions].
#[derive(Debug, Clone, Copy)]
pub struct Epilogue<'a> {
    pub bias: &'a [f32],
    pub residual: Option<&'a [f32]>,
}

impl<'a> Epilogue<'a> {
    /// Panics unless it covers o channels of `positions` outputs each.
    fn check(&self, o: usize, positions: usize) {
        assert!(
            self.bias.len() >= o && self.residual.is_none_or(|r| r.len() >= o * positions),
            "direct conv: epilogue smaller than [{o}, {positions}]"
        );
    }

    /// The `o` channels from channel `first` on.
    fn channels(&self, first: usize, o: usize, positions: usize) -> Self {
        Epilogue {
            bias: &self.bias[first..first + o],
            residual: self
                .residual
                .map(|r| &r[first * positions..(first + o) * positions]),
        }
    }
}

/// Where a band's outputs go: channel c's outputs for the band's rows are the `span` values
/// from `ptr + c · stride`, for c < `o`, each the tile's sum plus `bias[c]` plus the value at
/// the same place from `res` (when there is a residual).
#[derive(Clone, Copy)]
struct Out<'a> {
    ptr: *mut f32,
    res: Option<*const f32>,
    bias: &'a [f32],
    stride: usize,
    span: usize,
    o: usize,
    _y: std::marker::PhantomData<&'a mut [f32]>,
}

impl<'a> Out<'a> {
    /// All of y, [o, y.len() / o], with an epilogue of the same shape.
    fn of(y: &'a mut [f32], o: usize, epilogue: Epilogue<'a>) -> Self {
        let stride = y.len() / o;
        epilogue.check(o, stride);
        Out {
            ptr: y.as_mut_ptr(),
            res: epilogue.residual.map(<[f32]>::as_ptr),
            bias: epilogue.bias,
            stride,
            span: stride,
            o,
            _y: std::marker::PhantomData,
        }
    }

    /// The outputs from `ptr` on, whose epilogue is `epilogue`'s from position `at` on.
    ///
    /// # Safety
    /// For every c < o, [ptr + c · stride, + span) is valid for writes and written by nothing
    /// else while the `Out` is used, and the epilogue's residual, if any, holds
    /// [at + c · stride, + span) for each such c.
    unsafe fn rows(
        ptr: *mut f32,
        stride: usize,
        span: usize,
        o: usize,
        epilogue: Epilogue<'a>,
        at: usize,
    ) -> Self {
        Out {
            ptr,
            // SAFETY: inside the residual by the caller's contract.
            res: epilogue.residual.map(|r| unsafe { r.as_ptr().add(at) }),
            bias: epilogue.bias,
            stride,
            span,
            o,
            _y: std::marker::PhantomData,
        }
    }
}

/// A sample's output shared by the tasks of [`Split::Rows`], each writing its own rows.
#[derive(Clone, Copy)]
struct SharedPtr(*mut f32);
impl SharedPtr {
    /// The address `off` values further (a method, so closures capture the whole `SharedPtr`).
    ///
    /// # Safety
    /// `off` stays inside the allocation the pointer is into.
    unsafe fn at(self, off: usize) -> *mut f32 {
        // SAFETY: by the caller's contract.
        unsafe { self.0.add(off) }
    }
}

// SAFETY: the tasks that share it write disjoint rows (see `sample_split`).
unsafe impl Send for SharedPtr {}
unsafe impl Sync for SharedPtr {}

thread_local! {
    /// The padded rows of [`Split::Rows`] tasks and of [`with_scratch`], one buffer per worker.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's scratch buffers, kept from call to call. `f` must not start
/// rayon work that could run [`Direct::sample_split`] on this thread while it holds them.
pub fn with_scratch<T>(f: impl FnOnce(&mut Scratch) -> T) -> T {
    SCRATCH.with_borrow_mut(f)
}

/// dW [O, C, k, k] += Σ_q dY_n[o, q] · col_n[(c, ky, kx), q] for one sample of a convolution
/// (the weight gradient of training), with no im2col matrix: on the padded grid (per phase for
/// strides > 1) the input a tap (ky, kx) meets is, for every channel, a run of the padded image
/// one channel plane apart, i.e. a strided matrix [Q, C]. So each tap is one GEMM
/// dW[:, :, ky, kx] += dYpad [O, Q] · that matrix, read in place ([`gemm::matmul_view`]);
/// dY is first laid out on the padded grid with zeros at the padding columns. 3×3 stride-1
/// kernels with at least 16 outputs run [`lanes::weight_grad_avx512`] on AVX-512 instead (the output
/// channels in the vector lanes, 1.4–2.2× faster on the U-Net's layers).
pub fn weight_grad(g: &ConvGeom, xn: &[f32], dyn_: &[f32], dw: &mut [f32], s: &mut Scratch) {
    assert!(valid(g), "direct weight gradient: empty geometry {g:?}");
    assert!(dyn_.len() >= g.o * g.positions() && dw.len() >= g.o * g.rows());
    let mut dy = std::mem::take(&mut s.dy);
    assert_eq!(g.skip, 0, "direct weight gradient: a fused skip input");
    let b = Band::new(g, xn, &[], false, 0, g.ho, 1, s);
    #[cfg(target_arch = "x86_64")]
    if g.k == 3
        && g.stride == 1
        && g.o >= lanes::MIN_O
        && std::arch::is_x86_feature_detected!("avx512f")
    {
        // SAFETY: AVX-512F (checked).
        unsafe { lanes::weight_grad_avx512(g, &b, dyn_, dw, &mut dy) };
        s.dy = dy;
        return;
    }
    let (q, kk) = (b.q_end, g.k * g.k);
    dy.clear();
    dy.resize(g.o * q, 0.0);
    for (dst, src) in dy.chunks_mut(q).zip(dyn_.chunks(g.positions())) {
        for (oy, row) in src.chunks(g.wo).enumerate() {
            dst[oy * b.wq..][..g.wo].copy_from_slice(row);
        }
    }
    for ky in 0..g.k {
        for kx in 0..g.k {
            let t = ky * g.k + kx;
            // Channel 0's offset of the tap; channel c is c planes further.
            let x = gemm::View {
                data: &b.xpad[b.offsets[t]..],
                rs: 1,
                cs: b.plane,
            };
            let d = gemm::View {
                data: &dy,
                rs: q,
                cs: 1,
            };
            gemm::matmul_view(g.o, g.c, q, &mut dw[t..], g.c * kk, kk, true, d, x);
        }
    }
    s.dy = dy;
}

/// One band's padded input and geometry, ready for the tiles.
#[derive(Clone, Copy)]
struct Band<'a> {
    xpad: &'a [f32],
    offsets: &'a [usize],
    /// The largest of `offsets`.
    max_off: usize,
    /// Row length of the padded grid (Wp, or ⌈Wp / stride⌉ per phase) and of the output (Wo).
    wq: usize,
    wo: usize,
    /// Values per channel of the padded band.
    plane: usize,
    /// Positions on the padded grid: [0, q_end).
    q_end: usize,
    o: usize,
    /// Weight rows per output channel (`offsets`' rows, plus `skip`'s channels).
    rows: usize,
    /// A fused skip input read in place rather than from the padded copy (the channels-in-lanes
    /// tiles, whose segments lie inside one output row): its weight rows follow `offsets`'.
    skip: Option<SkipRows<'a>>,
}

/// The skip input of a [`Band`], read where it is: channel j's value at band row i, column u
/// is `x[j · plane + i · Wo + u]` (x starts at the band's first row).
#[derive(Clone, Copy)]
// Read by the channels-in-lanes tiles only, which exist on x86-64 alone.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct SkipRows<'a> {
    x: &'a [f32],
    plane: usize,
    c: usize,
}

impl<'a> Band<'a> {
    /// The band of output rows [y0, y1) of sample xn (and its skip input): padded, with its
    /// offsets. `skip_in_place`: the tiles that run read the skip input in place (see
    /// [`Band::skip`]); otherwise it is padded beside the image and its rows are offsets.
    #[allow(clippy::too_many_arguments)]
    fn new(
        g: &ConvGeom,
        xn: &'a [f32],
        skip: &'a [f32],
        skip_in_place: bool,
        y0: usize,
        y1: usize,
        nr: usize,
        s: &'a mut Scratch,
    ) -> Self {
        assert!(
            skip.len() >= g.skip * g.h * g.w,
            "direct conv: skip input smaller than [{}, {}, {}]",
            g.skip,
            g.h,
            g.w
        );
        let rows = g.rows();
        let in_place_skip = (skip_in_place && g.skip > 0).then(|| SkipRows {
            x: &skip[y0 * g.w..g.skip * g.h * g.w],
            plane: g.h * g.w,
            c: g.skip,
        });
        // The image's part: without the skip channels when they are read in place.
        let gm = ConvGeom {
            skip: if in_place_skip.is_some() { 0 } else { g.skip },
            ..*g
        };
        let g = &gm;
        let (k, pad, st) = (g.k, g.pad, g.stride);
        // Unpadded stride-1 kernels (the 1×1 layers) read the image in place: it is its own
        // padded grid, from row y0 on, so nothing is copied; [`run`] copies only the runs of a
        // last tile that would read past its end. A fused skip input is padded beside it.
        let in_place = pad == 0 && st == 1 && !g.up && g.skip == 0;
        // Phase (py, px) holds padded pixels (st·i + py, st·j + px): rows of wq values.
        let wq = (g.w + 2 * pad).div_ceil(st);
        // Phase rows for output rows y0 .. y1: tap ky reads row (oy − y0) + ky / st.
        let hb = y1 - y0 + (k - 1) / st;
        // A padded copy holds the band's rows of each channel; in place, the whole image's.
        let plane = if in_place { g.h * g.w } else { hb * wq };
        let phase = g.c * plane;
        let q_end = (y1 - y0 - 1) * wq + g.wo;
        let key = [g.c, k, st, plane, wq, g.skip];
        let at = match s.offsets.iter().position(|o| o.key == key) {
            Some(at) => at,
            None => {
                if s.offsets.len() >= MAX_CACHED_GEOMETRIES {
                    s.offsets.clear();
                }
                let mut offsets = tap_offsets(g.c, k, st, plane, phase, wq);
                // The skip channels' planes follow the C channels' (stride 1: one phase), and
                // output q reads them at its own pixel, `pad` rows and columns in.
                offsets.extend((0..g.skip).map(|j| (g.c + j) * plane + pad * wq + pad));
                let max = offsets.iter().max().copied().unwrap_or(0);
                s.offsets.push(TapOffsets { key, offsets, max });
                s.offsets.len() - 1
            }
        };
        if !in_place {
            // Every read of the last tile stays inside: the largest offset plus whole tiles.
            let last = s.offsets[at].max;
            s.pad(g, xn, skip, y0, hb, wq, last + q_end.div_ceil(nr) * nr);
        }
        let s: &'a Scratch = s;
        Band {
            xpad: if in_place {
                &xn[y0 * g.w..g.in_len()]
            } else {
                &s.xpad
            },
            offsets: &s.offsets[at].offsets,
            max_off: s.offsets[at].max,
            wq,
            wo: g.wo,
            plane,
            q_end,
            o: g.o,
            rows,
            skip: in_place_skip,
        }
    }
}

/// Tap (ky, kx) of channel c is at c·plane + the tap's own offset in its phase (phases
/// `phase` apart, rows `wq` apart): the divisions once per tap, not per (channel, tap).
fn tap_offsets(c: usize, k: usize, st: usize, plane: usize, phase: usize, wq: usize) -> Vec<usize> {
    let taps: Vec<usize> = (0..k * k)
        .map(|t| {
            let (ky, kx) = (t / k, t % k);
            ((ky % st) * st + kx % st) * phase + (ky / st) * wq + kx / st
        })
        .collect();
    (0..c)
        .flat_map(|ch| taps.iter().map(move |&t| ch * plane + t))
        .collect()
}

impl Scratch {
    /// [`Self::pad`] for an input read upsampled ×2 (`g.up`: g.h × g.w is the upsampled size,
    /// xn holds C planes of g.h/2 × g.w/2): each padded row is its source row with every value
    /// doubled, written as pairs (which vectorize), so the upsampled input is never stored.
    fn pad_upsampled(
        &mut self,
        g: &ConvGeom,
        xn: &[f32],
        y0: usize,
        hb: usize,
        wq: usize,
        len: usize,
    ) {
        let (pad, st) = (g.pad, g.stride);
        assert!(st == 1, "an upsampled convolution has stride 1");
        let (hs, ws) = (g.h / 2, g.w / 2);
        let plane = hb * wq;
        self.xpad.clear();
        self.xpad.resize(len.max(g.c * plane), 0.0);
        for c in 0..g.c {
            for r in 0..hb {
                let iy = (y0 + r) as isize - pad as isize;
                if iy < 0 || iy >= g.h as isize {
                    continue;
                }
                let src = &xn[(c * hs + iy as usize / 2) * ws..][..ws];
                super::elementwise::double_into(
                    &mut self.xpad[c * plane + r * wq + pad..][..2 * ws],
                    src,
                );
            }
        }
    }

    /// Fills `xpad` (at least `len` values) with the zero-padded rows of sample xn that the
    /// band from output row y0 reads: hb rows of wq values per channel and phase (see
    /// [`Band`]), channel planes hb · wq apart and phases C of them; then, for a fused skip
    /// input (stride 1), its g.skip channels' planes, padded alike.
    #[allow(clippy::too_many_arguments)]
    fn pad(
        &mut self,
        g: &ConvGeom,
        xn: &[f32],
        skip: &[f32],
        y0: usize,
        hb: usize,
        wq: usize,
        len: usize,
    ) {
        let st = g.stride;
        if g.up {
            return self.pad_upsampled(g, xn, y0, hb, wq, len);
        }
        // The st² phases of the C channels, then (stride 1) the skip input's channels.
        let main = st * st * g.c * hb * wq;
        let all = main + g.skip * hb * wq;
        let gs = ConvGeom {
            c: g.skip,
            skip: 0,
            ..*g
        };
        #[cfg(target_arch = "x86_64")]
        if st <= 2 && std::arch::is_x86_feature_detected!("avx512f") {
            // Every value of the planes written once: no zero-fill of the whole buffer.
            let n = len.max(all);
            self.xpad.truncate(n);
            self.xpad.resize(n, 0.0);
            self.xpad[all..].fill(0.0);
            let (xp, sp) = self.xpad[..all].split_at_mut(main);
            // SAFETY: AVX-512F (checked); xp holds the st² phases of C · hb · wq values, sp
            // the skip input's g.skip · hb · wq.
            unsafe {
                pad_avx512(g, xn, y0, hb, wq, xp);
                if g.skip > 0 {
                    pad_avx512(&gs, skip, y0, hb, wq, sp);
                }
            }
            return;
        }
        self.xpad.clear();
        self.xpad.resize(len.max(all), 0.0);
        let (xp, sp) = self.xpad[..all].split_at_mut(main);
        copy_padded(xp, g, xn, y0, hb, wq);
        if g.skip > 0 {
            copy_padded(sp, &gs, skip, y0, hb, wq);
        }
    }
}

/// The portable padding: writes the inside of [`Scratch::pad`]'s planes of sample xn into
/// xpad, which holds zeros.
fn copy_padded(xpad: &mut [f32], g: &ConvGeom, xn: &[f32], y0: usize, hb: usize, wq: usize) {
    let (pad, st) = (g.pad, g.stride);
    let plane = hb * wq;
    let phase = g.c * plane;
    if st == 2 {
        // Each input row once, its values dealt to the two column phases in pairs: a loop
        // over fixed-size chunks that vectorizes into shuffles, where one strided pass per
        // phase spent as long on the copy as the tiles spent on the sum.
        for c in 0..g.c {
            for r in 0..hb {
                for py in 0..2 {
                    let iy = ((y0 + r) * 2 + py) as isize - pad as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let src = &xn[(c * g.h + iy as usize) * g.w..][..g.w];
                    let row = |px: usize| (py * 2 + px) * phase + c * plane + r * wq;
                    let (r0, r1) = (row(0), row(1));
                    // Padded column u = ix + pad goes to phase u % 2, column u / 2 (< wq).
                    let (xp, rest) = xpad.split_at_mut(r1.max(r0));
                    let (d0, d1) = if r0 < r1 {
                        (&mut xp[r0..][..wq], &mut rest[..wq])
                    } else {
                        (&mut rest[..wq], &mut xp[r1..][..wq])
                    };
                    // An odd pad puts input column 0 first in phase 1.
                    let (src, j0) = if pad % 2 == 1 {
                        d1[pad / 2] = src[0];
                        (&src[1..], pad / 2 + 1)
                    } else {
                        (src, pad / 2)
                    };
                    let pairs = src.chunks_exact(2);
                    if let [v] = pairs.remainder() {
                        d0[j0 + src.len() / 2] = *v;
                    }
                    for ((a, b), p) in d0[j0..].iter_mut().zip(&mut d1[j0..]).zip(pairs) {
                        *a = p[0];
                        *b = p[1];
                    }
                }
            }
        }
    } else {
        for py in 0..st {
            for px in 0..st {
                let ph = py * st + px;
                // Phase columns j whose input column st·j + px − pad lies in [0, w).
                let j0 = pad.saturating_sub(px).div_ceil(st);
                let j1 = (g.w + pad).saturating_sub(px).div_ceil(st).min(wq);
                if j0 >= j1 {
                    continue;
                }
                let ix0 = j0 * st + px - pad;
                for c in 0..g.c {
                    for r in 0..hb {
                        let iy = ((y0 + r) * st + py) as isize - pad as isize;
                        if iy < 0 || iy >= g.h as isize {
                            continue;
                        }
                        let src = &xn[(c * g.h + iy as usize) * g.w + ix0..];
                        let dst = &mut xpad[ph * phase + c * plane + r * wq..][j0..j1];
                        if st == 1 {
                            dst.copy_from_slice(&src[..dst.len()]);
                        } else {
                            for (d, v) in dst.iter_mut().zip(src.iter().step_by(st)) {
                                *d = *v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// [`Scratch::pad`] for strides 1 and 2 on AVX-512: the padded rows (hb per channel and
/// phase, wq values each, from output row y0), every value written once, 16 at a time by
/// masked loads and stores; for stride 2 each run of 32 input columns is dealt to the two
/// column phases by two permutes. The portable path's zero-fill, per-row `memcpy` calls and
/// scalar dealing took a tenth of a 7×7 layer and two fifths of a stride-2 one.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pad_avx512(g: &ConvGeom, xn: &[f32], y0: usize, hb: usize, wq: usize, xpad: &mut [f32]) {
    use std::arch::x86_64::*;
    let (pad, st, w) = (g.pad, g.stride, g.w);
    let phase = g.c * hb * wq;
    assert!(
        (st == 1 || st == 2)
            && xpad.len() >= st * st * phase
            && xn.len() >= g.in_len()
            && st * wq >= w + pad,
        "direct conv: padding geometry"
    );
    let (even, odd) = (
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30),
        _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31),
    );
    // Per chunk of 16 phase columns from j = 16i: the store mask, the first input column it
    // reads (st·j − pad) and the masks of the (one or two) 16-column loads, the same for every
    // row: computed once here, not per row (in training, per-row masks made this a tenth of
    // the step).
    let chunks = wq.div_ceil(16);
    let mut plan = [(0 as __mmask16, 0isize, 0 as __mmask16, 0 as __mmask16); 16];
    assert!(
        chunks <= plan.len(),
        "direct conv: padded rows wider than 256"
    );
    for (i, p) in plan.iter_mut().enumerate().take(chunks) {
        let j = 16 * i;
        let first = (st * j) as isize - pad as isize;
        *p = (
            lanes::mask16(0, (wq - j).min(16)),
            first,
            load_mask(first, w),
            load_mask(first + 16, w),
        );
    }
    let xp = xpad.as_mut_ptr();
    for c in 0..g.c {
        for r in 0..hb {
            for py in 0..st {
                // Phase row r of (py, px) is padded row st·(y0 + r) + py, input row that − pad.
                let iy = (st * (y0 + r) + py).checked_sub(pad).filter(|&iy| iy < g.h);
                let row0 = ((py * st) * g.c + c) * hb * wq + r * wq;
                let row1 = row0 + g.c * hb * wq;
                for (i, &(store, first, m0, m1)) in plan.iter().enumerate().take(chunks) {
                    let (v0, v1) = match iy {
                        None => (_mm512_setzero_ps(), _mm512_setzero_ps()),
                        Some(iy) => {
                            let src = xn[(c * g.h + iy) * w..][..w].as_ptr();
                            // SAFETY: the lanes in each mask are input columns in [0, w) of
                            // this row (`load_mask`).
                            let a =
                                unsafe { _mm512_maskz_loadu_ps(m0, src.wrapping_offset(first)) };
                            if st == 1 {
                                (a, a)
                            } else {
                                // SAFETY: as above.
                                let b = unsafe {
                                    _mm512_maskz_loadu_ps(m1, src.wrapping_offset(first + 16))
                                };
                                (
                                    _mm512_permutex2var_ps(a, even, b),
                                    _mm512_permutex2var_ps(a, odd, b),
                                )
                            }
                        }
                    };
                    // SAFETY: the lanes in `store` are columns 16i .. min(16i + 16, wq) of phase
                    // rows inside xpad (asserted above; row1 only for stride 2).
                    unsafe {
                        _mm512_mask_storeu_ps(xp.add(row0 + 16 * i), store, v0);
                        if st == 2 {
                            _mm512_mask_storeu_ps(xp.add(row1 + 16 * i), store, v1);
                        }
                    }
                }
            }
        }
    }
}

/// The lanes l of a 16-column load from input column `first` (which may be negative) whose
/// column first + l lies in [0, w).
#[cfg(target_arch = "x86_64")]
fn load_mask(first: isize, w: usize) -> std::arch::x86_64::__mmask16 {
    lanes::mask16(
        (-first).clamp(0, 16) as usize,
        (w as isize - first).clamp(0, 16) as usize,
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn avx512(b: &Band, packed: &[f32], y: Out) {
    run::<4, 48, true, 0>(b, packed, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn avx512_narrow(b: &Band, packed: &[f32], y: Out) {
    run::<4, 32, true, 0>(b, packed, y)
}

/// Output channels up to which AVX-512 runs [`tile_few`] instead of the 4 × 48 tile.
#[cfg(target_arch = "x86_64")]
const FEW_MAX: usize = 3;

/// Convolutions with at most [`FEW_MAX`] output channels (the U-Net's last layer, 16 → 1):
/// M channels × 128 / 64 / 48 positions in 8 / 8 / 9 accumulators ([`tile_few`]), where the
/// 4 × 48 tile computed 4 − M rows of zeros (the 16 → 1 layer ran at 15–17 GFLOP/s).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn avx512_few(b: &Band, packed: &[f32], y: Out) {
    match b.o {
        1 => run::<4, 128, true, 1>(b, packed, y),
        2 => run::<4, 64, true, 2>(b, packed, y),
        _ => run::<4, 48, true, 3>(b, packed, y),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn avx2(b: &Band, packed: &[f32], y: Out) {
    run::<6, 16, true, 0>(b, packed, y)
}

/// Every tile of the band: for each block of NR positions, each block of MR channels. With
/// `FEW` above 0 (AVX-512 only, at most [`FEW_MAX`] channels) each tile is [`tile_few`]'s, on
/// the first `FEW` rows of the one block.
#[inline(always)]
fn run<const MR: usize, const NR: usize, const FMA: bool, const FEW: usize>(
    b: &Band,
    packed: &[f32],
    y: Out,
) {
    // Every store below lands in channel < b.o at a position < (rows of the band) · Wo.
    let rows = (b.q_end - 1) / b.wq + 1;
    assert!(
        b.o <= y.o && rows * b.wo <= y.span,
        "direct conv: band writes past its output"
    );
    // The contract of `tile`, checked once for every tile of the band: every real position's
    // reads are inside xpad, and tiles starting before `in_place` read whole runs of it.
    let max_off = b.max_off;
    assert!(
        max_off + b.q_end <= b.xpad.len()
            && b.offsets.len() == b.rows
            && b.skip.is_none()
            && packed.len() == b.o.div_ceil(MR) * b.rows * MR,
        "direct conv: band reads past its padded input"
    );
    let in_place = b.xpad.len() - max_off;
    // A last tile that would read past xpad (the in-place 1×1 band) reads a copy of its runs,
    // zero-filled past the end, at offsets r · NR.
    let (mut tail, mut tail_offsets) = (Vec::new(), Vec::new());
    let mut q0 = 0;
    while q0 < b.q_end {
        let (x, offsets, from) = if q0 + NR <= in_place {
            (b.xpad, b.offsets, q0)
        } else {
            tail.clear();
            tail.resize(b.rows * NR, 0.0);
            for (dst, &off) in tail.chunks_exact_mut(NR).zip(b.offsets) {
                let src = &b.xpad[off + q0..(off + q0 + NR).min(b.xpad.len())];
                dst[..src.len()].copy_from_slice(src);
            }
            tail_offsets.clear();
            tail_offsets.extend((0..b.rows).map(|r| r * NR));
            (&tail[..], &tail_offsets[..], 0)
        };
        for (blk, wblk) in packed.chunks_exact(b.rows * MR).enumerate() {
            // SAFETY: wblk holds rows · MR weights, and every read ends by x's end: by
            // `in_place` for xpad, by construction for the copy; `tile_few` runs only where
            // the caller has AVX-512F (`avx512_few`).
            let acc = unsafe {
                #[cfg(target_arch = "x86_64")]
                if FEW > 0 {
                    tile_few::<MR, NR, FEW>(wblk, x, offsets, from)
                } else {
                    tile::<MR, NR, FMA>(wblk, x, offsets, from)
                }
                #[cfg(not(target_arch = "x86_64"))]
                tile::<MR, NR, FMA>(wblk, x, offsets, from)
            };
            // Store each run of real outputs (ox < Wo) of the tile, plus the epilogue, in y.
            let mut q = q0;
            let q1 = (q0 + NR).min(b.q_end);
            while q < q1 {
                let (r, ox) = (q / b.wq, q % b.wq);
                if ox >= b.wo {
                    q += b.wq - ox;
                    continue;
                }
                // Where the grid has no padding columns (1×1), a run goes on across rows.
                let len = if b.wq == b.wo {
                    q1 - q
                } else {
                    (b.wo - ox).min(q1 - q)
                };
                let at = r * b.wo + ox;
                for (i, a) in acc.iter().enumerate().take(b.o - blk * MR) {
                    let (oc, a) = (blk * MR + i, &a[q - q0..][..len]);
                    let off = oc * y.stride + at;
                    // SAFETY: channel oc < b.o ≤ y.o and at + len ≤ rows · Wo ≤ span (asserted
                    // above), so inside the region `y` (and its residual) describes.
                    let dst = unsafe { std::slice::from_raw_parts_mut(y.ptr.add(off), len) };
                    let bias = y.bias[oc];
                    match y.res {
                        Some(r) => {
                            // SAFETY: as above.
                            let r = unsafe { std::slice::from_raw_parts(r.add(off), len) };
                            store::<NR>(dst, a, |j| bias + r[j]);
                        }
                        None => store::<NR>(dst, a, |_| bias),
                    }
                }
                q += len;
            }
        }
        q0 += NR;
    }
}

/// dst[j] = a[j] + e(j): fixed-length whole vectors when the run is a whole tile.
#[inline(always)]
fn store<const NR: usize>(dst: &mut [f32], a: &[f32], e: impl Fn(usize) -> f32) {
    if let (Ok(dst), Ok(a)) = (
        <&mut [f32; NR]>::try_from(&mut *dst),
        <&[f32; NR]>::try_from(a),
    ) {
        for (j, (d, v)) in dst.iter_mut().zip(a).enumerate() {
            *d = v + e(j);
        }
    } else {
        for (j, (d, v)) in dst.iter_mut().zip(a).enumerate() {
            *d = v + e(j);
        }
    }
}

/// The microkernel: acc[i][j] = Σ_r wblk[r][i] · xpad[offsets[r] + q0 + j], MR × NR values in
/// registers across the whole reduction. The loop has no bounds checks (a panic path inside it
/// makes the compiler store the accumulators to memory every step, halving the speed); [`run`]
/// checks the whole band's reads once instead.
///
/// # Safety
/// `wblk.len() == offsets.len() · MR` and `off + q0 + NR ≤ xpad.len()` for every `off` in
/// `offsets`.
#[inline(always)]
unsafe fn tile<const MR: usize, const NR: usize, const FMA: bool>(
    wblk: &[f32],
    xpad: &[f32],
    offsets: &[usize],
    q0: usize,
) -> [[f32; NR]; MR] {
    let mut acc = [[0.0f32; NR]; MR];
    let (w, x0) = (wblk.as_ptr(), xpad.as_ptr().wrapping_add(q0));
    for (r, &off) in offsets.iter().enumerate() {
        // SAFETY: in bounds by the function's contract.
        let (a, x) = unsafe {
            (
                &*(w.add(r * MR) as *const [f32; MR]),
                &*(x0.add(off) as *const [f32; NR]),
            )
        };
        for i in 0..MR {
            for j in 0..NR {
                acc[i][j] = if FMA {
                    a[i].mul_add(x[j], acc[i][j])
                } else {
                    acc[i][j] + a[i] * x[j]
                };
            }
        }
    }
    acc
}

/// [`tile`] for the first M ≤ 3 of an MR block's channels, in explicit AVX-512 (a portable
/// 1 × 128 array tile was not kept in registers: 3× slower): M × NR/16 accumulators, each
/// step one unaligned load per 16 positions shared by the M broadcast weights. Rows M.. of
/// the result are zero.
///
/// # Safety
/// AVX-512F; [`tile`]'s contract.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
// i and j pick an accumulator of acc[i][j] and the matching lanes of out and x.
#[allow(clippy::needless_range_loop)]
unsafe fn tile_few<const MR: usize, const NR: usize, const M: usize>(
    wblk: &[f32],
    xpad: &[f32],
    offsets: &[usize],
    q0: usize,
) -> [[f32; NR]; MR] {
    use std::arch::x86_64::*;
    // At most 9 accumulators of the 32 registers: NR / 16 vectors for each of M channels.
    const MAX_J: usize = 8;
    let j_n = NR / 16;
    assert!(M <= MR && M <= FEW_MAX && NR.is_multiple_of(16) && j_n <= MAX_J && M * j_n <= 9);
    let mut out = [[0.0f32; NR]; MR];
    // SAFETY (every intrinsic and read): AVX-512F and in bounds by the function's contract.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); MAX_J]; FEW_MAX];
        let (w, x0) = (wblk.as_ptr(), xpad.as_ptr().wrapping_add(q0));
        for (r, &off) in offsets.iter().enumerate() {
            let wv: [__m512; FEW_MAX] = std::array::from_fn(|i| {
                _mm512_set1_ps(if i < M { *w.add(r * MR + i) } else { 0.0 })
            });
            let x = x0.add(off);
            for j in 0..j_n {
                let xv = _mm512_loadu_ps(x.add(16 * j));
                for i in 0..M {
                    acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);
                }
            }
        }
        for i in 0..M {
            for j in 0..j_n {
                _mm512_storeu_ps(out[i].as_mut_ptr().add(16 * j), acc[i][j]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Conv2d;
    use crate::cpu::conv2d_reference;

    /// Every tile shape this CPU runs against the reference loops: odd sizes, channel counts
    /// that leave partial MR blocks, 1×1, 2×2, 3×3 and 5×5 kernels with and without padding
    /// (unpadded stride-1 kernels read the image in place), strides 1, 2 and 3, bands, whole
    /// samples split by output channels and by rows, the epilogue with and without residual.
    #[test]
    fn every_isa_matches_the_reference() {
        let mut rnd = crate::cpu::test_values(7);
        for isa in Isa::available() {
            for (c, o, h, w, k, st, pad) in [
                (3, 5, 7, 9, 3, 1, 1),
                (16, 16, 28, 28, 3, 1, 1),
                (32, 33, 7, 7, 3, 1, 1),
                (2, 3, 6, 5, 5, 1, 2),
                (4, 9, 8, 6, 3, 1, 0),
                (1, 1, 1, 1, 3, 1, 1),
                (5, 2, 3, 40, 2, 1, 1),
                (6, 7, 5, 4, 1, 1, 0),
                // Read in place: whole tiles, then a last one past the image's end.
                (5, 6, 9, 11, 1, 1, 0),
                (3, 4, 10, 12, 3, 1, 0),
                // Strided: the downsamplers (even and odd sizes), no padding, stride 3.
                (16, 16, 28, 28, 3, 2, 1),
                // Channels in lanes: widths 7, 14, 21 and 28, blocks of 32 and 16 channels
                // (whole and partial), 1×1 in place, stride 2, the residual.
                (32, 32, 14, 14, 3, 1, 1),
                (24, 48, 7, 7, 3, 1, 1),
                (8, 40, 14, 14, 1, 1, 0),
                (16, 96, 7, 7, 1, 1, 0),
                (16, 20, 28, 28, 3, 2, 1),
                (3, 17, 9, 21, 3, 1, 1),
                (5, 16, 28, 28, 3, 1, 1),
                (7, 33, 15, 14, 3, 1, 0),
                (5, 6, 7, 9, 3, 2, 1),
                (3, 4, 8, 7, 3, 2, 0),
                (2, 3, 10, 11, 3, 3, 1),
                (3, 5, 6, 6, 1, 2, 0),
                // At most three outputs (AVX-512's `tile_few`): the U-Net's last layer with
                // its residual, two and three channels, 1×1 in place past the image's end.
                (16, 1, 28, 28, 3, 1, 1),
                (4, 2, 9, 30, 3, 1, 1),
                (5, 3, 12, 12, 3, 1, 1),
                (6, 1, 5, 40, 1, 1, 0),
            ] {
                let xs = [1, c, h, w];
                let ws = [o, c, k, k];
                let x: Vec<f32> = (0..xs.iter().product()).map(|_| rnd()).collect();
                let wt: Vec<f32> = (0..ws.iter().product()).map(|_| rnd()).collect();
                let bias: Vec<f32> = (0..o).map(|_| rnd()).collect();
                let geom = Conv2d::new(st, pad);
                let g = ConvGeom::new(&xs, &ws, st, pad);
                let res: Vec<f32> = (0..o * g.positions()).map(|_| rnd()).collect();
                // The fused epilogue: the bias, plus the residual in every second case.
                let residual = (st + k + c) % 2 == 0;
                let (want, _) =
                    conv2d_reference(&x, &xs, &wt, &ws, &bias, geom, residual.then_some(&res[..]));
                let lanes = Direct::with_isa(isa, &wt, o, g.rows());
                let positions = lanes.clone().positions_in_lanes();
                let kinds = if lanes.channels_in_lanes(g.wo) {
                    vec![lanes, positions]
                } else {
                    vec![positions]
                };
                for d in kinds {
                    let tiles = if d.channels_in_lanes(g.wo) {
                        "channels"
                    } else {
                        "positions"
                    };
                    let mut s = Scratch::default();
                    // The whole image, then bands of two rows.
                    for band in [g.ho, 2] {
                        let mut y0 = 0;
                        while y0 < g.ho {
                            let y1 = (y0 + band).min(g.ho);
                            let pb = (y1 - y0) * g.wo;
                            let band_res: Vec<f32> = res
                                .chunks(g.positions())
                                .flat_map(|r| &r[y0 * g.wo..y1 * g.wo])
                                .copied()
                                .collect();
                            let mut y = vec![f32::NAN; o * pb];
                            let epi = Epilogue {
                                bias: &bias,
                                residual: residual.then_some(&band_res[..]),
                            };
                            d.band(&g, &x, &[], y0, y1, &mut y, epi, &mut s);
                            for oc in 0..o {
                                let got = &y[oc * pb..][..pb];
                                let exp = &want[oc * g.positions() + y0 * g.wo..][..pb];
                                for (a, e) in got.iter().zip(exp) {
                                    assert!(
                                    (a - e).abs() < 1e-4 * (1.0 + e.abs()),
                                    "{isa:?} {tiles} c={c} o={o} {h}×{w} k={k} s={st} p={pad} band {y0}..{y1}: {a} vs {e}"
                                );
                                }
                            }
                            y0 = y1;
                        }
                    }
                    // The whole image with the output channels split over tasks, or bands of rows,
                    // each writing its own outputs into a buffer of stale values.
                    for (parts, split) in [1, 2, 3, 5]
                        .into_iter()
                        .flat_map(|p| [(p, Split::Channels), (p, Split::Rows)])
                    {
                        let mut y = vec![f32::NAN; o * g.positions()];
                        let epi = Epilogue {
                            bias: &bias,
                            residual: residual.then_some(&res[..]),
                        };
                        d.sample_split(&g, &x, &[], &mut y, parts, split, epi, &mut s);
                        for (i, (a, e)) in y.iter().zip(&want).enumerate() {
                            assert!(
                            (a - e).abs() < 1e-4 * (1.0 + e.abs()),
                            "{isa:?} {tiles} c={c} o={o} {h}×{w} k={k} s={st} p={pad} {parts} parts by {split:?}, value {i}: {a} vs {e}"
                        );
                        }
                    }
                }
            }
        }
    }

    /// A fused skip input (its 1×1 weights after each output channel's rows, its planes after
    /// the padded image's) on every instruction set and tile family, in bands and in whole
    /// samples split both ways, against the two reference convolutions.
    #[test]
    fn a_fused_skip_input_on_every_isa() {
        let mut rnd = crate::cpu::test_values(13);
        for isa in Isa::available() {
            for (c, o, h, w, k, cs) in [
                (16, 16, 28, 28, 3, 48),
                (24, 32, 7, 7, 3, 40),
                (5, 7, 9, 11, 3, 3),
                (4, 2, 6, 5, 3, 6),
                (6, 20, 6, 7, 1, 5),
            ] {
                let (xs, ws, ss) = ([1, c, h, w], [o, c, k, k], [1, cs, h, w]);
                let mut v = |len: usize| -> Vec<f32> { (0..len).map(|_| rnd()).collect() };
                let (x, wt, b) = (v(c * h * w), v(o * c * k * k), v(o));
                let (skip, sw, sb) = (v(cs * h * w), v(o * cs), v(o));
                let geom = Conv2d::new(1, k / 2);
                let want = crate::cpu::conv::conv2d_skip_reference(
                    &x, &xs, &wt, &ws, &b, geom, &skip, &ss, &sw, &sb,
                );
                let g = ConvGeom::new(&xs, &ws, 1, k / 2).with_skip(cs);
                let joined = crate::cpu::conv::join_skip(&wt, &ws, &sw, cs);
                let bias = crate::cpu::conv::skip_bias(&b, &sb);
                let epi = Epilogue {
                    bias: &bias,
                    residual: None,
                };
                let lanes = Direct::with_isa(isa, &joined, o, g.rows());
                for d in [lanes.clone(), lanes.positions_in_lanes()] {
                    let mut s = Scratch::default();
                    let check = |y: &[f32], what: &str| {
                        for (i, (a, e)) in y.iter().zip(&want).enumerate() {
                            assert!(
                                (a - e).abs() < 1e-4 * (1.0 + e.abs()),
                                "{isa:?} {what} c={c} o={o} {h}×{w} k={k} skip {cs}, value {i}: {a} vs {e}"
                            );
                        }
                    };
                    // Bands of three rows, each into its own output, gathered.
                    let mut y = vec![f32::NAN; o * g.positions()];
                    for y0 in (0..g.ho).step_by(3) {
                        let y1 = (y0 + 3).min(g.ho);
                        let pb = (y1 - y0) * g.wo;
                        let mut yb = vec![f32::NAN; o * pb];
                        d.band(&g, &x, &skip, y0, y1, &mut yb, epi, &mut s);
                        for oc in 0..o {
                            y[oc * g.positions() + y0 * g.wo..][..pb]
                                .copy_from_slice(&yb[oc * pb..][..pb]);
                        }
                    }
                    check(&y, "bands");
                    for (parts, split) in [(1, Split::Rows), (2, Split::Rows), (2, Split::Channels)]
                    {
                        let mut y = vec![f32::NAN; o * g.positions()];
                        d.sample_split(&g, &x, &skip, &mut y, parts, split, epi, &mut s);
                        check(&y, &format!("{parts} parts by {split:?}"));
                    }
                }
            }
        }
    }

    /// The weight gradient against im2col + GEMM, its definition as a matrix product.
    #[test]
    fn weight_grad_matches_im2col() {
        let mut rnd = crate::cpu::test_values(11);
        for (c, o, h, w, k, st, pad) in [
            (3, 5, 7, 9, 3, 1, 1),
            (16, 24, 14, 14, 3, 1, 1),
            (2, 3, 6, 5, 3, 1, 0),
            (4, 6, 9, 8, 3, 2, 1),
            (5, 3, 6, 6, 1, 1, 0),
            // Output channels in lanes (3×3, stride 1, at least 16 outputs): whole and partial
            // blocks of 16 and 32, odd sizes, no padding (read in place).
            (5, 16, 28, 28, 3, 1, 1),
            (7, 33, 9, 11, 3, 1, 1),
            (3, 48, 7, 7, 3, 1, 1),
            (4, 20, 7, 6, 3, 1, 0),
        ] {
            let g = ConvGeom::new(&[1, c, h, w], &[o, c, k, k], st, pad);
            let x: Vec<f32> = (0..g.in_len()).map(|_| rnd()).collect();
            let dy: Vec<f32> = (0..o * g.positions()).map(|_| rnd()).collect();
            let mut col = vec![0.0f32; g.rows() * g.positions()];
            g.im2col(&x, &mut col);
            let start: Vec<f32> = (0..o * g.rows()).map(|_| rnd()).collect();
            let mut want = start.clone();
            crate::cpu::gemm::matmul(
                o,
                g.rows(),
                g.positions(),
                &mut want,
                true,
                &dy,
                false,
                &col,
                true,
                crate::cpu::gemm::Threads::One,
            );
            let mut got = start;
            let mut s = Scratch::default();
            weight_grad(&g, &x, &dy, &mut got, &mut s);
            for (a, e) in got.iter().zip(&want) {
                assert!(
                    (a - e).abs() < 1e-4 * (1.0 + e.abs()),
                    "c={c} o={o}: {a} vs {e}"
                );
            }
        }
    }
}
