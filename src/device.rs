//! Choosing where to run: `auto` takes a hardware GPU adapter when there is one and otherwise the
//! CPU backend (a software adapter such as lavapipe is slower than the CPU backend, so `auto`
//! passes it over); `gpu` takes any adapter, software included; `cpu` the CPU backend.

use crate::cpu::CpuBackend;
use crate::error::{Error, Result};
use crate::gpu::GpuBackend;
#[cfg(not(target_arch = "wasm32"))]
use crate::gpu::GpuContext;

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
                "CPU backend, {} kernels ({} threads)",
                match b.kernels {
                    crate::cpu::CpuKernels::Fast => "fast",
                    crate::cpu::CpuKernels::Reference => "reference",
                },
                rayon::current_num_threads()
            ),
            Engine::Gpu(g) => format!("GPU {}", g.context().adapter),
        }
    }
}

/// Opens the chosen device. The second value is a notice for the user when `auto` fell back.
#[cfg(not(target_arch = "wasm32"))]
pub fn open(choice: DeviceChoice) -> Result<(Engine, Option<String>)> {
    match choice {
        DeviceChoice::Cpu => Ok((Engine::Cpu(CpuBackend::FAST), None)),
        DeviceChoice::Gpu => Ok((
            Engine::Gpu(Box::new(GpuBackend::new(GpuContext::new(true)?))),
            None,
        )),
        DeviceChoice::Auto => match GpuContext::new(false) {
            Ok(ctx) => Ok((Engine::Gpu(Box::new(GpuBackend::new(ctx))), None)),
            Err(e) => Ok((
                Engine::Cpu(CpuBackend::FAST),
                Some(format!(
                    "notice: using the CPU backend: {e} (force a GPU adapter with --device gpu)"
                )),
            )),
        },
    }
}
