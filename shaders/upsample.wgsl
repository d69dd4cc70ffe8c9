// Nearest-neighbour ×2 upsampling of [N, C, H, W]: one thread per output element.
// Reference: src/cpu/elementwise.rs.

// Storage type: f32 here; the f16 build of this file (src/gpu/precision.rs) turns the alias
// below into f16 behind `enable f16;`. Loads widen to f32 and all arithmetic is f32.
alias S = f32;

struct Params {
    planes: u32, h: u32, w: u32, _p0: u32,
}

@group(0) @binding(0) var<storage, read> x: array<S>;
@group(0) @binding(1) var<storage, read_write> y: array<S>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 256u;
    let w2 = 2u * p.w;
    let plane2 = 4u * p.h * p.w;
    if (idx >= p.planes * plane2) {
        return;
    }
    let plane = idx / plane2;
    let r = idx % plane2;
    let oy = r / w2;
    let ox = r % w2;
    y[idx] = x[(plane * p.h + oy / 2u) * p.w + ox / 2u];
}
