// 3×3 convolution, stride 1, padding 1, computed directly from input patches held in workgroup
// memory: out[n, co, y, x] = Σ_ci Σ_ky Σ_kx W[co, ci, ky, kx] · in[n, ci, y + ky − 1, x + kx − 1]
// + bias[co] (+ residual), where `in` is x, or x upsampled ×2 by nearest neighbour when `up` is 1
// (read at (iy >> 1, ix >> 1), never stored). Reference: src/cpu/conv.rs; the host picks this
// kernel or conv2d.wgsl's implicit GEMM per layer (src/gpu/tiles.rs, `ConvKernel`).
//
// Why a second convolution kernel. conv2d.wgsl gathers im2col values: every input value is
// loaded nine times (once per tap) into workgroup memory, with a bounds check and an address
// each, and at the U-Net's 16 and 32 output channels each gathered value feeds only 16 or 32
// FMAs. On the H200 that held the 3×3 layers to 38% of the same-run matmul at batch 256 (run 6,
// docs/GPU.md). Here a workgroup loads the padded input rows its 512 output pixels need once per
// input channel (about 1.35 values per output pixel for 28×28 images), and every thread computes
// 4 pixels × 16 output channels from them: per tap, 4 scalar workgroup-memory loads (consecutive
// pixels across the warp: no bank conflicts) and 4 broadcast vec4 weight loads feed 64 FMAs:
// the 8 FMAs per load of conv2d.wgsl's 4 × 4 blocks, without its gather, and a barrier pair
// every 1,152 FMAs a thread instead of every 128–256. The analysis is in docs/GPU.md
// ("conv3x3.wgsl: a direct 3×3 kernel").
//
// Layout of the patch. The batch is read as one tall image: image n's rows y = 0..H−1 are tall
// rows n·(H + 1) + y + 1, and tall row n·(H + 1) is a zero row between image n − 1 and n (and
// above image 0), so the rows above and below every image are zeros without a check per tap.
// Columns are padded by one zero on each side (RS = W + 2 values a row). A workgroup's PIXELS
// consecutive pixels (flattened over n, y, x) span tall rows tall(p0)..tall(p_last); its patch
// holds those and one more above and below, for CI_B input channels at a time. The host uses
// this kernel only where that fits in PATCH values per channel (`direct::applies`).

// Storage type: f32 here; the f16 build of this file (src/gpu/precision.rs) turns the alias
// below into f16 behind `enable f16;`. Loads widen to f32 and all arithmetic is f32.
alias S = f32;

// conv2d.wgsl's parameter block and bindings (the host fills both alike; tests/shaders.rs
// holds the two declarations equal); `ksize`, `stride` and `pad` are 3, 1 and 1 here.
// `tiles_n`: pixel tiles (of PIXELS); `total_tiles`: those times the channel groups (of CO).
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

// Threads per workgroup, output channels per workgroup, and per thread PX pixels × CO_T
// channels. As written, CO_T = CO: each thread has all 16 channels, 512 pixels a workgroup. The
// host's small-grid variant (`DirectTile::Small`, src/gpu/tiles.rs) rewrites CO_T to 4: four
// groups of 32 threads, one per 4 channels, 128 pixels a workgroup, so a small batch gets four
// times the workgroups, each thread a quarter of the chain.
const THREADS: u32 = 128u;
const PX: u32 = 4u;
const CO: u32 = 16u;
const CO_T: u32 = 16u;
// Threads per channel group, and the pixels of a workgroup.
const TP: u32 = THREADS * CO_T / CO;
const PIXELS: u32 = TP * PX;
// Input channels per step, and the patch values each channel may take (rows × RS).
const CI_B: u32 = 2u;
const PATCH: u32 = 800u;
// The most patch rows one loader thread takes per channel (`direct::applies` keeps every layer
// this kernel runs within it), and the weight loads per thread and step (⌈CI_B·9·CO / THREADS⌉).
const MAXR: u32 = 12u;
const WLOADS: u32 = 3u;

// 6,400 + 1,152 bytes.
var<workgroup> rows_in: array<f32, CI_B * PATCH>;
// Weights of the step as [ci][tap][co]: the 16 channels of one (ci, tap) are four vec4s.
var<workgroup> wts: array<vec4<f32>, CI_B * 9u * CO / 4u>;

