// Sinusoidal time embedding [N] → [N, 2·half] = [cos(ω_i τ) | sin(ω_i τ)], τ = time_scale · t,
// ω_i = max_period^(−i/half) (METHOD §3). The angle is reduced to [−π, π] first: GPU sin/cos are
// only accurate there and τ reaches 1000. Reference: src/cpu/elementwise.rs.

struct Params {
    n: u32, half: u32, max_period: f32, time_scale: f32,
}

@group(0) @binding(0) var<storage, read> times: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

const TAU: f32 = 6.283185307179586;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    if (idx >= p.n * p.half) {
        return;
    }
    let row = idx / p.half;
    let i = idx % p.half;
    let freq = exp(-log(p.max_period) * f32(i) / f32(p.half));
    let turns = times[row] * p.time_scale * freq * (1.0 / TAU);
    let r = (turns - round(turns)) * TAU;
    out[row * 2u * p.half + i] = cos(r);
    out[row * 2u * p.half + p.half + i] = sin(r);
}
