//! The direct convolution's second tile family, for x86-64 with AVX-512: the output
//! channels in the vector lanes and the inputs broadcast (the transpose of
//! [`super::run`]'s tiles, which put positions in the lanes and broadcast weights).
//!
//! A tile is R segments of L consecutive outputs, each inside one output row, times V vectors
//! of N = 16 channels. Each step of the reduction loads V weight
//! vectors (rows of the weights packed by [`pack`]) and broadcasts R·L single inputs, which
//! never straddle a cache line (the other family's unaligned input vectors nearly always do);
//! segments inside rows compute no padding column. The tile shapes keep every accumulator in a
//! register: 28 zmm (14 positions × 32 channels, or 28 × 16). The price is the store: the accumulators
//! hold positions × channels while the output is [O, positions], so each group of N
//! positions × N channels is transposed in registers and written as one masked store per
//! channel (scalar stores cost 10–40% of the tile). The weight gradient of 3×3 stride-1 kernels
//! has an AVX-512 tile of the same kind ([`weight_grad_avx512`]).
//!
//! Used for output widths that are multiples of 7 (the U-Net's 28, 14 and 7) and at least
//! [`MIN_O`] output channels; every other layer keeps [`super::run`]'s tiles. Measured on one
//! core of this project's AVX-512 VM against those: 32 → 32 at 7×7 1.6×, at 14×14 1.5×,
//! 16 → 16 at 28×28 1.35×.

#![cfg(target_arch = "x86_64")]

use super::{Band, Out};
use crate::cpu::im2col::ConvGeom;
use crate::cpu::simd::Isa;
use std::arch::x86_64::*;

/// Fewest output channels for which the weights are packed for these tiles.
pub(super) const MIN_O: usize = 16;

/// Channels per vector on `isa`, if it has these tiles. AVX-512 only: an AVX2 instance (8
/// channels a vector, 14 ymm accumulators of 7 or 14 positions, the 8 × 8 transpose and
/// `vmaskmovps` stores) measured 0.93–1.33× the AVX2 positions-in-lanes tiles layer by layer
/// on one core here, slower at 28×28, and was dropped (docs/BENCHMARKS.md).
pub(super) fn width(isa: Isa) -> Option<usize> {
    (isa == Isa::Avx512).then_some(16)
}

/// w [O, rows] in blocks of n output channels, each [rows][n], channels past O zero.
pub(super) fn pack(w: &[f32], o: usize, rows: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; o.div_ceil(n) * n * rows];
    for (oc, src) in w.chunks_exact(rows).take(o).enumerate() {
        let block = &mut out[(oc / n) * n * rows..][..n * rows];
        for (d, &v) in block.iter_mut().skip(oc % n).step_by(n).zip(src) {
            *d = v;
        }
    }
    out
}

/// One vector width's operations, the seam for another width (the AVX2 instance was timed and
/// dropped, see [`width`]). The methods are plain inline functions around the intrinsics; they
/// are only called from the `#[target_feature]` entry point below, into which they inline, so
/// they compile with that width's instructions.
trait Lanes {
    type V: Copy;
    /// Channels (f32 lanes) per vector.
    const N: usize;
    unsafe fn zero() -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    /// a · b + c.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    /// Lanes [lo, hi) of the vector whose lane 0 is at p (zeros elsewhere); only those lanes'
    /// addresses are read.
    unsafe fn load_lanes(p: *const f32, lo: usize, hi: usize) -> Self::V;
    /// Stores lanes [lo, hi) of v at p + lo .. p + hi; only those addresses are written.
    unsafe fn store_lanes(p: *mut f32, lo: usize, hi: usize, v: Self::V);
    /// The N × N transpose: out[c] lane k = r[k] lane c (`M` must be N).
    unsafe fn transpose<const M: usize>(r: [Self::V; M]) -> [Self::V; M];
}

#[derive(Clone, Copy)]
struct Zmm;