// The tall row of flattened output pixel q (on the grid the kernel sees, `hp` × `wp`).
fn tall_row(q: u32, hp: u32, wp: u32) -> u32 {
    let n = q / (hp * wp);
    let rem = q - n * hp * wp;
    return n * (hp + 1u) + rem / wp + 1u;
}

// The patch index of output pixel q's top-left tap (its row above, its column to the left);
// pixels past the batch read the patch's start and are not stored.
fn patch_at(q: u32, npix: u32, t0: u32, hp: u32, wp: u32) -> u32 {
    if (q >= npix) {
        return 0u;
    }
    return (tall_row(q, hp, wp) - 1u - t0) * (wp + 2u) + q % wp;
}

// Output pixel q's 4 channels gm..gm+3 (of `v`): bias, residual, bounds.
fn store4(q: u32, gm: u32, hw: u32, v: vec4<f32>) {
    let n = q / hw;
    let base = (n * p.c_out + gm) * hw + (q - n * hw);
    for (var c = 0u; c < 4u; c++) {
        if (gm + c < p.c_out) {
            let idx = base + c * hw;
            var o = v[c] + f32(bias[gm + c]);
            if (p.has_residual != 0u) {
                o += f32(residual[idx]);
            }
            y[idx] = S(o);
        }
    }
}

// Output pixel q's CO_T channels gm.. (four of them in each of a0..a3), if q is in the batch.
fn store16(q: u32, npix: u32, gm: u32, hw: u32, a0: vec4<f32>, a1: vec4<f32>, a2: vec4<f32>, a3: vec4<f32>) {
    if (q < npix) {
        store4(q, gm, hw, a0);
        if (CO_T == 16u) {
            store4(q, gm + 4u, hw, a1);
            store4(q, gm + 8u, hw, a2);
            store4(q, gm + 12u, hw, a3);
        }
    }
}

