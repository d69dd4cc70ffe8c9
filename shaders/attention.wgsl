// Multi-head self-attention, fused: for each query, scores qᵀk/√d against every key, a softmax,
// and the weighted sum of values, in one pass with an online softmax (running max and sum), so
// the L × L score matrix is never written to memory. qkv is [N, 3C, L] (q, k, v stacked on
// channels); the output is [N, C, L].
//
// One workgroup of 64 threads handles 64 queries of one (sample, head); each thread keeps its
// query and accumulator (head_dim ≤ 64) in registers. Keys and values stream through workgroup
// memory 32 at a time. Reference: src/cpu/attention.rs (the three steps written out).

struct Params {
    batch: u32, channels: u32, len: u32, heads: u32,
    head_dim: u32, q_tiles: u32, total: u32, scale: f32,
}

@group(0) @binding(0) var<storage, read> qkv: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

const BQ: u32 = 64u;
const BKV: u32 = 32u;
const MAX_D: u32 = 64u;

var<workgroup> k_tile: array<f32, 2048>; // BKV * MAX_D
var<workgroup> v_tile: array<f32, 2048>;

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
    let len = p.len;
    let c = p.channels;
    let i = qt * BQ + lid.x;
    let valid = i < len;
    let qbase = (n * 3u * c + h * d) * len;
    let kbase = qbase + c * len;
    let vbase = qbase + 2u * c * len;

    var q: array<f32, 64>;
    var acc: array<f32, 64>;
    for (var dd = 0u; dd < d; dd++) {
        acc[dd] = 0.0;
        q[dd] = 0.0;
        if (valid) {
            q[dd] = qkv[qbase + dd * len + i] * p.scale;
        }
    }
    var m = -3.0e38;
    var l = 0.0;

    for (var j0 = 0u; j0 < len; j0 += BKV) {
        // Consecutive threads read consecutive positions of one channel row.
        for (var e = lid.x; e < BKV * d; e += BQ) {
            let jj = e % BKV;
            let dd = e / BKV;
            let j = j0 + jj;
            var kv = 0.0;
            var vv = 0.0;
            if (j < len) {
                kv = qkv[kbase + dd * len + j];
                vv = qkv[vbase + dd * len + j];
            }
            k_tile[jj * MAX_D + dd] = kv;
            v_tile[jj * MAX_D + dd] = vv;
        }
        workgroupBarrier();
        let count = min(BKV, len - j0);
        var s: array<f32, 32>;
        var tile_max = -3.0e38;
        for (var jj = 0u; jj < count; jj++) {
            var dot = 0.0;
            for (var dd = 0u; dd < d; dd++) {
                dot = fma(q[dd], k_tile[jj * MAX_D + dd], dot);
            }
            s[jj] = dot;
            tile_max = max(tile_max, dot);
        }
        let m_new = max(m, tile_max);
        let correction = exp(m - m_new);
        l *= correction;
        for (var dd = 0u; dd < d; dd++) {
            acc[dd] *= correction;
        }
        for (var jj = 0u; jj < count; jj++) {
            let pj = exp(s[jj] - m_new);
            l += pj;
            for (var dd = 0u; dd < d; dd++) {
                acc[dd] = fma(pj, v_tile[jj * MAX_D + dd], acc[dd]);
            }
        }
        m = m_new;
        workgroupBarrier();
    }

    if (valid) {
        let inv = 1.0 / l;
        for (var dd = 0u; dd < d; dd++) {
            out[(n * c + h * d + dd) * len + i] = acc[dd] * inv;
        }
    }
}
