// Fully connected layer y[m, n] = act((Σ_k x[m, k] · W[n, k] + b[n]) · (1 + scale[m, n]) + shift[m, n])
// with W stored [out, in] and the optional time modulation [M, 2·out] = [scale | shift], each
// of whose rows serves mod_repeat consecutive rows of x (M = rows / mod_repeat; a batch that
// shares its times passes one row), 0 meaning none.
// Tiled GEMM: a 16×16 workgroup computes a 64 × 64 tile, each thread a 4×4 register block of
// four vec4 accumulators; both operands are k-contiguous, so tiles load with k fastest and are
// stored transposed (one padding vec4 per row) in workgroup memory, from which each thread reads
// its four rows and four columns as two 16-byte loads per k: 16 FMAs per 2 loads.
// Reference: src/cpu/linear.rs. Analysis and measurements: docs/GPU.md.

// Storage type: f32 here; the f16 build of this file (src/gpu/precision.rs) turns the alias
// below into f16 behind `enable f16;`. Loads widen to f32 and all arithmetic is f32.
alias S = f32;

struct Params {
    rows: u32, inp: u32, outp: u32, mod_repeat: u32,
    act: u32, tiles_n: u32, total_tiles: u32, _p0: u32,
}

@group(0) @binding(0) var<storage, read> x: array<S>;
@group(0) @binding(1) var<storage, read> w: array<S>;
@group(0) @binding(2) var<storage, read> bias: array<S>;
@group(0) @binding(3) var<storage, read> modulation: array<S>;
@group(0) @binding(4) var<storage, read_write> y: array<S>;
@group(0) @binding(5) var<uniform> p: Params;

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;
// vec4s per k-row of a tile: 16 hold 64 values, one pads, so the transposed stores of 16
// consecutive k land on different banks.
const ROW: u32 = 17u;

// Tiles stored [k][m] and [k][n] as vec4s: a thread's 4 rows (or 4 columns) are one 16-byte load.
var<workgroup> a_tile: array<vec4<f32>, 272>; // BK * ROW
var<workgroup> b_tile: array<vec4<f32>, 272>;

fn erf_approx(v: f32) -> f32 {
    // Abramowitz & Stegun 7.1.26, |error| < 1.5e-7.
    let s = sign(v);
    let a = abs(v);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    return s * (1.0 - poly * exp(-a * a));
}

fn activate(v: f32, act: u32) -> f32 {
    switch act {
        case 1u: { return v / (1.0 + exp(-v)); }
        case 2u: { return max(v, 0.0); }
        case 3u: { return 0.5 * v * (1.0 + erf_approx(v * 0.70710678118654752)); }
        default: { return v; }
    }
}

// One output: bias, modulation, activation, bounds.
fn store1(gm: u32, gn: u32, v: f32) {
    if (gm >= p.rows || gn >= p.outp) {
        return;
    }
    var o = v + f32(bias[gn]);
    if (p.mod_repeat != 0u) {
        let base = (gm / p.mod_repeat) * 2u * p.outp;
        o = o * (1.0 + f32(modulation[base + gn])) + f32(modulation[base + p.outp + gn]);
    }
    y[gm * p.outp + gn] = S(activate(o, p.act));
}

