// 2-D convolution as an implicit GEMM: out[co, p] = Σ_k W[co, k] · im2col(x)[k, p] + bias[co]
// (+ residual), with k = (ci, ky, kx) and p = (n, oy, ox). The im2col matrix is never formed:
// each workgroup gathers its BK × BN slice straight from x into workgroup memory.
//
// Tiling: 256 threads compute a BM (channels) × BN (pixels) output tile, BM · BN = 4096, each
// thread a 4 × 4 register block held in four vec4 accumulators (channels 4ty.., pixels 4tx..),
// read from workgroup memory as two 16-byte loads per k: 16 FMAs per 2 loads. K advances BK at
// a time, tap by tap when BK divides c_in (`load_tap_major`), else channel by channel
// (`load_channel_major`). This file is the 64 × 64 tile; the host builds a 32 × 128 and a 16 × 256 variant by
// rewriting the two constants below (src/gpu/kernels.rs, `ConvTile`), so that the U-Net's
// 16- and 32-channel layers do not compute a 64-channel tile of which half or three quarters
// is thrown away. Serves 3×3 and 1×1 kernels, any stride and padding, and an input read
// upsampled ×2 by nearest neighbour (`up` = 1: the kernel sees a 2H × 2W grid and gathers
// (iy >> 1, ix >> 1), so the U-Net's up path stores no upsampled tensor and spends no upsample
// dispatch). Reference: src/cpu/conv.rs. Analysis and measurements: docs/GPU.md.

// Storage type: f32 here; the f16 build of this file (src/gpu/precision.rs) turns the alias
// below into f16 behind `enable f16;`. Loads widen to f32 and all arithmetic is f32.
alias S = f32;

struct Params {
    batch: u32, c_in: u32, h_in: u32, w_in: u32,
    c_out: u32, h_out: u32, w_out: u32, ksize: u32,
    stride: u32, pad: u32, has_residual: u32, tiles_n: u32,
    total_tiles: u32, up: u32, _p1: u32, _p2: u32,
}

@group(0) @binding(0) var<storage, read> x: array<S>;
@group(0) @binding(1) var<storage, read> w: array<S>;
@group(0) @binding(2) var<storage, read> bias: array<S>;
@group(0) @binding(3) var<storage, read> residual: array<S>;
@group(0) @binding(4) var<storage, read_write> y: array<S>;
@group(0) @binding(5) var<uniform> p: Params;

// The tile (the host's variants rewrite these two lines and nothing else).
const BM: u32 = 64u;
const BK: u32 = 16u;
const BN: u32 = 4096u / BM;
// Threads along pixels (BN / 4) and along channels (BM / 4): 256 in all.
const TX: u32 = BN / 4u;
// vec4s per k-row of each tile: BM / 4 (or BN / 4) hold the values and one pads, so the
// transposed weight stores of consecutive k land on different banks.
const ROW_A: u32 = BM / 4u + 1u;
const ROW_B: u32 = BN / 4u + 1u;
// Tile values each thread loads per k-step: BM · BK weights (fewer than 256 for the 16-channel
// tile, whose extra threads load none) and BK · BN im2col values.
const A_LOADS: u32 = (BM * BK + 255u) / 256u;
const B_LOADS: u32 = BK * BN / 256u;

// Tiles stored [k][channel] and [k][pixel] as vec4s: a thread's 4 channels (or 4 pixels) are
// one 16-byte load. At most 10.5 KiB together (the 32 × 128 tile), under WebGPU's 16 KiB.
var<workgroup> a_tile: array<vec4<f32>, BK * ROW_A>;
var<workgroup> b_tile: array<vec4<f32>, BK * ROW_B>;

