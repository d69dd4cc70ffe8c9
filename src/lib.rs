//! flowmap: few-step sampling with learned two-time flow maps X_{s,t}(x) = x + (t − s) v(s, t, x)
//! (docs: ../shared/docs/METHOD.md, README.md). One network, written once against a small op set,
//! runs on hand-written WGSL kernels through wgpu or on a plain-Rust CPU backend.

pub mod backend;
pub mod clock;
pub mod config;
pub mod cpu;
pub mod error;
pub mod net;
pub mod shape;

pub use error::{Error, Result};
#[cfg(not(target_arch = "wasm32"))]
pub mod alloc;
#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
pub mod device;
pub mod gpu;
#[cfg(not(target_arch = "wasm32"))]
pub mod models;
pub mod output;
#[cfg(not(target_arch = "wasm32"))]
pub mod parity;
pub mod precision;
pub mod rng;
pub mod sampler;
pub mod tolerance;
#[cfg(target_arch = "wasm32")]
pub mod web;
pub mod weights;