// One output row's four columns.
fn store4(gm: u32, gn0: u32, v: vec4<f32>) {
    store1(gm, gn0, v.x);
    store1(gm, gn0 + 1u, v.y);
    store1(gm, gn0 + 2u, v.z);
    store1(gm, gn0 + 3u, v.w);
}

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let tile = wid.x + wid.y * nwg.x;
    if (tile >= p.total_tiles) {
        return;
    }
    let tile_m = (tile / p.tiles_n) * BM;
    let tile_n = (tile % p.tiles_n) * BN;
    let tid = lid.y * 16u + lid.x;

    // Thread (tx, ty) owns rows 4ty..4ty+3 and columns 4tx..4tx+3 of the tile: four vec4
    // accumulators, one per row. Named registers, not an indexed array: a private array indexed
    // in a loop can be placed in local memory by the driver (it was, on NVIDIA: issue 10).
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);

    for (var k0 = 0u; k0 < p.inp; k0 += BK) {
        // Both operands are k-contiguous: 16 consecutive threads read 16 consecutive k of one
        // row (coalesced) and store them transposed.
        for (var r = 0u; r < 4u; r++) {
            let e = tid + r * 256u;
            let m = e / BK;
            let k = e % BK;
            let gk = k0 + k;
            var av = 0.0;
            if (tile_m + m < p.rows && gk < p.inp) {
                av = f32(x[(tile_m + m) * p.inp + gk]);
            }
            a_tile[k * ROW + m / 4u][m % 4u] = av;
            var bv = 0.0;
            if (tile_n + m < p.outp && gk < p.inp) {
                bv = f32(w[(tile_n + m) * p.inp + gk]);
            }
            b_tile[k * ROW + m / 4u][m % 4u] = bv;
        }
        workgroupBarrier();
        for (var k = 0u; k < BK; k++) {
            let a = a_tile[k * ROW + lid.y];
            let b = b_tile[k * ROW + lid.x];
            c0 = fma(vec4<f32>(a.x), b, c0);
            c1 = fma(vec4<f32>(a.y), b, c1);
            c2 = fma(vec4<f32>(a.z), b, c2);
            c3 = fma(vec4<f32>(a.w), b, c3);
        }
        workgroupBarrier();
    }

    let gm = tile_m + 4u * lid.y;
    let gn = tile_n + 4u * lid.x;
    store4(gm, gn, c0);
    store4(gm + 1u, gn, c1);
    store4(gm + 2u, gn, c2);
    store4(gm + 3u, gn, c3);
}

// At most GEMV_ROWS rows (src/gpu/kernels.rs picks this entry then): the time MLP and the
// blocks' projections of the conditioning, which run on one row per distinct (s, t), so on one
// row for a whole sampler batch. The tiled `main` gives such a product one to three workgroups
// that each walk all of K in BK steps with two barriers a step (run 6 on an H200: 15 of them,
// about 20 µs each, at every batch). Here one 64-thread workgroup computes one output column:
// the threads take every 64th k (consecutive threads, consecutive k: coalesced reads of the
// weight row), each keeps the up to four rows' partial sums in one vec4 (named lanes, not an
// indexed private array), and a tree in workgroup memory adds the 64 partials. A workgroup
// reads its weight row once; the input rows come from cache.
const GEMV_ROWS: u32 = 4u;
const GV: u32 = 64u;
var<workgroup> gv_part: array<vec4<f32>, 64>;

@compute @workgroup_size(64, 1, 1)
fn gemv(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    // One column per workgroup: uniform, so the whole workgroup leaves or stays together.
    let n = wid.x + wid.y * nwg.x;
    if (n >= p.outp) {
        return;
    }
    let t = lid.x;
    var acc = vec4<f32>(0.0);
    for (var k = t; k < p.inp; k += GV) {
        var xv = vec4<f32>(f32(x[k]), 0.0, 0.0, 0.0);
        if (p.rows > 1u) {
            xv.y = f32(x[p.inp + k]);
        }
        if (p.rows > 2u) {
            xv.z = f32(x[2u * p.inp + k]);
        }
        if (p.rows > 3u) {
            xv.w = f32(x[3u * p.inp + k]);
        }
        acc = fma(xv, vec4<f32>(f32(w[n * p.inp + k])), acc);
    }
    gv_part[t] = acc;
    workgroupBarrier();
    for (var stride = GV / 2u; stride > 0u; stride >>= 1u) {
        if (t < stride) {
            gv_part[t] += gv_part[t + stride];
        }
        workgroupBarrier();
    }
    if (t == 0u) {
        let v = gv_part[0];
        store1(0u, n, v.x);
        store1(1u, n, v.y);
        store1(2u, n, v.z);
        store1(3u, n, v.w);
    }
}
