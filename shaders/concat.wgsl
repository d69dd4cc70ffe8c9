// Channel concatenation of [N, Ca, ...] and [N, Cb, ...]: per sample a_len values of a then
// b_len values of b. One thread per output element. Reference: src/cpu/elementwise.rs.

// Storage type: f32 here; the f16 build of this file (src/gpu/precision.rs) turns the alias
// below into f16 behind `enable f16;`. Loads widen to f32 and all arithmetic is f32.
alias S = f32;

struct Params {
    n: u32, a_len: u32, b_len: u32, _p0: u32,
}

@group(0) @binding(0) var<storage, read> a: array<S>;
@group(0) @binding(1) var<storage, read> b: array<S>;
@group(0) @binding(2) var<storage, read_write> y: array<S>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 256u;
    let row = p.a_len + p.b_len;
    if (idx >= p.n * row) {
        return;
    }
    let n = idx / row;
    let r = idx % row;
    if (r < p.a_len) {
        y[idx] = a[n * p.a_len + r];
    } else {
        y[idx] = b[n * p.b_len + r - p.a_len];
    }
}
