//! Choosing where to run: `auto` takes a hardware GPU adapter when there is one and otherwise the
//! CPU backend (a software adapter such as lavapipe is slower than the CPU backend, so `auto`
//! passes it over); `gpu` takes any adapter, software included; `cpu` the CPU backend.

use crate::cpu::CpuBackend;
use crate::error::{Error, Result};
use crate::gpu::GpuBackend;
#[cfg(not(target_arch = "wasm32"))]
use crate::gpu::GpuContext;
use crate::precision::Precision;
#[cfg(not(target_arch = "wasm32"))]
use crate::precision::PrecisionChoice;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Gpu,
    Cpu,
}

impl DeviceChoice {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "gpu" => Ok(DeviceChoice::Gpu),
            "cpu" => Ok(DeviceChoice::Cpu),
            _ => Err(Error::Argument(format!(
                "unknown device `{s}` (auto, gpu, cpu)"
            ))),
        }
    }
}

/// An opened backend.
pub enum Engine {
    Cpu(CpuBackend),
    Gpu(Box<GpuBackend>),
}

impl Engine {
    /// A one-line description of the device in use.
    pub fn describe(&self) -> String {
        match self {
            Engine::Cpu(b) => format!(
                "CPU backend, {} kernels ({} threads){}",
                match b.kernels {
                    crate::cpu::CpuKernels::Fast => "fast",
                    crate::cpu::CpuKernels::Reference => "reference",
                },
                rayon::current_num_threads(),
                match b.storage {
                    Precision::F32 => "",
                    Precision::F16 => ", f16 storage emulated",
                }
            ),
            Engine::Gpu(g) => format!("GPU {}, {} storage", g.context().adapter, g.precision()),
        }
    }

    /// How tensors are stored.
    pub fn precision(&self) -> Precision {
        match self {
            Engine::Cpu(b) => b.storage,
            Engine::Gpu(g) => g.precision(),
        }
    }
}

/// A GPU backend on `ctx` in the precision `precision` resolves to there.
#[cfg(not(target_arch = "wasm32"))]
fn gpu_engine(ctx: GpuContext, precision: PrecisionChoice) -> Result<Engine> {
    Ok(Engine::Gpu(Box::new(GpuBackend::with_choice(
        ctx, precision,
    )?)))
}

/// Opens the chosen device with tensors stored as `precision` resolves there
/// ([`PrecisionChoice::for_gpu`], [`PrecisionChoice::for_cpu`]). The second value is a notice
/// for the user when `auto` fell back.
#[cfg(not(target_arch = "wasm32"))]
pub fn open(choice: DeviceChoice, precision: PrecisionChoice) -> Result<(Engine, Option<String>)> {
    let cpu = CpuBackend::FAST.with_storage(precision.for_cpu());
    match choice {
        DeviceChoice::Cpu => Ok((Engine::Cpu(cpu), None)),
        DeviceChoice::Gpu => Ok((gpu_engine(GpuContext::new(true)?, precision)?, None)),
        DeviceChoice::Auto => match GpuContext::new(false) {
            Ok(ctx) => Ok((gpu_engine(ctx, precision)?, None)),
            Err(e) => Ok((
                Engine::Cpu(cpu),
                Some(format!(
                    "notice: using the CPU backend: {e} (force a GPU adapter with --device gpu)"
                )),
            )),
        },
    }
}
