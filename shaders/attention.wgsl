// Multi-head self-attention, fused: for each query, scores qᵀk/√d against every key, a softmax,
// and the weighted sum of values, in one pass with an online softmax (running max and sum), so
// the L × L score matrix is never written to memory. qkv is [N, 3C, L] (q, k, v stacked on
// channels); the output is [N, C, L].
//
// One workgroup of 64 threads handles 64 queries of one (sample, head); each thread keeps its
// query and accumulator (head_dim ≤ 64, zero-padded to whole vec4s) in registers. Keys and values
// stream through workgroup memory 16 at a time (8 KiB in all, half WebGPU's default limit).
//
// Every loop that indexes a private array has a constant trip count (16 vec4s of head
// dimension, 16 keys per tile), with the runtime bounds as uniform guards inside, so the driver
// can unroll them and keep the arrays in registers: with runtime-bounded loops the arrays went
// to local memory on NVIDIA (issue 10, docs/GPU.md). Reference: src/cpu/attention.rs.

// Storage type: f32 here; the f16 build of this file (src/gpu/precision.rs) turns the alias
// below into f16 behind `enable f16;`. Loads widen to f32 and all arithmetic is f32.
alias S = f32;

struct Params {
    batch: u32, channels: u32, len: u32, heads: u32,
    head_dim: u32, q_tiles: u32, total: u32, scale: f32,
}

@group(0) @binding(0) var<storage, read> qkv: array<S>;
@group(0) @binding(1) var<storage, read_write> out: array<S>;
@group(0) @binding(2) var<uniform> p: Params;

const BQ: u32 = 64u;
const BKV: u32 = 16u;
// vec4s of head dimension: MAX_D = 64 channels.
const D4: u32 = 16u;

var<workgroup> k_tile: array<vec4<f32>, 256>; // BKV * D4
var<workgroup> v_tile: array<vec4<f32>, 256>;

@compute @workgroup_size(64, 1, 1)
fn main(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let item = wid.x + wid.y * nwg.x;
    if (item >= p.total) {
        return;
    }
    let qt = item % p.q_tiles;
    let nh = item / p.q_tiles;
    let n = nh / p.heads;
    let h = nh % p.heads;
    let d = p.head_dim;
    let d4 = (d + 3u) / 4u;
    let len = p.len;
    let c = p.channels;
    let i = qt * BQ + lid.x;
    let valid = i < len;
    let qbase = (n * 3u * c + h * d) * len;
    let kbase = qbase + c * len;
    let vbase = qbase + 2u * c * len;

    var q: array<vec4<f32>, 16>;
    var acc: array<vec4<f32>, 16>;
    for (var c4 = 0u; c4 < D4; c4++) {
        var qv = vec4<f32>(0.0);
        if (valid && c4 < d4) {
            for (var e = 0u; e < 4u; e++) {
                let dd = 4u * c4 + e;
                if (dd < d) {
                    qv[e] = f32(qkv[qbase + dd * len + i]) * p.scale;
                }
            }
        }
        q[c4] = qv;
        acc[c4] = vec4<f32>(0.0);
    }
    var m = -3.0e38;
    var l = 0.0;

    for (var j0 = 0u; j0 < len; j0 += BKV) {
        // 16 keys × 64 channels of K and of V, 16 values per thread; consecutive threads read
        // consecutive positions of one channel row. Channels past d are zero.
        for (var r = 0u; r < 16u; r++) {
            let e = lid.x + r * BQ;
            let jj = e % BKV;
            let dd = e / BKV;
            let j = j0 + jj;
            var kv = 0.0;
            var vv = 0.0;
            if (j < len && dd < d) {
                kv = f32(qkv[kbase + dd * len + j]);
                vv = f32(qkv[vbase + dd * len + j]);
            }
            k_tile[jj * D4 + dd / 4u][dd % 4u] = kv;
            v_tile[jj * D4 + dd / 4u][dd % 4u] = vv;
        }
        workgroupBarrier();
        let count = min(BKV, len - j0);
        var s: array<f32, 16>;
        var tile_max = -3.0e38;
        for (var jj = 0u; jj < BKV; jj++) {
            var sc = -3.0e38;
            if (jj < count) {
                var dot4 = vec4<f32>(0.0);
                for (var c4 = 0u; c4 < D4; c4++) {
                    if (c4 < d4) {
                        dot4 = fma(q[c4], k_tile[jj * D4 + c4], dot4);
                    }
                }
                sc = dot4.x + dot4.y + dot4.z + dot4.w;
                tile_max = max(tile_max, sc);
            }
            s[jj] = sc;
        }
        let m_new = max(m, tile_max);
        let correction = exp(m - m_new);
        l *= correction;
        for (var c4 = 0u; c4 < D4; c4++) {
            acc[c4] *= correction;
        }
        for (var jj = 0u; jj < BKV; jj++) {
            if (jj < count) {
                let pj = exp(s[jj] - m_new);
                l += pj;
                for (var c4 = 0u; c4 < D4; c4++) {
                    if (c4 < d4) {
                        acc[c4] = fma(vec4<f32>(pj), v_tile[jj * D4 + c4], acc[c4]);
                    }
                }
            }
        }
        m = m_new;
        workgroupBarrier();
    }

    if (valid) {
        let inv = 1.0 / l;
        for (var c4 = 0u; c4 < D4; c4++) {
            if (c4 < d4) {
                let a = acc[c4] * inv;
                for (var e = 0u; e < 4u; e++) {
                    let dd = 4u * c4 + e;
                    if (dd < d) {
                        out[(n * c + h * d + dd) * len + i] = S(a[e]);
                    }
                }
            }
        }
    }
}
