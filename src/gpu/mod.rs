//! The wgpu backend: hand-written WGSL kernels (`shaders/`), buffers that stay on the GPU
//! between ops and steps, one readback at the end. Ops are recorded into one command encoder and
//! submitted on `sync`/`download`, so a forward pass is a single submission.

mod context;
mod kernels;
mod pool;
mod tiles;
pub mod tune;
mod uniforms;

pub use context::{AdapterSummary, GpuContext, WORKGROUP_MEMORY};
pub use kernels::{
    bindings_of, shader_source, GpuBackend, GpuTensor, GpuTimes, ShaderChecks, GEMV_ROWS,
};
pub use tiles::{
    direct, kernel_source, ConvKernel, ConvShape, ConvTile, ConvTiles, DirectTile, MIN_NARROW_GRID,
};
pub use tune::Tuning;

/// Every WGSL source, by file name (for validation tests and pipeline creation).
pub const SHADERS: &[(&str, &str)] = &[
    (
        "attention.wgsl",
        include_str!("../../shaders/attention.wgsl"),
    ),
    ("concat.wgsl", include_str!("../../shaders/concat.wgsl")),
    ("conv2d.wgsl", include_str!("../../shaders/conv2d.wgsl")),
    ("conv3x3.wgsl", include_str!("../../shaders/conv3x3.wgsl")),
    (
        "elementwise.wgsl",
        include_str!("../../shaders/elementwise.wgsl"),
    ),
    (
        "embedding.wgsl",
        include_str!("../../shaders/embedding.wgsl"),
    ),
    (
        "group_norm.wgsl",
        include_str!("../../shaders/group_norm.wgsl"),
    ),
    ("linear.wgsl", include_str!("../../shaders/linear.wgsl")),
    ("upsample.wgsl", include_str!("../../shaders/upsample.wgsl")),
];