impl Lanes for Zmm {
    type V = __m512;
    const N: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m512 {
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn load_lanes(p: *const f32, lo: usize, hi: usize) -> __m512 {
        unsafe { _mm512_maskz_loadu_ps(mask16(lo, hi), p) }
    }
    #[inline(always)]
    unsafe fn store_lanes(p: *mut f32, lo: usize, hi: usize, v: __m512) {
        unsafe { _mm512_mask_storeu_ps(p, mask16(lo, hi), v) }
    }
    #[inline(always)]
    unsafe fn transpose<const M: usize>(r: [__m512; M]) -> [__m512; M] {
        assert!(M == 16);
        // SAFETY: M = 16 (asserted), so both arrays are [__m512; 16].
        unsafe {
            let r: [__m512; 16] = std::mem::transmute_copy(&r);
            std::mem::transmute_copy(&transpose16(r))
        }
    }
}

/// The AVX-512 mask of lanes [lo, hi) (none when hi ≤ lo; hi ≤ 16).
#[inline(always)]
pub(super) fn mask16(lo: usize, hi: usize) -> __mmask16 {
    if hi <= lo {
        0
    } else {
        (((1u32 << (hi - lo)) - 1) << lo) as __mmask16
    }
}

/// Every tile of the band on AVX-512: blocks of 32 channels while more than 16 remain (14
/// positions per tile), then one of 16 (28 positions).
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn tiles_avx512(b: &Band, lanes: &[f32], y: Out) {
    let rows = check(b, y);
    let (mut c0, mut at) = (0, 0);
    while c0 < b.o {
        let wide = b.o - c0 > 16;
        let ch = if wide { 32 } else { 16 };
        let w = weights(lanes, at, b.rows * ch);
        // SAFETY (each call): AVX-512F by this function's contract; the reads and writes are
        // inside xpad, w and y (`check`).
        unsafe {
            match (wide, b.wo % 28, b.wo % 14) {
                (true, _, 0) => block::<Zmm, 16, 1, 14, 2>(b, w, y, c0, rows),
                (true, _, _) => block::<Zmm, 16, 2, 7, 2>(b, w, y, c0, rows),
                (false, 0, _) => block::<Zmm, 16, 1, 28, 1>(b, w, y, c0, rows),
                (false, _, 0) => block::<Zmm, 16, 2, 14, 1>(b, w, y, c0, rows),
                (false, _, _) => block::<Zmm, 16, 4, 7, 1>(b, w, y, c0, rows),
            }
        }
        c0 += ch;
        at += b.rows * ch;
    }
}

/// The contract of [`block`] for the whole band, checked once; returns the band's rows.
fn check(b: &Band, y: Out) -> usize {
    let rows = (b.q_end - 1) / b.wq + 1;
    assert!(
        b.o <= y.o && rows * b.wo <= y.span && b.wo.is_multiple_of(7),
        "direct conv: band writes past its output"
    );
    // Every segment reads [start + off, + L) with start + L ≤ (rows − 1)·wq + wo = q_end.
    let max_off = b.max_off;
    let skip_c = b.skip.map_or(0, |s| s.c);
    assert!(
        max_off + b.q_end <= b.xpad.len() && b.offsets.len() + skip_c == b.rows,
        "direct conv: band reads past its padded input"
    );
    // A skip input read in place: segment starts (r0 + i)·Wo + ox < rows·Wo in each channel.
    if let Some(s) = b.skip {
        assert!(
            s.c == 0 || (s.c - 1) * s.plane + rows * b.wo <= s.x.len(),
            "direct conv: band reads past its skip input"
        );
    }
    rows
}

/// The `len` packed weights from `at`.
fn weights(lanes: &[f32], at: usize, len: usize) -> &[f32] {
    assert!(
        at + len <= lanes.len(),
        "direct conv: lanes weights smaller than the band's channels"
    );
    &lanes[at..at + len]
}

/// One block of N·V channels from channel c0, every tile of R × L outputs of the band.
///
/// # Safety
/// The vector width's instructions; `L` divides Wo; w holds rows × N·V weights; every read of
/// the band's segments is inside xpad and every store inside y ([`check`]).
#[inline(always)]
// v picks a vector of each position's accumulators (acc[p / L][p % L][v]), not one of acc.
#[allow(clippy::needless_range_loop)]
unsafe fn block<X: Lanes, const N: usize, const R: usize, const L: usize, const V: usize>(
    b: &Band,
    w: &[f32],
    y: Out,
    c0: usize,
    rows: usize,
) {
    assert!(N == X::N);
    let channels = (b.o - c0).min(N * V);
    for r0 in (0..rows).step_by(R) {
        for ox in (0..b.wo).step_by(L) {
            // Segments past the band's last row repeat it (valid reads) and are not stored.
            let starts: [usize; R] = std::array::from_fn(|i| (r0 + i).min(rows - 1) * b.wq + ox);
            // SAFETY: by the function's contract (weight rows: the offsets', then the skip's).
            let acc = unsafe {
                let zero = [[[X::zero(); V]; L]; R];
                let offsets = b.offsets.iter().copied();
                let acc =
                    tile::<X, N, R, L, V>(zero, w, b.rows, 0, b.xpad.as_ptr(), offsets, starts);
                match b.skip {
                    None => acc,
                    Some(s) => {
                        // The skip input's rows are Wo apart and never padded.
                        let starts = std::array::from_fn(|i| (r0 + i).min(rows - 1) * b.wo + ox);
                        let offsets = (0..s.c).map(|j| j * s.plane);
                        let first = b.offsets.len();
                        tile::<X, N, R, L, V>(acc, w, b.rows, first, s.x.as_ptr(), offsets, starts)
                    }
                }
            };
            // Tile position p = i·L + j is segment i's output j. Each N positions × N channels
            // are transposed, so that a channel's outputs of a segment are one masked store.
            for v in 0..V {
                for g in 0..(R * L).div_ceil(N) {
                    // SAFETY: the width's instructions (contract).
                    let cols = unsafe {
                        X::transpose::<N>(std::array::from_fn(|k| {
                            let p = N * g + k;
                            if p < R * L {
                                acc[p / L][p % L][v]
                            } else {
                                X::zero()
                            }
                        }))
                    };
                    for (l, col) in cols.iter().enumerate().take(channels.saturating_sub(N * v)) {
                        let oc = c0 + N * v + l;
                        for i in 0..R.min(rows - r0) {
                            // Group lanes [lo, hi) are segment i's outputs j = N·g + lane − i·L,
                            // at (r0 + i)·Wo + ox + j.
                            let (lo, hi) = ((i * L).max(N * g), ((i + 1) * L).min(N * g + N));
                            if lo >= hi {
                                continue;
                            }
                            let first = oc * y.stride + (r0 + i) * b.wo + ox + lo - i * L;
                            let (lo, hi) = (lo - N * g, hi - N * g);
                            // Lane 0's address; only lanes [lo, hi) are read or written, and
                            // those are outputs first .. first + (hi − lo) of this channel.
                            let lane0 = |p: *const f32| p.wrapping_add(first).wrapping_sub(lo);
                            // SAFETY (both): oc < b.o ≤ y.o, and every lane in [lo, hi) is an
                            // output in [(r0 + i)·Wo + ox, + L) ⊂ [0, rows · Wo) ⊂ [0, span),
                            // where the residual has y's layout ([`check`]).
                            unsafe {
                                let mut e = X::splat(y.bias[oc]);
                                if let Some(r) = y.res {
                                    e = X::add(e, X::load_lanes(lane0(r), lo, hi));
                                }
                                X::store_lanes(lane0(y.ptr).cast_mut(), lo, hi, X::add(*col, e));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The microkernel: acc[i][j][v] (N channels each), from `acc`, + Σ_r w[v][first + r][..] ·
/// x[offsets[r] + starts[i] + j], over weight rows first .. first + offsets.len() of the
/// `rows` per block. No bounds checks inside the loop (see [`super::tile`]).
///
/// # Safety
/// The width's instructions; `w.len() ≥ rows · N·V` and first + offsets.len() ≤ rows;
/// `off + start + L` ≤ x's length for every offset and start.
#[inline(always)]
unsafe fn tile<X: Lanes, const N: usize, const R: usize, const L: usize, const V: usize>(
    mut acc: [[[X::V; V]; L]; R],
    w: &[f32],
    rows: usize,
    first: usize,
    x: *const f32,
    offsets: impl IntoIterator<Item = usize>,
    starts: [usize; R],
) -> [[[X::V; V]; L]; R] {
    // SAFETY (every intrinsic below): the width's instructions, reads in bounds by the
    // function's contract.
    unsafe {
        // Block v's weights for reduction step r are at v·N·rows + N·r.
        let (w, block) = (w.as_ptr(), N * rows);
        for (r, off) in offsets.into_iter().enumerate() {
            let wv: [X::V; V] =
                std::array::from_fn(|v| X::load(w.add(v * block + N * (first + r))));
            for (acc, &start) in acc.iter_mut().zip(&starts) {
                let x = x.wrapping_add(off + start);
                for (j, acc) in acc.iter_mut().enumerate() {
                    let xb = X::splat(*x.add(j));
                    for (a, wv) in acc.iter_mut().zip(&wv) {
                        *a = X::fma(xb, *wv, *a);
                    }
                }
            }
        }
        acc
    }
}

/// [`super::weight_grad`] for 3×3, stride-1 kernels on AVX-512, with the output channels in the vector
/// lanes (the forward's tiles turned around): per input channel c and block of 16·V
/// output channels, 9 · V zmm accumulators hold dW[o, c, ky, kx] for the nine taps, summed over
/// the positions q from dYᵀ [Q, O] (V aligned vectors per position) and the nine inputs the taps
/// meet there (broadcast from three padded rows). The GEMM per tap that the portable path runs
/// reached 60–120 GFLOP/s on the U-Net's layers here, packing dY again for every tap.
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn weight_grad_avx512(
    g: &ConvGeom,
    b: &Band,
    dyn_: &[f32],
    dw: &mut [f32],
    dyt: &mut Vec<f32>,
) {
    use std::arch::x86_64::*;
    let (p, o16) = (g.positions(), g.o.div_ceil(16) * 16);
    assert!(
        g.k == 3 && g.stride == 1 && b.wq >= g.wo + 2 && b.plane >= (g.ho + 1) * b.wq + g.wo + 2
    );
    assert!(
        b.xpad.len() >= (g.c - 1) * b.plane + (g.ho + 1) * b.wq + g.wo + 2,
        "direct weight gradient: padded input too short"
    );
    // dYᵀ [P][O16] through 16 × 16 transposes (channels past O zero).
    // Every value is written below (channels past O as zeros), so a buffer of the right
    // length is reused as it is: no memset per sample.
    if dyt.len() != p * o16 {
        dyt.clear();
        dyt.resize(p * o16, 0.0);
    }
    for ob in 0..o16 / 16 {
        for q0 in (0..p).step_by(16) {
            let n = (p - q0).min(16);
            let mask = mask16(0, n);
            let rows: [__m512; 16] = std::array::from_fn(|l| {
                let o = ob * 16 + l;
                if o < g.o {
                    // SAFETY: positions q0 .. q0 + n of channel o, inside dY.
                    unsafe { _mm512_maskz_loadu_ps(mask, dyn_[o * p + q0..].as_ptr()) }
                } else {
                    _mm512_setzero_ps()
                }
            });
            for (k, col) in transpose16(rows).iter().enumerate().take(n) {
                // SAFETY: row q0 + k < P of dYᵀ, 16 values from ob · 16 < O16.
                unsafe { _mm512_storeu_ps(dyt.as_mut_ptr().add((q0 + k) * o16 + ob * 16), *col) };
            }
        }
    }
    let rows = g.rows();
    for c in 0..g.c {
        let xc = &b.xpad[c * b.plane..];
        let mut o0 = 0;
        while o0 < g.o {
            // SAFETY (both): AVX-512F; reads inside xc (asserted above) and dyt; writes inside dw.
            if g.o - o0 > 16 {
                unsafe { weight_grad_tile::<2>(g, xc, b.wq, dyt, o16, o0, c, rows, dw) };
                o0 += 32;
            } else {
                unsafe { weight_grad_tile::<1>(g, xc, b.wq, dyt, o16, o0, c, rows, dw) };
                o0 += 16;
            }
        }
    }
}

/// One (input channel, block of 16·V output channels) tile of [`weight_grad_avx512`], added into
/// dw [O, C·9].
///
/// # Safety
/// AVX-512F; xc holds the channel's padded rows (ho + 2 of wq values, wq ≥ wo + 2); dyt is
/// dYᵀ [P][o16] with o0 + 16·V ≤ o16.
#[target_feature(enable = "avx512f")]
// v picks the same vector of each tap's accumulators (acc[t][v]), not one of acc.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn weight_grad_tile<const V: usize>(
    g: &ConvGeom,
    xc: &[f32],
    wq: usize,
    dyt: &[f32],
    o16: usize,
    o0: usize,
    c: usize,
    rows: usize,
    dw: &mut [f32],
) {
    use std::arch::x86_64::*;
    assert!(o0 + 16 * V <= o16 && dyt.len() >= g.positions() * o16);
    assert!(xc.len() >= (g.ho + 1) * wq + g.wo + 2 && dw.len() >= g.o * rows);
    let mut acc = [[_mm512_setzero_ps(); V]; 9];
    let (x, d) = (xc.as_ptr(), dyt.as_ptr());
    for oy in 0..g.ho {
        // SAFETY: rows oy .. oy + 2 of the padded channel, inside xc (asserted).
        let r: [*const f32; 3] = std::array::from_fn(|ky| unsafe { x.add((oy + ky) * wq) });
        for ox in 0..g.wo {
            // SAFETY: position oy·wo + ox < P of dYᵀ, channels o0 .. o0 + 16·V ≤ o16.
            let wv: [__m512; V] = std::array::from_fn(|v| unsafe {
                _mm512_loadu_ps(d.add((oy * g.wo + ox) * o16 + o0 + 16 * v))
            });
            for (t, acc) in acc.iter_mut().enumerate() {
                // SAFETY: column ox + kx ≤ wo + 1 < wq of a row inside xc.
                let xb = _mm512_set1_ps(unsafe { *r[t / 3].add(ox + t % 3) });
                for (a, w) in acc.iter_mut().zip(&wv) {
                    *a = _mm512_fmadd_ps(xb, *w, *a);
                }
            }
        }
    }
    // Lane l of tap t's vector v is dW[o0 + 16v + l, c, t]: transposed, each output channel's
    // nine taps are one masked add into its row of dw.
    for v in 0..V {
        let cols = transpose16(std::array::from_fn(|t| {
            if t < 9 {
                acc[t][v]
            } else {
                _mm512_setzero_ps()
            }
        }));
        for (l, col) in cols.iter().enumerate() {
            let o = o0 + 16 * v + l;
            if o >= g.o {
                break;
            }
            // SAFETY: dw[o·rows + 9c .. + 9] lies inside dw (o < O, 9c + 9 ≤ rows).
            unsafe {
                let at = dw.as_mut_ptr().add(o * rows + 9 * c);
                let old = _mm512_maskz_loadu_ps(0x1FF, at);
                _mm512_mask_storeu_ps(at, 0x1FF, _mm512_add_ps(old, *col));
            }
        }
    }
}

/// The 16 × 16 transpose: out[c] lane k = rows[k] lane c. Four rounds of 16 shuffles: pairs
/// of floats, pairs of pairs, then 128-bit chunks twice.
#[target_feature(enable = "avx512f")]
#[inline]
fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // t[2k] lane chunk q: (r2k[4q], r2k+1[4q], r2k[4q+1], r2k+1[4q+1]); t[2k+1] the next two.
    let t: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    // u[4m + c] chunk q: column 4q + c of rows 4m .. 4m + 3.
    let u: [__m512; 16] = std::array::from_fn(|i| {
        let (m, c) = (i / 4, i % 4);
        let (a, b) = (
            _mm512_castps_pd(t[4 * m + c / 2]),
            _mm512_castps_pd(t[4 * m + 2 + c / 2]),
        );
        _mm512_castpd_ps(if c % 2 == 0 {
            _mm512_unpacklo_pd(a, b)
        } else {
            _mm512_unpackhi_pd(a, b)
        })
    });
    // Column 4q + c = (u[c], u[4 + c], u[8 + c], u[12 + c]) chunk q each.
    let half = |a: __m512, b: __m512, high: bool| {
        if high {
            _mm512_shuffle_f32x4::<0xEE>(a, b)
        } else {
            _mm512_shuffle_f32x4::<0x44>(a, b)
        }
    };
    std::array::from_fn(|col| {
        let (q, c) = (col / 4, col % 4);
        let a = half(u[c], u[4 + c], q >= 2);
        let b = half(u[8 + c], u[12 + c], q >= 2);
        if q % 2 == 0 {
            _mm512_shuffle_f32x4::<0x88>(a, b)
        } else {
            _mm512_shuffle_f32x4::<0xDD>(a, b)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-register transpose, against its definition.
    #[test]
    fn transpose16_transposes() {
        if std::arch::is_x86_feature_detected!("avx512f") {
            let m: Vec<f32> = (0..256).map(|i| i as f32).collect();
            // SAFETY: AVX-512F (checked); every load reads 16 of m's 256 values.
            let rows: [__m512; 16] =
                std::array::from_fn(|k| unsafe { _mm512_loadu_ps(m[16 * k..].as_ptr()) });
            // SAFETY: as above.
            let cols = unsafe { transpose16(rows) };
            let mut out = [0.0f32; 256];
            for (c, col) in cols.iter().enumerate() {
                // SAFETY: AVX-512F; 16 values of out.
                unsafe { _mm512_storeu_ps(out[16 * c..].as_mut_ptr(), *col) };
            }
            for c in 0..16 {
                for k in 0..16 {
                    assert_eq!(
                        out[16 * c + k],
                        m[16 * k + c],
                        "16 × 16: column {c}, lane {k}"
                    );
                }
            }
        } else {
            eprintln!("no AVX-512F here: the 16 × 16 transpose not run");
        }
    }
}
