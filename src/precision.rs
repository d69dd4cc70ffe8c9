//! Storage precision (issue 10 §3): f32, or f16 storage with f32 arithmetic.
//!
//! In f16, every tensor a backend holds (weights, activations, the sample being moved) is stored
//! as IEEE binary16, and every op widens its inputs to f32, computes and accumulates in f32 (conv,
//! linear and attention sums, GroupNorm statistics, softmax) and rounds its output to f16 once.
//! The times fed to the sinusoidal embedding stay f32 ([`crate::backend::Backend::upload_times`]).
//! The WGSL kernels do this on GPUs with `SHADER_F16` (`shaders/*.wgsl`, built a second time with
//! `alias S = f16`); the CPU backend emulates it by rounding each op's output
//! ([`crate::cpu::CpuBackend::with_storage`]), which is the f16 kernels' parity reference and what
//! `trainer eval --precision f16` measures the metrics with.

use crate::error::{Error, Result};
use half::f16;

/// How tensors are stored.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    #[default]
    F32,
    /// f16 storage, f32 arithmetic.
    F16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        }
    }

    /// Bytes per stored value.
    pub fn bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::F16 => 2,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the user asked for (`--precision`, the page's picker).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum PrecisionChoice {
    /// f16 where a hardware GPU adapter offers `SHADER_F16`, f32 everywhere else (software
    /// adapters and the CPU backend, where f16 storage saves nothing).
    #[default]
    Auto,
    F32,
    F16,
}

impl PrecisionChoice {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(PrecisionChoice::Auto),
            "f32" => Ok(PrecisionChoice::F32),
            "f16" => Ok(PrecisionChoice::F16),
            _ => Err(Error::Argument(format!(
                "unknown precision `{s}` (auto, f32, f16)"
            ))),
        }
    }

    /// The precision for a GPU adapter: `has_f16` is whether the device was opened with
    /// `SHADER_F16`, `software` whether it is a CPU-emulated adapter. An explicit `f16` on a
    /// device without the feature is an error naming the device (`what`), not a silent f32.
    pub fn for_gpu(self, has_f16: bool, software: bool, what: &str) -> Result<Precision> {
        match self {
            PrecisionChoice::F32 => Ok(Precision::F32),
            PrecisionChoice::Auto if has_f16 && !software => Ok(Precision::F16),
            PrecisionChoice::Auto => Ok(Precision::F32),
            PrecisionChoice::F16 if has_f16 => Ok(Precision::F16),
            PrecisionChoice::F16 => Err(f16_unsupported(what)),
        }
    }

    /// The precision for the CPU backend: `auto` is f32; an explicit `f16` emulates f16 storage
    /// (slower, for measuring what f16 does to the samples).
    pub fn for_cpu(self) -> Precision {
        match self {
            PrecisionChoice::F16 => Precision::F16,
            _ => Precision::F32,
        }
    }
}

/// The refusal of f16 storage on a device (`what`) without f16 shaders.
pub fn f16_unsupported(what: &str) -> Error {
    Error::Unsupported(format!(
        "{what} does not offer f16 shaders (SHADER_F16 / shader-f16); use --precision f32 or auto"
    ))
}

/// `v` rounded to the nearest f16 (ties to even) and widened back: what storing it in f16 keeps.
/// Values past f16's range become ±∞, as on a GPU.
pub fn round_f16(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// Rounds every value to f16 in place.
pub fn round_slice_f16(v: &mut [f32]) {
    for x in v {
        *x = round_f16(*x);
    }
}

/// Little-endian f16 bytes of `data`, padded with zeros to a multiple of 4 bytes (wgpu's copy
/// alignment).
pub fn f16_bytes(data: &[f32]) -> Vec<u8> {
    let mut out: Vec<u8> = data
        .iter()
        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
        .collect();
    out.resize(out.len().div_ceil(4).max(1) * 4, 0);
    out
}

/// The first `n` f16 values of little-endian `bytes`, widened to f32.
pub fn from_f16_bytes(bytes: &[u8], n: usize) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .take(n)
        .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_resolve_per_device() {
        use PrecisionChoice::*;
        assert_eq!(Auto.for_gpu(true, false, "gpu").unwrap(), Precision::F16);
        assert_eq!(
            Auto.for_gpu(true, true, "lavapipe").unwrap(),
            Precision::F32
        );
        assert_eq!(Auto.for_gpu(false, false, "gpu").unwrap(), Precision::F32);
        assert_eq!(F32.for_gpu(true, false, "gpu").unwrap(), Precision::F32);
        assert_eq!(F16.for_gpu(true, true, "lavapipe").unwrap(), Precision::F16);
        let e = F16.for_gpu(false, false, "SwiftShader").unwrap_err();
        assert!(
            e.to_string().contains("SwiftShader does not offer f16"),
            "{e}"
        );
        assert_eq!(Auto.for_cpu(), Precision::F32);
        assert_eq!(F16.for_cpu(), Precision::F16);
        assert_eq!(PrecisionChoice::parse("f16").unwrap(), F16);
        assert!(PrecisionChoice::parse("bf16")
            .unwrap_err()
            .to_string()
            .contains("auto, f32, f16"));
    }

    #[test]
    fn f16_bytes_round_trip_and_pad() {
        let v = [1.0, -2.5, 65504.0, 1.0e-3, 70000.0];
        let b = f16_bytes(&v);
        assert_eq!(b.len(), 12, "5 halves = 10 bytes, padded to 12");
        let back = from_f16_bytes(&b, 5);
        assert_eq!(&back[..3], &[1.0, -2.5, 65504.0]);
        // 1e-3 is not a half: the nearest one is 0.0010004.
        assert!((back[3] - 1.0e-3).abs() < 5.0e-7 && back[3] != 1.0e-3);
        assert_eq!(back[4], f32::INFINITY);
        assert_eq!(round_f16(back[3]), back[3], "rounding is idempotent");
        // 2049 lies halfway between the halves 2048 and 2050: ties go to even (2048).
        assert_eq!(round_f16(2049.0), 2048.0);
        assert_eq!(round_f16(2051.0), 2052.0);
    }
}