// One output channel's four pixels: bias, residual, bounds (pixels may straddle two images).
fn store4(gm: u32, gn0: u32, npix: u32, hw_out: u32, v: vec4<f32>) {
    if (gm >= p.c_out) {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        let gn = gn0 + j;
        if (gn < npix) {
            let b = gn / hw_out;
            let idx = (b * p.c_out + gm) * hw_out + gn % hw_out;
            var o = v[j] + f32(bias[gm]);
            if (p.has_residual != 0u) {
                o += f32(residual[idx]);
            }
            y[idx] = S(o);
        }
    }
}

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let tile = wid.x + wid.y * nwg.x;
    if (tile >= p.total_tiles) {
        return;
    }
    let tile_m = (tile / p.tiles_n) * BM;
    let tile_n = (tile % p.tiles_n) * BN;
    let kk2 = p.ksize * p.ksize;
    let kdim = p.c_in * kk2;
    let hw_out = p.h_out * p.w_out;
    let npix = p.batch * hw_out;
    // This thread's 4 × 4 block: channels 4ty..4ty+3, pixels 4tx..4tx+3 of the tile.
    let tx = tid % TX;
    let ty = tid / TX;

    // Four vec4 accumulators, one per channel. Named registers, not an indexed array: a private
    // array indexed in a loop can be placed in local memory by the driver (it was, on NVIDIA:
    // issue 10).
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);

    // Each thread's share of the tile loads is fixed for the whole K loop: weights at
    // (k = tid % BK, channels tid / BK + (256 / BK) r), the im2col slice at
    // (k = tid / BN + (256 / BN) r, pixel tid % BN). So the pixel's decomposition into (image,
    // row, column) is done once here, not per load, and the per-load work is the k
    // decomposition alone, by constants for the 3×3 and 1×1 kernels the networks use.
    let ka = tid % BK;
    let ma = tid / BK;
    let nb = tid % BN;
    let kb0 = tid / BN;
    let gn_b = tile_n + nb;
    let pix_ok = gn_b < npix;
    let img = gn_b / hw_out;
    let pix = gn_b % hw_out;
    let oy = i32((pix / p.w_out) * p.stride) - i32(p.pad);
    let ox = i32((pix % p.w_out) * p.stride) - i32(p.pad);
    let x_img = img * p.c_in * p.h_in * p.w_in;

    // Tap-major K: when BK divides c_in (every U-Net layer but the 1-channel stem), K is walked
    // as k = tap · c_in + ci, so each k-step lies within one tap (ky, kx). The tap, its bounds
    // check and the thread's input address are then one computation per k-step, and each
    // gather is a multiply-add on the channel, where the channel-major walk below decomposes
    // every load's k into (ci, ky, kx) and checks its bounds (8 gathers per k-step per thread
    // in the narrow tiles, about half the instructions of their 128-256 FMAs). Only the order
    // of the sum over K changes.
    let tap_major = p.c_in % BK == 0u;
    for (var k0 = 0u; k0 < kdim; k0 += BK) {
        if (tap_major) {
            load_tap_major(k0, kdim, kk2, tile_m, ka, ma, kb0, nb, pix_ok, oy, ox, x_img);
        } else {
            load_channel_major(k0, kdim, kk2, tile_m, ka, ma, kb0, nb, pix_ok, oy, ox, x_img);
        }
        workgroupBarrier();
        for (var k = 0u; k < BK; k++) {
            let a = a_tile[k * ROW_A + ty];
            let b = b_tile[k * ROW_B + tx];
            c0 = fma(vec4<f32>(a.x), b, c0);
            c1 = fma(vec4<f32>(a.y), b, c1);
            c2 = fma(vec4<f32>(a.z), b, c2);
            c3 = fma(vec4<f32>(a.w), b, c3);
        }
        workgroupBarrier();
    }

    let gm = tile_m + 4u * ty;
    let gn = tile_n + 4u * tx;
    store4(gm, gn, npix, hw_out, c0);
    store4(gm + 1u, gn, npix, hw_out, c1);
    store4(gm + 2u, gn, npix, hw_out, c2);
    store4(gm + 3u, gn, npix, hw_out, c3);
}

