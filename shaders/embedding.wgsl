// Sinusoidal time embedding [N] → [N, 2·half] = [cos(ω_i τ) | sin(ω_i τ)], τ = time_scale · t,
// ω_i = max_period^(−i/half) (METHOD §3). The frequencies come from the host (GPU exp/log are
// too coarse once multiplied by τ). sin and cos are computed here, not by the built-ins: WGSL
// only promises 2^-11 absolute error for those (SwiftShader is off by 2e-4), while the reduction
// to [−π/4, π/4] and the Taylor polynomials below are accurate to ~1e-7 on every GPU.
// Reference: src/cpu/elementwise.rs.

// Storage type: f32 here; the f16 build of this file (src/gpu/precision.rs) turns the alias
// below into f16 behind `enable f16;`. Loads widen to f32 and all arithmetic is f32.
alias S = f32;
// The times and frequencies stay f32 in both builds: f16's 11 bits would move the phase
// time_scale · t · ω by up to ~0.01 rad at the default time_scale of 100.

struct Params {
    n: u32, half: u32, max_period: f32, time_scale: f32,
}

@group(0) @binding(0) var<storage, read> times: array<f32>;
@group(0) @binding(1) var<storage, read> freqs: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<S>;
@group(0) @binding(3) var<uniform> p: Params;

const TAU: f32 = 6.283185307179586;

const HALF_PI: f32 = 1.5707963267948966;

// (sin r, cos r) for r in [−π, π]: quadrant reduction, then degree-9/8 Taylor polynomials on
// [−π/4, π/4] (truncation error below 3e-8).
fn sincos(r: f32) -> vec2<f32> {
    let q = round(r / HALF_PI);
    let y = r - q * HALF_PI;
    let y2 = y * y;
    let s = y * (1.0 + y2 * (-1.0 / 6.0 + y2 * (1.0 / 120.0 + y2 * (-1.0 / 5040.0 + y2 * (1.0 / 362880.0)))));
    let c = 1.0 + y2 * (-0.5 + y2 * (1.0 / 24.0 + y2 * (-1.0 / 720.0 + y2 * (1.0 / 40320.0))));
    let k = (i32(q) % 4 + 4) % 4;
    switch k {
        case 1: { return vec2<f32>(c, -s); }
        case 2: { return vec2<f32>(-s, -c); }
        case 3: { return vec2<f32>(-c, s); }
        default: { return vec2<f32>(s, c); }
    }
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    if (idx >= p.n * p.half) {
        return;
    }
    let row = idx / p.half;
    let i = idx % p.half;
    let turns = times[row] * p.time_scale * freqs[i] * (1.0 / TAU);
    let r = (turns - round(turns)) * TAU;
    let sc = sincos(r);
    out[row * 2u * p.half + i] = S(sc.y);
    out[row * 2u * p.half + p.half + i] = S(sc.x);
}
