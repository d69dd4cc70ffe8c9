// Fully connected layer y[m, n] = act((Σ_k x[m, k] · W[n, k] + b[n]) · (1 + scale[m, n]) + shift[m, n])
// with W stored [out, in] and the optional time modulation [rows, 2·out] = [scale | shift].
// Tiled GEMM: a 16×16 workgroup computes a 64 × 64 tile, each thread a 4×4 register block;
// both operands are k-contiguous, so tiles load with k fastest and are stored transposed (with
// one padding column) in workgroup memory. Reference: src/cpu/linear.rs.

struct Params {
    rows: u32, inp: u32, outp: u32, has_mod: u32,
    act: u32, tiles_n: u32, total_tiles: u32, _p0: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read> modulation: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;
const BP: u32 = 65u;

var<workgroup> a_tile: array<f32, 1040>; // BK * BP
var<workgroup> b_tile: array<f32, 1040>;

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

    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = 0.0;
    }

    for (var k0 = 0u; k0 < p.inp; k0 += BK) {
        for (var r = 0u; r < 4u; r++) {
            let e = tid + r * 256u;
            let m = e / BK;
            let k = e % BK;
            let gk = k0 + k;
            var av = 0.0;
            if (tile_m + m < p.rows && gk < p.inp) {
                av = x[(tile_m + m) * p.inp + gk];
            }
            a_tile[k * BP + m] = av;
            var bv = 0.0;
            if (tile_n + m < p.outp && gk < p.inp) {
                bv = w[(tile_n + m) * p.inp + gk];
            }
            b_tile[k * BP + m] = bv;
        }
        workgroupBarrier();
        for (var k = 0u; k < BK; k++) {
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                a[i] = a_tile[k * BP + lid.y + 16u * i];
                b[i] = b_tile[k * BP + lid.x + 16u * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] = fma(a[i], b[j], acc[i * 4u + j]);
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i++) {
        let gm = tile_m + lid.y + 16u * i;
        if (gm >= p.rows) {
            continue;
        }
        for (var j = 0u; j < 4u; j++) {
            let gn = tile_n + lid.x + 16u * j;
            if (gn >= p.outp) {
                continue;
            }
            var v = acc[i * 4u + j] + bias[gn];
            if (p.has_mod != 0u) {
                let base = gm * 2u * p.outp;
                v = v * (1.0 + modulation[base + gn]) + modulation[base + p.outp + gn];
            }
            y[gm * p.outp + gn] = activate(v, p.act);
        }
    }
}
