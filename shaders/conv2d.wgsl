// 2-D convolution as an implicit GEMM: out[co, p] = Σ_k W[co, k] · im2col(x)[k, p] + bias[co]
// (+ residual), with k = (ci, ky, kx) and p = (n, oy, ox). The im2col matrix is never formed:
// each workgroup gathers its 16 × 64 slice straight from x into workgroup memory.
//
// Tiling: a 16×16 workgroup computes a 64 (channels) × 64 (pixels) output tile, each thread a
// 4 × 4 register block (rows ty + 16 i, columns tx + 16 j, so that neighbouring threads touch
// neighbouring addresses in workgroup memory and in the output). K advances 16 at a time.
// Serves 3×3 and 1×1 kernels, any stride and padding. Reference: src/cpu/conv.rs.

struct Params {
    batch: u32, c_in: u32, h_in: u32, w_in: u32,
    c_out: u32, h_out: u32, w_out: u32, ksize: u32,
    stride: u32, pad: u32, has_residual: u32, tiles_n: u32,
    total_tiles: u32, _p0: u32, _p1: u32, _p2: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read> residual: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;
// The weight tile is stored transposed; one padding column avoids bank conflicts on the store.
const BMP: u32 = 65u;

var<workgroup> a_tile: array<f32, 1040>; // BK * BMP
var<workgroup> b_tile: array<f32, 1024>; // BK * BN

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
    let kk2 = p.ksize * p.ksize;
    let kdim = p.c_in * kk2;
    let hw_out = p.h_out * p.w_out;
    let npix = p.batch * hw_out;
    let tid = lid.y * 16u + lid.x;

    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = 0.0;
    }

    for (var k0 = 0u; k0 < kdim; k0 += BK) {
        // Weights [c_out, kdim]: 16 consecutive threads read 16 consecutive k.
        for (var r = 0u; r < 4u; r++) {
            let e = tid + r * 256u;
            let m = e / BK;
            let k = e % BK;
            let gm = tile_m + m;
            let gk = k0 + k;
            var v = 0.0;
            if (gm < p.c_out && gk < kdim) {
                v = w[gm * kdim + gk];
            }
            a_tile[k * BMP + m] = v;
        }
        // im2col slice: consecutive threads take consecutive output pixels (coalesced rows of x).
        for (var r = 0u; r < 4u; r++) {
            let e = tid + r * 256u;
            let k = e / BN;
            let n = e % BN;
            let gk = k0 + k;
            let gn = tile_n + n;
            var v = 0.0;
            if (gk < kdim && gn < npix) {
                let ci = gk / kk2;
                let tap = gk % kk2;
                let ky = tap / p.ksize;
                let kx = tap % p.ksize;
                let b = gn / hw_out;
                let pix = gn % hw_out;
                let iy = i32((pix / p.w_out) * p.stride + ky) - i32(p.pad);
                let ix = i32((pix % p.w_out) * p.stride + kx) - i32(p.pad);
                if (iy >= 0 && ix >= 0 && iy < i32(p.h_in) && ix < i32(p.w_in)) {
                    v = x[((b * p.c_in + ci) * p.h_in + u32(iy)) * p.w_in + u32(ix)];
                }
            }
            b_tile[k * BN + n] = v;
        }
        workgroupBarrier();
        for (var k = 0u; k < BK; k++) {
            var a: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                a[i] = a_tile[k * BMP + lid.y + 16u * i];
                bv[i] = b_tile[k * BN + lid.x + 16u * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] = fma(a[i], bv[j], acc[i * 4u + j]);
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i++) {
        let gm = tile_m + lid.y + 16u * i;
        if (gm >= p.c_out) {
            continue;
        }
        for (var j = 0u; j < 4u; j++) {
            let gn = tile_n + lid.x + 16u * j;
            if (gn >= npix) {
                continue;
            }
            let b = gn / hw_out;
            let idx = (b * p.c_out + gm) * hw_out + gn % hw_out;
            var v = acc[i * 4u + j] + bias[gm];
            if (p.has_residual != 0u) {
                v += residual[idx];
            }
            y[idx] = v;
        }
    }
}
