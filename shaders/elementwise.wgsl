// Elementwise ops, each entry point one thread per element:
// - add:       y = a + b
// - activate:  y = act(a)              (act: 0 none, 1 SiLU, 2 ReLU, 3 GELU)
// - flow_step: y = a + dt · b          (the flow-map jump x + (t − s) v, METHOD §3)
// Reference: src/cpu/elementwise.rs.

// Storage type: f32 here; the f16 build of this file (src/gpu/precision.rs) turns the alias
// below into f16 behind `enable f16;`. Loads widen to f32 and all arithmetic is f32.
alias S = f32;

struct Params {
    n: u32, act: u32, dt: f32, _p0: u32,
}

@group(0) @binding(0) var<storage, read> a: array<S>;
@group(0) @binding(1) var<storage, read> b: array<S>;
@group(0) @binding(2) var<storage, read_write> y: array<S>;
@group(0) @binding(3) var<uniform> p: Params;

fn erf_approx(v: f32) -> f32 {
    // Abramowitz & Stegun 7.1.26, |error| < 1.5e-7.
    let s = sign(v);
    let x = abs(v);
    let t = 1.0 / (1.0 + 0.3275911 * x);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    return s * (1.0 - poly * exp(-x * x));
}

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256, 1, 1)
fn add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i < p.n) {
        y[i] = S(f32(a[i]) + f32(b[i]));
    }
}

@compute @workgroup_size(256, 1, 1)
fn flow_step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i < p.n) {
        y[i] = S(fma(p.dt, f32(b[i]), f32(a[i])));
    }
}

@compute @workgroup_size(256, 1, 1)
fn activate(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.n) {
        return;
    }
    let v = f32(a[i]);
    var r = v;
    switch p.act {
        case 1u: { r = v / (1.0 + exp(-v)); }
        case 2u: { r = max(v, 0.0); }
        case 3u: { r = 0.5 * v * (1.0 + erf_approx(v * 0.70710678118654752)); }
        default: { }
    }
    y[i] = S(r);
}