@compute @workgroup_size(128, 1, 1)
fn main(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let tile = wid.x + wid.y * nwg.x;
    if (tile >= p.total_tiles) {
        return;
    }
    let tile_m = (tile / p.tiles_n) * CO;
    let p0 = (tile % p.tiles_n) * PIXELS;
    // The grid the kernel sees (the input, or the input upsampled ×2) is the output's.
    let hp = p.h_out;
    let wp = p.w_out;
    let hw = hp * wp;
    let npix = p.batch * hw;
    let rs = wp + 2u;
    let p_last = min(p0 + PIXELS, npix) - 1u;
    // The patch: tall rows t0 .. t0 + rows − 1.
    let t0 = tall_row(p0, hp, wp) - 1u;
    let rows = tall_row(p_last, hp, wp) + 2u - t0;

    // This thread's channel group (its channels gm..gm+CO_T), its pixels q_j = p0 + j · TP +
    // lane (consecutive threads, consecutive pixels) and the patch index of each one's top-left
    // tap (named values, not a private array the driver might place in local memory).
    let group = tid / TP;
    let lane = tid % TP;
    let gm = tile_m + group * CO_T;
    let q0 = p0 + lane;
    let q1 = q0 + TP;
    let q2 = q1 + TP;
    let q3 = q2 + TP;
    let b0 = patch_at(q0, npix, t0, hp, wp);
    let b1 = patch_at(q1, npix, t0, hp, wp);
    let b2 = patch_at(q2, npix, t0, hp, wp);
    let b3 = patch_at(q3, npix, t0, hp, wp);

    // The loader's share of the patch: column `col` of every `rpp`-th row from `lr`, at most
    // MAXR rows. The column's input x and its bounds are fixed; each row's (image, row) pair is
    // advanced, not divided out, per load: rpp ≤ H + 1, so one step crosses at most one image
    // boundary and the carry is a select, not a loop. The row loop has a constant trip count
    // and no branch around its loads (an invalid load reads x[0] and is replaced by zero), so
    // the driver can unroll it and issue a channel's loads back to back: one memory latency
    // per channel and step, where a loop of dependent trips would wait for each load in turn.
    let rpp = min(THREADS / rs, hp + 1u);
    let col = tid % rs;
    let lr = tid / rs;
    let loads = lr < rpp;
    let xs = (col - 1u) >> p.up;
    let col_ok = col >= 1u && col <= wp;
    let g0 = t0 + lr;
    let n0 = g0 / (hp + 1u);
    let y0 = g0 - n0 * (hp + 1u);

    // 16 accumulators: pixel j, output channels gm + 4g..gm + 4g + 3 (only g = 0, a_j0, when
    // CO_T is 4).
    var a00 = vec4<f32>(0.0); var a01 = vec4<f32>(0.0); var a02 = vec4<f32>(0.0); var a03 = vec4<f32>(0.0);
    var a10 = vec4<f32>(0.0); var a11 = vec4<f32>(0.0); var a12 = vec4<f32>(0.0); var a13 = vec4<f32>(0.0);
    var a20 = vec4<f32>(0.0); var a21 = vec4<f32>(0.0); var a22 = vec4<f32>(0.0); var a23 = vec4<f32>(0.0);
    var a30 = vec4<f32>(0.0); var a31 = vec4<f32>(0.0); var a32 = vec4<f32>(0.0); var a33 = vec4<f32>(0.0);

    for (var ci0 = 0u; ci0 < p.c_in; ci0 += CI_B) {
        // The patch rows of input channels ci0..ci0+CI_B.
        if (loads) {
            for (var c = 0u; c < CI_B; c++) {
                let ci = ci0 + c;
                let ci_ok = col_ok && ci < p.c_in;
                var n = n0;
                var yy = y0;
                for (var k = 0u; k < MAXR; k++) {
                    let r = lr + k * rpp;
                    // yy = 0 is the zero row above image n.
                    let ok = ci_ok && yy != 0u && n < p.batch;
                    let at = ((n * p.c_in + ci) * p.h_in + ((yy - 1u) >> p.up)) * p.w_in + xs;
                    let v = f32(x[select(0u, at, ok)]);
                    if (r < rows) {
                        rows_in[c * PATCH + r * rs + col] = select(0.0, v, ok);
                    }
                    yy += rpp;
                    let wrap = yy > hp;
                    yy = select(yy, yy - (hp + 1u), wrap);
                    n += u32(wrap);
                }
            }
        }
        // The weights W[tile_m + co, ci0 + c, tap] at [c][tap][co]: WLOADS independent loads.
        for (var k = 0u; k < WLOADS; k++) {
            let i = tid + k * THREADS;
            let co = i % CO;
            let tap = (i / CO) % 9u;
            let ci = ci0 + i / (9u * CO);
            let gm = tile_m + co;
            let ok = i < CI_B * 9u * CO && gm < p.c_out && ci < p.c_in;
            let v = f32(w[select(0u, (gm * p.c_in + ci) * 9u + tap, ok)]);
            if (i < CI_B * 9u * CO) {
                wts[i / 4u][i % 4u] = select(0.0, v, ok);
            }
        }
        workgroupBarrier();
        for (var c = 0u; c < CI_B; c++) {
            for (var t = 0u; t < 9u; t++) {
                let off = c * PATCH + (t / 3u) * rs + t % 3u;
                let v0 = vec4<f32>(rows_in[b0 + off]);
                let v1 = vec4<f32>(rows_in[b1 + off]);
                let v2 = vec4<f32>(rows_in[b2 + off]);
                let v3 = vec4<f32>(rows_in[b3 + off]);
                // The tap's weights for this thread's channels (one vec4 per 4 channels; every
                // thread of a warp reads the same address).
                let wi = (c * 9u + t) * (CO / 4u) + group * (CO_T / 4u);
                let w0 = wts[wi];
                a00 = fma(v0, w0, a00);
                a10 = fma(v1, w0, a10);
                a20 = fma(v2, w0, a20);
                a30 = fma(v3, w0, a30);
                if (CO_T == 16u) {
                    let w1 = wts[wi + 1u];
                    let w2 = wts[wi + 2u];
                    let w3 = wts[wi + 3u];
                    a01 = fma(v0, w1, a01); a02 = fma(v0, w2, a02); a03 = fma(v0, w3, a03);
                    a11 = fma(v1, w1, a11); a12 = fma(v1, w2, a12); a13 = fma(v1, w3, a13);
                    a21 = fma(v2, w1, a21); a22 = fma(v2, w2, a22); a23 = fma(v2, w3, a23);
                    a31 = fma(v3, w1, a31); a32 = fma(v3, w2, a32); a33 = fma(v3, w3, a33);
                }
            }
        }
        workgroupBarrier();
    }

    // Stores: for each channel, consecutive threads write consecutive pixels.
    store16(q0, npix, gm, hw, a00, a01, a02, a03);
    store16(q1, npix, gm, hw, a10, a11, a12, a13);
    store16(q2, npix, gm, hw, a20, a21, a22, a23);
    store16(q3, npix, gm, hw, a30, a31, a32, a33);
}
