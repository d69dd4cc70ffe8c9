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

/// A device and queue with the limits this adapter allows.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub limits: wgpu::Limits,
    pub adapter: AdapterSummary,
    errors: Arc<Mutex<Vec<String>>>,
}

impl GpuContext {
    /// Finds an adapter (high-performance preferred) and opens a device with its full limits.
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
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("flowmap"),
                required_features: wgpu::Features::empty(),
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
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        Ok(GpuContext {
            device,
            queue,
            limits,
            adapter: summary,
            errors,
        })
    }

    /// Blocking [`Self::new_async`] for native callers.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new(allow_software: bool) -> Result<Self> {
        pollster::block_on(Self::new_async(allow_software))
    }

    /// Returns the first error wgpu reported since the last check.
    pub fn take_error(&self) -> Result<()> {
        let mut v = self
            .errors
            .lock()
            .map_err(|_| Error::Gpu("error sink poisoned".into()))?;
        let first = v.drain(..).next();
        match first {
            Some(e) => Err(Error::Gpu(e)),
            None => Ok(()),
        }
    }

    /// The largest storage buffer a kernel may bind, in f32 elements.
    pub fn max_binding_elems(&self) -> usize {
        let bytes = self
            .limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size);
        (bytes / 4) as usize
    }
}
