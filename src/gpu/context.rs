//! Adapter and device selection, and the error sink that turns wgpu's asynchronous validation
//! and out-of-memory errors into [`Error::Gpu`] instead of a panic.

use crate::error::{Error, Result};
use std::sync::{Arc, Mutex};

/// What `flowmap` prints about the adapter in use.
#[derive(Debug, Clone)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    /// A software rasterizer (lavapipe, SwiftShader, WARP): correct but slow.
    pub is_software: bool,
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = if self.name.is_empty() {
            "unnamed adapter"
        } else {
            &self.name
        };
        write!(f, "{name} ({}, {}", self.backend, self.device_type)?;
        if !self.driver.is_empty() {
            write!(f, ", {}", self.driver)?;
        }
        write!(f, ")")
    }
}

/// The most workgroup memory any kernel declares, in bytes: attention.wgsl's key, value and
/// partial-score tiles (2 × 128 vec4s + 2,048 f32s); conv2d.wgsl's 32 × 128 tile takes 10,752.
/// Under WebGPU's default 16,384; `tests/shaders.rs` holds every kernel to it.
pub const WORKGROUP_MEMORY: u32 = 12_288;

/// What the kernels need of a device, beyond WebGPU's downlevel defaults: 5 storage buffers per
/// stage (conv2d, linear and group norm bind 5), [`WORKGROUP_MEMORY`] bytes of workgroup memory,
/// 256-invocation workgroups. Buffer sizes are taken as large as the adapter allows (the
/// sampler sizes its batches against them).
pub fn needed_limits(adapter: &wgpu::Limits) -> wgpu::Limits {
    wgpu::Limits {
        max_storage_buffers_per_shader_stage: 5,
        max_compute_workgroup_storage_size: WORKGROUP_MEMORY,
        max_compute_invocations_per_workgroup: 256,
        max_compute_workgroup_size_x: 256,
        max_compute_workgroup_size_y: 16,
        max_compute_workgroups_per_dimension: 65535,
        max_storage_buffer_binding_size: adapter.max_storage_buffer_binding_size,
        max_buffer_size: adapter.max_buffer_size,
        ..wgpu::Limits::downlevel_defaults()
    }
}

/// The limits in `needed` that `adapter` falls short of, named with both values.
pub fn missing_limits(needed: &wgpu::Limits, adapter: &wgpu::Limits) -> Vec<String> {
    let mut missing = Vec::new();
    needed.check_limits_with_fail_fn(adapter, false, |name, want, have| {
        missing.push(format!("{name}: needs {want}, the adapter allows {have}"));
    });
    missing
}

/// Where wgpu's asynchronous errors collect until the next check.
pub(crate) type ErrorSink = Arc<Mutex<Vec<Error>>>;

/// A device and queue with the limits this adapter allows.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub limits: wgpu::Limits,
    pub adapter: AdapterSummary,
    /// What the adapter offers (the GPU report lists these); `limits` is what the device was
    /// opened with ([`needed_limits`]).
    pub adapter_limits: wgpu::Limits,
    pub adapter_features: wgpu::Features,
    /// What the device was opened with: `TIMESTAMP_QUERY` where the adapter has it, so kernels
    /// can be timed on the GPU's own clock ([`super::GpuBackend::start_timing`]), and
    /// `SHADER_F16` where it has that.
    pub features: wgpu::Features,
    errors: ErrorSink,
}

impl GpuContext {
    /// Finds an adapter (high-performance preferred) and opens a device with the limits the
    /// kernels need ([`needed_limits`]); an adapter short of them is refused by name.
    /// `allow_software` = false refuses CPU-emulated adapters.
    pub async fn new_async(allow_software: bool) -> Result<Self> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::NoAdapter(e.to_string()))?;
        let info = adapter.get_info();
        let summary = AdapterSummary {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: [info.driver.as_str(), info.driver_info.as_str()]
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect::<Vec<_>>()
                .join(" "),
            is_software: matches!(info.device_type, wgpu::DeviceType::Cpu),
        };
        if summary.is_software && !allow_software {
            return Err(Error::NoAdapter(format!(
                "only a software adapter is available: {summary}"
            )));
        }
        let adapter_limits = adapter.limits();
        let limits = needed_limits(&adapter_limits);
        let missing = missing_limits(&limits, &adapter_limits);
        if !missing.is_empty() {
            return Err(Error::NoAdapter(format!(
                "{summary} cannot run flowmap's kernels: {}",
                missing.join("; ")
            )));
        }
        let adapter_features = adapter.features();
        // Timestamps to time kernels on the GPU's clock; f16 shaders for the f16 storage path
        // (crate::precision), asked for wherever offered, used only when chosen.
        let features =
            adapter_features & (wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SHADER_F16);
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("flowmap"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::NoAdapter(format!("{summary} refused a device: {e}")))?;
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let e = match e {
                wgpu::Error::OutOfMemory { .. } => Error::GpuOutOfMemory(e.to_string()),
                _ => Error::Gpu(e.to_string()),
            };
            if let Ok(mut v) = sink.lock() {
                v.push(e);
            }
        }));
        // A lost device (driver reset, GPU process crash, tab backgrounded too long) is an error
        // at the next check, not silent zeros.
        let sink = errors.clone();
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut v) = sink.lock() {
                v.push(Error::Gpu(format!(
                    "the GPU device was lost ({reason:?}): {message}"
                )));
            }
        });
        Ok(GpuContext {
            device,
            queue,
            limits,
            adapter: summary,
            adapter_limits,
            adapter_features,
            features,
            errors,
        })
    }

    /// Whether the device was opened with `SHADER_F16` (f16 storage is possible).
    pub fn has_f16(&self) -> bool {
        self.features.contains(wgpu::Features::SHADER_F16)
    }

    /// Blocking [`Self::new_async`] for native callers.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new(allow_software: bool) -> Result<Self> {
        pollster::block_on(Self::new_async(allow_software))
    }

    /// Returns the first error wgpu reported since the last check.
    pub fn take_error(&self) -> Result<()> {
        Self::check(&self.errors)
    }

    /// The error sink, for futures that check it after `self` is out of reach.
    pub(crate) fn error_sink(&self) -> ErrorSink {
        self.errors.clone()
    }

    /// Returns (and clears) the first error in `sink`.
    pub(crate) fn check(sink: &ErrorSink) -> Result<()> {
        let mut v = sink
            .lock()
            .map_err(|_| Error::Gpu("error sink poisoned".into()))?;
        let first = v.drain(..).next();
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The largest storage buffer a kernel may bind, in bytes.
    pub fn max_binding_bytes(&self) -> usize {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An adapter with only 4 storage buffers per stage (some GLES drivers) is refused with the
    /// limit named; WebGPU's defaults and lavapipe-like limits are enough.
    #[test]
    fn adapters_short_of_the_kernels_needs_are_named() {
        // wgpu's downlevel defaults allow 4 storage buffers per stage, as such drivers do.
        let gles = wgpu::Limits::downlevel_defaults();
        let missing = missing_limits(&needed_limits(&gles), &gles);
        assert_eq!(
            missing,
            vec!["max_storage_buffers_per_shader_stage: needs 5, the adapter allows 4".to_string()]
        );
        let web = wgpu::Limits::default();
        assert!(missing_limits(&needed_limits(&web), &web).is_empty());
        // Buffer sizes follow the adapter rather than a fixed request.
        assert_eq!(
            needed_limits(&web).max_storage_buffer_binding_size,
            web.max_storage_buffer_binding_size
        );
    }
}
