// GroupNorm over (C/groups, H, W), affine, then the optional time scale-shift
// y·(1 + scale[m, c]) + shift[m, c] with m = n / mod_repeat (a modulation [M, 2C] whose rows
// each serve mod_repeat consecutive samples; 0: none) and SiLU. One 256-thread workgroup per
// (sample, group): a tree reduction for the mean, a second for the centred variance (more
// stable than E[x²] − E[x]²), then the normalised write. Reference: src/cpu/norm.rs.

// Storage type: f32 here; the f16 build of this file (src/gpu/precision.rs) turns the alias
// below into f16 behind `enable f16;`. Loads widen to f32 and all arithmetic is f32.
alias S = f32;

struct Params {
    batch: u32, channels: u32, hw: u32, groups: u32,
    mod_repeat: u32, silu: u32, eps: f32, _p0: u32,
}

@group(0) @binding(0) var<storage, read> x: array<S>;
@group(0) @binding(1) var<storage, read> gamma: array<S>;
@group(0) @binding(2) var<storage, read> beta: array<S>;
@group(0) @binding(3) var<storage, read> modulation: array<S>;
@group(0) @binding(4) var<storage, read_write> y: array<S>;
@group(0) @binding(5) var<uniform> p: Params;

const WG: u32 = 256u;
var<workgroup> partial: array<f32, 256>;

fn reduce_sum(lane: u32, v: f32) -> f32 {
    partial[lane] = v;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (lane < stride) {
            partial[lane] += partial[lane + stride];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let item = wid.x + wid.y * nwg.x;
    if (item >= p.batch * p.groups) {
        return;
    }
    let lane = lid.x;
    let n = item / p.groups;
    let g = item % p.groups;
    let cpg = p.channels / p.groups;
    let len = cpg * p.hw;
    let base = (n * p.channels + g * cpg) * p.hw;

    var s = 0.0;
    for (var i = lane; i < len; i += WG) {
        s += f32(x[base + i]);
    }
    let mean = reduce_sum(lane, s) / f32(len);
    var q = 0.0;
    for (var i = lane; i < len; i += WG) {
        let d = f32(x[base + i]) - mean;
        q += d * d;
    }
    let rstd = inverseSqrt(reduce_sum(lane, q) / f32(len) + p.eps);

    for (var i = lane; i < len; i += WG) {
        let c = g * cpg + i / p.hw;
        var v = (f32(x[base + i]) - mean) * rstd * f32(gamma[c]) + f32(beta[c]);
        if (p.mod_repeat != 0u) {
            let row = (n / p.mod_repeat) * 2u * p.channels;
            v = v * (1.0 + f32(modulation[row + c])) + f32(modulation[row + p.channels + c]);
        }
        if (p.silu != 0u) {
            v = v / (1.0 + exp(-v));
        }
        y[base + i] = S(v);
    }
}
