// Multi-head self-attention, fused: for each query, scores qᵀk/√d against every key, a softmax,
// and the weighted sum of values, in one pass with an online softmax (running max and sum), so
// the L × L score matrix is never written to memory. qkv is [N, 3C, L] (q, k, v stacked on
// channels); the output is [N, C, L].
//
// One workgroup of 256 threads handles 64 queries of one (sample, head), four threads a query:
// each of the four keeps a quarter of the query and of its accumulator (head_dim ≤ 64,
// zero-padded to whole vec4s: 4 vec4s a thread) in registers. Keys and values stream through
// workgroup memory 8 at a time; each thread computes its quarter of the 8 dot products, the
// shares meet in workgroup memory, and each of the four runs the same online softmax on the
// summed scores and accumulates its quarter of the values (12 KiB of workgroup memory in all,
// under WebGPU's default 16 KiB). Why four: the GPU report found this kernel at ~135 µs a call
// at every batch from 1 to 256 (run 6, docs/GPU.md), the length of one workgroup's chain of
// dependent work, with one thread a query doing all 64 channels of every key; a quarter of the
// channels a thread makes that chain about a quarter as long, with 8 warps a workgroup instead
// of 2 to hide it.
//
// Every loop that indexes a private array has a constant trip count (4 vec4s a part, 8 keys per
// tile), with the runtime bounds as uniform guards inside, so the driver can unroll them and keep
// the arrays in registers: with runtime-bounded loops the arrays went to local memory on NVIDIA
// (issue 10, docs/GPU.md). Reference: src/cpu/attention.rs.

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
// Threads per query: each holds a quarter of the head's channels.
const PARTS: u32 = 4u;
const BKV: u32 = 8u;
// vec4s of head dimension: MAX_D = 64 channels, P4 of them per part.
const D4: u32 = 16u;
const P4: u32 = 4u;

var<workgroup> k_tile: array<vec4<f32>, 128>; // BKV * D4
var<workgroup> v_tile: array<vec4<f32>, 128>;
// Each part's dot products of its queries with the tile's keys, [part][key][query].
var<workgroup> s_part: array<f32, 2048>; // PARTS * BKV * BQ

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(local_invocation_index) tid: u32,
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
    // Consecutive threads take consecutive queries (coalesced reads of q, writes of the output);
    // the four parts of a query are 64 threads apart.
    let qi = tid % BQ;
    let part = tid / BQ;
    let i = qt * BQ + qi;
    let valid = i < len;
    let qbase = (n * 3u * c + h * d) * len;
    let kbase = qbase + c * len;
    let vbase = qbase + 2u * c * len;

    var q: array<vec4<f32>, 4>;
    var acc: array<vec4<f32>, 4>;
    for (var t = 0u; t < P4; t++) {
        let c4 = part * P4 + t;
        var qv = vec4<f32>(0.0);
        if (valid && c4 < d4) {
            for (var e = 0u; e < 4u; e++) {
                let dd = 4u * c4 + e;
                if (dd < d) {
                    qv[e] = f32(qkv[qbase + dd * len + i]) * p.scale;
                }
            }
        }
        q[t] = qv;
        acc[t] = vec4<f32>(0.0);
    }
    var m = -3.0e38;
    var l = 0.0;

    for (var j0 = 0u; j0 < len; j0 += BKV) {
        // 8 keys × 64 channels of K and of V, 2 values of each per thread. Channels past d are
        // zero.
        for (var r = 0u; r < 2u; r++) {
            let e = tid + r * 256u;
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
        // This part's share of each score.
        for (var jj = 0u; jj < BKV; jj++) {
            var dot4 = vec4<f32>(0.0);
            for (var t = 0u; t < P4; t++) {
                let c4 = part * P4 + t;
                if (c4 < d4) {
                    dot4 = fma(q[t], k_tile[jj * D4 + c4], dot4);
                }
            }
            s_part[(part * BKV + jj) * BQ + qi] = dot4.x + dot4.y + dot4.z + dot4.w;
        }
        workgroupBarrier();
        // Every part sums the four shares and runs the same online softmax for its query.
        let count = min(BKV, len - j0);
        var s: array<f32, 8>;
        var tile_max = -3.0e38;
        for (var jj = 0u; jj < BKV; jj++) {
            var sc = -3.0e38;
            if (jj < count) {
                sc = 0.0;
                for (var pp = 0u; pp < PARTS; pp++) {
                    sc += s_part[(pp * BKV + jj) * BQ + qi];
                }
                tile_max = max(tile_max, sc);
            }
            s[jj] = sc;
        }
        let m_new = max(m, tile_max);
        let correction = exp(m - m_new);
        l *= correction;
        for (var t = 0u; t < P4; t++) {
            acc[t] *= correction;
        }
        for (var jj = 0u; jj < BKV; jj++) {
            if (jj < count) {
                let pj = exp(s[jj] - m_new);
                l += pj;
                for (var t = 0u; t < P4; t++) {
                    let c4 = part * P4 + t;
                    if (c4 < d4) {
                        acc[t] = fma(vec4<f32>(pj), v_tile[jj * D4 + c4], acc[t]);
                    }
                }
            }
        }
        m = m_new;
        workgroupBarrier();
    }

    if (valid) {
        let inv = 1.0 / l;
        for (var t = 0u; t < P4; t++) {
            let c4 = part * P4 + t;
            if (c4 < d4) {
                let a = acc[t] * inv;
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