// The tiles of k-step k0 with K walked tap-major (k = tap · c_in + ci; BK divides c_in): the
// whole step is one tap, so its bounds check and this thread's input address are computed once
// and each gather adds a channel plane.
fn load_tap_major(
    k0: u32, kdim: u32, kk2: u32, tile_m: u32, ka: u32, ma: u32, kb0: u32, nb: u32,
    pix_ok: bool, oy: i32, ox: i32, x_img: u32,
) {
    let plane = p.h_in * p.w_in;
    let tap = k0 / p.c_in;
    let ci0 = k0 - tap * p.c_in;
    let ky = tap / p.ksize;
    let kx = tap - ky * p.ksize;
    // Weights [c_out, c_in, k, k]: entry (gm, ci0 + ka, tap).
    for (var r = 0u; r < A_LOADS; r++) {
        let m = ma + (256u / BK) * r;
        if (m < BM) {
            let gm = tile_m + m;
            var v = 0.0;
            if (gm < p.c_out) {
                v = f32(w[gm * kdim + (ci0 + ka) * kk2 + tap]);
            }
            a_tile[ka * ROW_A + m / 4u][m % 4u] = v;
        }
    }
    // (iy, ix) on the grid the kernel sees: the input, or the input upsampled ×2 when p.up is
    // 1, read at (iy >> 1, ix >> 1) without being stored.
    let iy = oy + i32(ky);
    let ix = ox + i32(kx);
    let inside = pix_ok && iy >= 0 && ix >= 0 && iy < i32(p.h_in << p.up) && ix < i32(p.w_in << p.up);
    let at = x_img + ci0 * plane + (u32(max(iy, 0)) >> p.up) * p.w_in + (u32(max(ix, 0)) >> p.up);
    for (var r = 0u; r < B_LOADS; r++) {
        let kb = kb0 + (256u / BN) * r;
        var xv = 0.0;
        if (inside) {
            xv = f32(x[at + kb * plane]);
        }
        b_tile[kb * ROW_B + nb / 4u][nb % 4u] = xv;
    }
}

// The tiles of k-step k0 with K walked channel-major (k = ci · k² + tap), for any c_in: each
// load decomposes its k and checks its bounds. Weights [c_out, kdim]: BK consecutive threads
// read BK consecutive k, stored transposed.
fn load_channel_major(
    k0: u32, kdim: u32, kk2: u32, tile_m: u32, ka: u32, ma: u32, kb0: u32, nb: u32,
    pix_ok: bool, oy: i32, ox: i32, x_img: u32,
) {
    for (var r = 0u; r < A_LOADS; r++) {
        let m = ma + (256u / BK) * r;
        if (m < BM) {
            let gm = tile_m + m;
            let gk = k0 + ka;
            var v = 0.0;
            if (gm < p.c_out && gk < kdim) {
                v = f32(w[gm * kdim + gk]);
            }
            a_tile[ka * ROW_A + m / 4u][m % 4u] = v;
        }
    }
    // im2col slice: consecutive threads take consecutive output pixels (coalesced rows of
    // x).
    for (var r = 0u; r < B_LOADS; r++) {
        let kb = kb0 + (256u / BN) * r;
        let gkb = k0 + kb;
        var xv = 0.0;
        if (pix_ok && gkb < kdim) {
            var ci = gkb;
            var ky = 0u;
            var kx = 0u;
            if (p.ksize == 3u) {
                ci = gkb / 9u;
                let tap = gkb - ci * 9u;
                ky = tap / 3u;
                kx = tap - ky * 3u;
            } else if (p.ksize != 1u) {
                ci = gkb / kk2;
                let tap = gkb - ci * kk2;
                ky = tap / p.ksize;
                kx = tap - ky * p.ksize;
            }
            let iy = oy + i32(ky);
            let ix = ox + i32(kx);
            if (iy >= 0 && ix >= 0 && iy < i32(p.h_in << p.up) && ix < i32(p.w_in << p.up)) {
                xv = f32(x[x_img + (ci * p.h_in + (u32(iy) >> p.up)) * p.w_in + (u32(ix) >> p.up)]);
            }
        }
        b_tile[kb * ROW_B + nb / 4u][nb % 4u] = xv;
    }
}
