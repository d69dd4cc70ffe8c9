//! [`Backend`] on wgpu: one function per op that fills the kernel's parameter block and
//! dispatches its WGSL entry point (`shaders/<op>.wgsl`, documented there).

use super::context::GpuContext;
use super::pool::{self, Pool, PooledBuffer};
use super::tiles::{kernel_source, ConvKernel, ConvShape, ConvTile, ConvTiles, DirectTile};
use super::uniforms::Uniforms;
use crate::backend::{conv2d_out_shape, Backend, Conv2d, Shaped};
use crate::config::Activation;
use crate::error::{Error, Result};
use crate::precision::{self, Precision, PrecisionChoice};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use wgpu::util::DeviceExt;

/// A tensor resident on the GPU.
#[derive(Clone)]
pub struct GpuTensor {
    buf: Rc<PooledBuffer>,
    shape: Vec<usize>,
    /// How its values are stored: the backend's precision, but f32 for times
    /// ([`Backend::upload_times`]) and the embedding's frequency tables.
    dtype: Precision,
}

impl Shaped for GpuTensor {
    fn shape(&self) -> &[usize] {
        &self.shape
    }
}

impl GpuTensor {
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buf.buffer()
    }

    /// How the values are stored.
    pub fn dtype(&self) -> Precision {
        self.dtype
    }
}

/// The WGSL source of a kernel file for a storage precision: as written for f32; for f16 the
/// file's `alias S = f32;` (its first declaration, so `enable` may precede it) becomes
/// `enable f16; alias S = f16;`, which turns every storage array of `S` into f16 while the
/// arithmetic stays f32 (the files widen each load and narrow each store).
pub fn shader_source(source: &str, precision: Precision) -> Cow<'_, str> {
    match precision {
        Precision::F32 => Cow::Borrowed(source),
        Precision::F16 => {
            debug_assert_eq!(source.matches("alias S = f32;").count(), 1);
            Cow::Owned(source.replacen("alias S = f32;", "enable f16;\nalias S = f16;", 1))
        }
    }
}

/// A compute pipeline, the bind group layout of its file and the file's storage binding count.
#[derive(Clone)]
struct Pipeline {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    /// Bindings 0..storage are storage buffers; binding `storage` is the parameter block.
    storage: u32,
}

/// The bindings of a kernel file, read from its declarations: storage buffers (`true` where
/// read-write) and the index of the `var<uniform>` parameter block. Every file declares its
/// storage buffers at bindings 0, 1, … and its parameters right after (tests/shaders.rs).
pub fn bindings_of(source: &str) -> (Vec<bool>, u32) {
    let mut storage = Vec::new();
    let mut uniform = None;
    for line in source.lines().map(str::trim_start) {
        if !line.starts_with("@group(0) @binding(") {
            continue;
        }
        if line.contains("var<storage, read_write>") {
            storage.push(true);
        } else if line.contains("var<storage, read>") {
            storage.push(false);
        } else if line.contains("var<uniform>") {
            uniform = Some(storage.len() as u32);
        }
    }
    (
        storage,
        uniform.expect("every kernel file declares a Params uniform"),
    )
}

/// A bind group as the cache finds it again: the file, the storage buffers in binding order,
/// and the parameter ring's buffer and block size (the block's offset is dynamic).
#[derive(PartialEq, Eq, Hash)]
struct BindKey {
    shader: &'static str,
    buffers: Vec<wgpu::Buffer>,
    uniform: wgpu::Buffer,
    size: u64,
}

/// The most bind groups kept; past it the cache starts again (a forward makes ~100).
const MAX_BIND_GROUPS: usize = 4096;

/// A time tensor by its values' bits and its shape.
type TimesKey = (Vec<u32>, Vec<usize>);

/// The most time tensors kept ([`GpuBackend::upload_times`]): two per jump of the grids in use.
const MAX_TIME_TENSORS: usize = 256;

/// A kernel parameter: the WGSL `Params` structs hold only 32-bit scalars.
enum P {
    U(u32),
    F(f32),
}

fn param_bytes(ps: &[P]) -> Vec<u8> {
    let mut out: Vec<u8> = ps
        .iter()
        .flat_map(|p| match p {
            P::U(v) => v.to_le_bytes(),
            P::F(v) => v.to_le_bytes(),
        })
        .collect();
    // Uniform blocks are sized in multiples of 16 bytes.
    out.resize(out.len().div_ceil(16) * 16, 0);
    out
}

fn u(v: usize) -> P {
    P::U(u32::try_from(v).expect("kernel sizes fit in u32; the sampler splits larger batches"))
}

/// Rows up to which linear.wgsl's `gemv` entry runs a product (its `GEMV_ROWS`).
pub const GEMV_ROWS: usize = 4;

/// The kernels' `mod_repeat` parameter for a modulation over a batch of `n` with `channels`
/// per row: 0 without one, else the samples each of its rows serves
/// ([`crate::backend::modulation_repeat`]).
fn mod_repeat(n: usize, channels: usize, modulation: Option<&GpuTensor>) -> usize {
    modulation.map_or(0, |m| {
        crate::backend::modulation_repeat(n, channels, m.shape.iter().product())
    })
}

pub struct GpuBackend {
    ctx: GpuContext,
    precision: Precision,
    pool: Pool,
    modules: RefCell<HashMap<&'static str, wgpu::ShaderModule>>,
    /// Each pipeline with its file's bind group layout.
    pipelines: RefCell<HashMap<(&'static str, &'static str), Pipeline>>,
    /// Each file's bind group layout and pipeline layout (explicit, for the dynamic offset of
    /// the parameter block), shared by its entry points.
    layouts: RefCell<HashMap<&'static str, (wgpu::BindGroupLayout, wgpu::PipelineLayout, u32)>>,
    /// Bind groups by what they bind: the pool hands the same buffers back pass after pass, so
    /// a forward's bind groups are made once, not per dispatch (issue 10 §5). Cleared whenever
    /// the pool frees a buffer, so no freed buffer is kept alive here ([`pool::PoolState::freed`]).
    bind_groups: RefCell<(u64, HashMap<BindKey, wgpu::BindGroup>)>,
    /// The compute pass consecutive untimed dispatches share; ended before anything else is
    /// recorded into the encoder (copies, query resolves) and before it is finished.
    pass: RefCell<Option<wgpu::ComputePass<'static>>>,
    uniforms: RefCell<Uniforms>,
    /// The embedding's frequency tables, uploaded once per (half dimension, max period).
    freqs: RefCell<HashMap<(usize, u32), GpuTensor>>,
    /// Time tensors by their values: a sampling run's chunks, and every run at the same K, feed
    /// the embedding the same times, so they are uploaded once (and their bind groups found
    /// again) instead of as fresh buffers per forward, which also piled up in the pool.
    times: RefCell<HashMap<TimesKey, GpuTensor>>,
    encoder: RefCell<Option<wgpu::CommandEncoder>>,
    /// Bound where an optional input (residual, modulation) is absent.
    dummy: wgpu::Buffer,
    /// GPU timestamps around every dispatch while timing is on ([`Self::start_timing`]).
    timer: RefCell<Option<Timer>>,
    /// Dispatches recorded so far ([`Self::dispatch_count`]).
    dispatches: std::cell::Cell<u64>,
    /// How conv2d picks its tile ([`Self::set_conv_tiles`]).
    conv_tiles: std::cell::Cell<ConvTiles>,
    /// Kernels measured fastest on this adapter, by convolution ([`Self::use_tuning`]);
    /// consulted before [`ConvKernel::for_layer`]'s rule when `conv_tiles` is `ByLayer`.
    pub(super) tuned: RefCell<HashMap<ConvShape, ConvKernel>>,
    /// What wgpu checks at run time in the kernels ([`Self::with_shader_checks`]).
    checks: ShaderChecks,
}

/// What wgpu adds to the kernels to check them at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ShaderChecks {
    /// wgpu's default (`ShaderRuntimeChecks::checked`): bounds checks, integer-division
    /// checks, and a 64-bit counter in every loop that breaks out after 2^64 iterations
    /// ("loop bounding"), so that a driver may not treat an infinite loop as unreachable.
    /// The counter is an exit the driver's compiler cannot see through, which can keep it from
    /// unrolling constant-trip loops (gfx-rs/wgpu#7698 reports 0.1 → 10 ms for a compute
    /// pipeline): the FMA loops of the convolutions, the matmul and attention are such loops.
    Wgpu,
    /// Bounds and integer-division checks, no loop counter: every loop of these shaders is
    /// finite (see the SAFETY note where modules are made). The default; the GPU report times
    /// the forward with [`ShaderChecks::Wgpu`] beside it. Browsers compile WGSL themselves and
    /// ignore both.
    #[default]
    NoLoopBounding,
}

/// The most dispatches one timing window records (two timestamps each; wgpu caps a query set at
/// 4,096 queries). Dispatches past it run untimed and are counted in [`GpuTimes::untimed`].
const MAX_TIMED_DISPATCHES: u32 = 2048;

struct Timer {
    queries: wgpu::QuerySet,
    /// The shader of each timed dispatch, in order.
    labels: Vec<&'static str>,
    untimed: usize,
}

/// What one timing window measured on the GPU's clock.
#[derive(Debug, Clone, Default)]
pub struct GpuTimes {
    /// Each timed dispatch: its shader file and the time from its pass's start to its end.
    pub dispatches: Vec<(&'static str, f64)>,
    /// From the first timed pass's start to the last one's end, in seconds: the GPU time of the
    /// window, gaps between passes included.
    pub span: f64,
    /// Dispatches that ran past [`MAX_TIMED_DISPATCHES`].
    pub untimed: usize,
}

impl GpuBackend {
    /// A backend storing tensors in f32.
    pub fn new(ctx: GpuContext) -> Self {
        Self::build(ctx, Precision::F32)
    }

    /// A backend storing tensors in `precision`; f16 needs a device opened with `SHADER_F16`
    /// ([`GpuContext::has_f16`]), and is refused by name otherwise.
    pub fn with_precision(ctx: GpuContext, precision: Precision) -> Result<Self> {
        if precision == Precision::F16 && !ctx.has_f16() {
            return Err(precision::f16_unsupported(&ctx.adapter.to_string()));
        }
        Ok(Self::build(ctx, precision))
    }

    /// A backend storing tensors as the user's `choice` resolves on this device
    /// ([`PrecisionChoice::for_gpu`]): what the CLI and the page open.
    pub fn with_choice(ctx: GpuContext, choice: PrecisionChoice) -> Result<Self> {
        let p = choice.for_gpu(
            ctx.has_f16(),
            ctx.adapter.is_software,
            &ctx.adapter.to_string(),
        )?;
        Ok(Self::build(ctx, p))
    }

    /// How this backend stores tensors.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The largest batch one pass of `meta`'s network takes here: every buffer within the
    /// binding limit and the pass's activations within [`crate::sampler::GPU_PASS_BYTES`], both
    /// counted at this precision's bytes per value.
    pub fn max_batch(&self, meta: &crate::config::ModelMeta) -> Result<usize> {
        let bytes = self.precision.bytes();
        crate::sampler::max_gpu_batch(
            meta,
            self.ctx.max_binding_bytes() / bytes,
            crate::sampler::GPU_PASS_BYTES,
            bytes,
        )
    }

    fn build(ctx: GpuContext, precision: Precision) -> Self {
        let align = ctx.limits.min_uniform_buffer_offset_alignment;
        let dummy = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("flowmap dummy"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        GpuBackend {
            ctx,
            precision,
            pool: Pool::default(),
            modules: RefCell::default(),
            pipelines: RefCell::default(),
            layouts: RefCell::default(),
            bind_groups: RefCell::default(),
            pass: RefCell::default(),
            uniforms: RefCell::new(Uniforms::new(align)),
            freqs: RefCell::default(),
            times: RefCell::default(),
            encoder: RefCell::default(),
            dummy,
            timer: RefCell::default(),
            dispatches: std::cell::Cell::new(0),
            conv_tiles: std::cell::Cell::default(),
            tuned: RefCell::default(),
            checks: ShaderChecks::default(),
        }
    }

    /// This backend with `checks` in its kernels (made on first use, so before any op runs).
    pub fn with_shader_checks(mut self, checks: ShaderChecks) -> Self {
        self.checks = checks;
        self.modules.get_mut().clear();
        self.pipelines.get_mut().clear();
        self
    }

    /// What wgpu checks at run time in this backend's kernels.
    pub fn shader_checks(&self) -> ShaderChecks {
        self.checks
    }

    /// How conv2d picks its kernel and tile: by layer (the default, [`ConvKernel::for_layer`]),
    /// conv2d.wgsl alone, conv3x3.wgsl wherever it applies, or always one tile; the GPU report
    /// times the choices against each other.
    pub fn set_conv_tiles(&self, tiles: ConvTiles) {
        self.conv_tiles.set(tiles);
    }

    /// [`Backend::conv2d`] with `kernel`, whatever the rule or a tuning would pick: how a tuner
    /// times each candidate ([`super::tune`]). `kernel` must apply ([`ConvKernel::applies`]).
    pub fn conv2d_with(
        &self,
        kernel: ConvKernel,
        x: &GpuTensor,
        w: &GpuTensor,
        bias: &GpuTensor,
        geom: Conv2d,
        residual: Option<&GpuTensor>,
    ) -> GpuTensor {
        let out_shape = conv2d_out_shape(&x.shape, &w.shape, geom);
        debug_assert!(kernel.applies(w.shape[2], geom, [out_shape[0], out_shape[2], out_shape[3]]));
        let y = self.alloc(&out_shape);
        let npix = out_shape[0] * out_shape[2] * out_shape[3];
        let (tiles_n, total) = kernel.grid(w.shape[0], npix);
        let res = residual.map(|r| r.buffer()).unwrap_or(&self.dummy);
        let params = [
            u(x.shape[0]),
            u(x.shape[1]),
            u(x.shape[2]),
            u(x.shape[3]),
            u(w.shape[0]),
            u(out_shape[2]),
            u(out_shape[3]),
            u(w.shape[2]),
            u(geom.stride),
            u(geom.padding),
            u(residual.is_some() as usize),
            u(tiles_n),
            u(total),
            u(geom.upsample as usize),
        ];
        let bufs = [
            (0, x.buffer()),
            (1, w.buffer()),
            (2, bias.buffer()),
            (3, res),
            (4, y.buffer()),
        ];
        self.dispatch(kernel.shader(), "main", &bufs, &params, total);
        y
    }

    /// Bytes of free buffers the pool holds for reuse.
    pub fn pooled_bytes(&self) -> u64 {
        self.pool.borrow().bytes()
    }

    /// The most bytes of free buffers the pool keeps (default `sampler::GPU_PASS_BYTES`).
    pub fn set_pool_cap(&self, bytes: u64) {
        self.pool.borrow_mut().set_cap(bytes);
    }

    /// Bind groups the cache holds now.
    pub fn cached_bind_groups(&self) -> usize {
        self.bind_groups.borrow().1.len()
    }

    /// Dispatches recorded since the backend was made (what a forward costs the host).
    pub fn dispatch_count(&self) -> u64 {
        self.dispatches.get()
    }

    /// Whether the device can time kernels on the GPU's clock (`TIMESTAMP_QUERY`).
    pub fn has_timestamps(&self) -> bool {
        self.ctx.features.contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Starts recording a timestamp pair around every dispatch; `false` (and nothing recorded)
    /// where the device lacks timestamp queries. Work recorded before this call is submitted
    /// first, so the window holds only what follows.
    pub fn start_timing(&self) -> bool {
        if !self.has_timestamps() {
            return false;
        }
        self.submit();
        let queries = self.ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("flowmap timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: 2 * MAX_TIMED_DISPATCHES,
        });
        *self.timer.borrow_mut() = Some(Timer {
            queries,
            labels: Vec::new(),
            untimed: 0,
        });
        true
    }

    /// Ends the window opened by [`Self::start_timing`]: waits for its work and reads the
    /// timestamps back. `None` when no window was open.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn finish_timing(&self) -> Result<Option<GpuTimes>> {
        let Some(timer) = self.timer.borrow_mut().take() else {
            return Ok(None);
        };
        let n = timer.labels.len() as u32;
        if n == 0 {
            self.sync()?;
            return Ok(Some(GpuTimes {
                untimed: timer.untimed,
                ..Default::default()
            }));
        }
        let bytes = u64::from(2 * n) * 8;
        let resolve = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("flowmap timestamps resolve"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        self.end_pass();
        {
            let mut enc = self.encoder.borrow_mut();
            let enc = enc.get_or_insert_with(|| self.new_encoder());
            enc.resolve_query_set(&timer.queries, 0..2 * n, &resolve, 0);
        }
        let raw = pollster::block_on(self.read_back(&resolve, bytes, "timestamp readback"))?;
        let ticks: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8-byte chunks")))
            .collect();
        let period = f64::from(self.ctx.queue.get_timestamp_period()) * 1e-9;
        let secs = |a: u64, b: u64| b.saturating_sub(a) as f64 * period;
        let dispatches = timer
            .labels
            .iter()
            .enumerate()
            .map(|(i, l)| (*l, secs(ticks[2 * i], ticks[2 * i + 1])))
            .collect();
        let first = ticks.iter().step_by(2).copied().min().unwrap_or(0);
        let last = ticks.iter().skip(1).step_by(2).copied().max().unwrap_or(0);
        Ok(Some(GpuTimes {
            dispatches,
            span: secs(first, last),
            untimed: timer.untimed,
        }))
    }

    fn new_encoder(&self) -> wgpu::CommandEncoder {
        self.ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("flowmap"),
            })
    }

    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// Compiles every kernel now rather than on first use (so timings exclude compilation).
    pub fn warm_up(&self) -> Result<()> {
        for (shader, entry) in [
            ("attention.wgsl", "main"),
            ("concat.wgsl", "main"),
            (ConvTile::C64.shader(), "main"),
            (ConvTile::C32.shader(), "main"),
            (ConvTile::C16.shader(), "main"),
            (DirectTile::Wide.shader(), "main"),
            (DirectTile::Small.shader(), "main"),
            ("elementwise.wgsl", "add"),
            ("elementwise.wgsl", "activate"),
            ("elementwise.wgsl", "flow_step"),
            ("embedding.wgsl", "main"),
            ("group_norm.wgsl", "main"),
            ("linear.wgsl", "main"),
            ("linear.wgsl", "gemv"),
            ("upsample.wgsl", "main"),
        ] {
            self.pipeline(shader, entry);
        }
        self.ctx.take_error()
    }

    fn pipeline(&self, shader: &'static str, entry: &'static str) -> Pipeline {
        if let Some(p) = self.pipelines.borrow().get(&(shader, entry)) {
            return p.clone();
        }
        let source = kernel_source(shader).expect("shader is listed in SHADERS");
        let mut modules = self.modules.borrow_mut();
        let module = modules.entry(shader).or_insert_with(|| {
            let desc = wgpu::ShaderModuleDescriptor {
                label: Some(shader),
                source: wgpu::ShaderSource::Wgsl(Cow::Owned(
                    shader_source(&source, self.precision).into_owned(),
                )),
            };
            match self.checks {
                ShaderChecks::Wgpu => self.ctx.device.create_shader_module(desc),
                ShaderChecks::NoLoopBounding => {
                    let checks = wgpu::ShaderRuntimeChecks {
                        force_loop_bounding: false,
                        ..wgpu::ShaderRuntimeChecks::checked()
                    };
                    // SAFETY: wgpu's one requirement for turning loop bounding off is that no
                    // loop of these shaders runs forever. Every loop in shaders/ either has a
                    // constant trip count or steps a counter by at most 256 towards a bound
                    // that counts elements of one binding (under 2^30: bindings are under 2^32
                    // bytes), so no counter wraps: `k0 += BK`, `i += WG`, conv3x3.wgsl's
                    // `ci0 += CI_B`. Bounds and integer-division checks stay on.
                    // tests/shaders.rs lists every loop of every file, so a new one is read
                    // against this before it lands.
                    unsafe { self.ctx.device.create_shader_module_trusted(desc, checks) }
                }
            }
        });
        let mut layouts = self.layouts.borrow_mut();
        let (layout, pipeline_layout, storage) = layouts.entry(shader).or_insert_with(|| {
            let (storage, uniform) = bindings_of(&source);
            let mut entries: Vec<wgpu::BindGroupLayoutEntry> = storage
                .iter()
                .enumerate()
                .map(|(i, &rw)| wgpu::BindGroupLayoutEntry {
                    binding: i as u32,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: !rw },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                })
                .collect();
            entries.push(wgpu::BindGroupLayoutEntry {
                binding: uniform,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: true,
                    min_binding_size: None,
                },
                count: None,
            });
            let layout =
                self.ctx
                    .device
                    .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                        label: Some(shader),
                        entries: &entries,
                    });
            let pipeline_layout =
                self.ctx
                    .device
                    .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                        label: Some(shader),
                        bind_group_layouts: &[Some(&layout)],
                        immediate_size: 0,
                    });
            (layout, pipeline_layout, uniform)
        });
        let p = self
            .ctx
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(pipeline_layout),
                module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            });
        let p = Pipeline {
            layout: layout.clone(),
            pipeline: p,
            storage: *storage,
        };
        self.pipelines
            .borrow_mut()
            .insert((shader, entry), p.clone());
        p
    }

    /// The bind group of one dispatch, from the cache or made now. `buffers` are the dispatch's
    /// storage buffers by binding; bindings an entry point does not use get the dummy buffer.
    fn bind_group(
        &self,
        shader: &'static str,
        pipeline: &Pipeline,
        buffers: &[(u32, &wgpu::Buffer)],
        uniform: &wgpu::Buffer,
        size: std::num::NonZeroU64,
    ) -> wgpu::BindGroup {
        let mut bound: Vec<wgpu::Buffer> = vec![self.dummy.clone(); pipeline.storage as usize];
        for (binding, buf) in buffers {
            bound[*binding as usize] = (*buf).clone();
        }
        let key = BindKey {
            shader,
            buffers: bound,
            uniform: uniform.clone(),
            size: size.get(),
        };
        let mut cache = self.bind_groups.borrow_mut();
        let freed = self.pool.borrow().freed();
        if cache.0 != freed || cache.1.len() >= MAX_BIND_GROUPS {
            *cache = (freed, HashMap::new());
        }
        if let Some(g) = cache.1.get(&key) {
            return g.clone();
        }
        let mut entries: Vec<wgpu::BindGroupEntry> = key
            .buffers
            .iter()
            .enumerate()
            .map(|(i, buf)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: buf.as_entire_binding(),
            })
            .collect();
        entries.push(wgpu::BindGroupEntry {
            binding: pipeline.storage,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: uniform,
                offset: 0,
                size: Some(size),
            }),
        });
        let g = self
            .ctx
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(shader),
                layout: &pipeline.layout,
                entries: &entries,
            });
        cache.1.insert(key, g.clone());
        g
    }

    /// Ends the shared compute pass, if one is open, so the encoder can take other commands.
    fn end_pass(&self) {
        self.pass.borrow_mut().take();
    }

    fn alloc(&self, shape: &[usize]) -> GpuTensor {
        let bytes = shape.iter().product::<usize>().max(1) * self.precision.bytes();
        // Whole 4-byte words: wgpu copies and binds buffers in multiples of 4.
        let size = bytes.div_ceil(4) as u64 * 4;
        let buffer = pool::take(&self.pool, size).unwrap_or_else(|| {
            self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("flowmap tensor"),
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        GpuTensor {
            buf: Rc::new(PooledBuffer::new(buffer, self.pool.clone())),
            shape: shape.to_vec(),
            dtype: self.precision,
        }
    }

    /// Uploads `data` stored as `dtype`.
    fn upload_as(&self, data: &[f32], shape: &[usize], dtype: Precision) -> Result<GpuTensor> {
        crate::backend::check_fill(data.len(), shape)?;
        let max = self.ctx.max_binding_bytes() / dtype.bytes();
        if data.len() > max {
            return Err(Error::Argument(format!(
                "a tensor of {} values exceeds the adapter's storage binding limit of {max}",
                data.len()
            )));
        }
        let bytes = match dtype {
            Precision::F32 => {
                let mut bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
                if bytes.is_empty() {
                    bytes.resize(4, 0);
                }
                bytes
            }
            Precision::F16 => precision::f16_bytes(data),
        };
        // A fresh buffer (never a pooled one): see pool.rs for why.
        let buffer = self
            .ctx
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("flowmap upload"),
                contents: &bytes,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            });
        Ok(GpuTensor {
            buf: Rc::new(PooledBuffer::new(buffer, self.pool.clone())),
            shape: shape.to_vec(),
            dtype,
        })
    }

    /// Records one dispatch of `groups` workgroups, folded into two dimensions when it exceeds
    /// the per-dimension limit (every kernel flattens its workgroup id the same way).
    fn dispatch(
        &self,
        shader: &'static str,
        entry: &'static str,
        buffers: &[(u32, &wgpu::Buffer)],
        params: &[P],
        groups: usize,
    ) {
        self.dispatches.set(self.dispatches.get() + 1);
        let pipeline = self.pipeline(shader, entry);
        let (uniform, offset, size) = self
            .uniforms
            .borrow_mut()
            .push(&self.ctx.device, &param_bytes(params));
        let bind_group = self.bind_group(shader, &pipeline, buffers, &uniform, size);
        let offset = u32::try_from(offset).expect("a parameter slot offset fits in u32");
        let max = self.ctx.limits.max_compute_workgroups_per_dimension as usize;
        let gx = groups.clamp(1, max);
        let gy = groups.div_ceil(gx).max(1);
        let mut timer = self.timer.borrow_mut();
        let timestamp_writes = match timer.as_mut() {
            Some(t) if (t.labels.len() as u32) < MAX_TIMED_DISPATCHES => {
                let i = 2 * t.labels.len() as u32;
                t.labels.push(shader);
                Some(wgpu::ComputePassTimestampWrites {
                    query_set: &t.queries,
                    beginning_of_pass_write_index: Some(i),
                    end_of_pass_write_index: Some(i + 1),
                })
            }
            Some(t) => {
                t.untimed += 1;
                None
            }
            None => None,
        };
        if timestamp_writes.is_some() {
            // A pass of its own, so its timestamps bracket this dispatch alone.
            self.end_pass();
            let mut enc = self.encoder.borrow_mut();
            let enc = enc.get_or_insert_with(|| self.new_encoder());
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(entry),
                timestamp_writes,
            });
            pass.set_pipeline(&pipeline.pipeline);
            pass.set_bind_group(0, &bind_group, &[offset]);
            pass.dispatch_workgroups(gx as u32, gy as u32, 1);
            return;
        }
        // Untimed dispatches share one compute pass until something else needs the encoder.
        // Each dispatch is its own usage scope, so wgpu orders a dispatch after the writes of
        // the ones before it exactly as separate passes would be.
        let mut pass = self.pass.borrow_mut();
        let pass = pass.get_or_insert_with(|| {
            let mut enc = self.encoder.borrow_mut();
            let enc = enc.get_or_insert_with(|| self.new_encoder());
            enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("flowmap"),
                timestamp_writes: None,
            })
            .forget_lifetime()
        });
        pass.set_pipeline(&pipeline.pipeline);
        pass.set_bind_group(0, &bind_group, &[offset]);
        pass.dispatch_workgroups(gx as u32, gy as u32, 1);
    }

    /// Submits everything recorded so far.
    fn submit(&self) {
        self.end_pass();
        if let Some(enc) = self.encoder.borrow_mut().take() {
            // The parameter blocks land before the commands that read them (queue order).
            self.uniforms.borrow_mut().write(&self.ctx.queue);
            self.ctx.queue.submit([enc.finish()]);
        }
    }

    fn wait(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        self.ctx
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(e.to_string()))?;
        self.ctx.take_error()
    }

    /// Copies a tensor back to the host; on the web, await this instead of [`Backend::download`].
    pub fn download_async(
        &self,
        t: &GpuTensor,
    ) -> impl Future<Output = Result<Vec<f32>>> + 'static {
        self.download_prefix_async(t, t.len())
    }

    /// Copies the first `n` values of a tensor back (the page's intermediate-states view reads
    /// only the samples it shows).
    pub fn download_prefix_async(
        &self,
        t: &GpuTensor,
        n: usize,
    ) -> impl Future<Output = Result<Vec<f32>>> + 'static {
        let n = n.min(t.len());
        let dtype = t.dtype;
        let size = (n.max(1) * dtype.bytes()).div_ceil(4) as u64 * 4;
        let bytes = self.read_back(t.buffer(), size, "readback");
        async move {
            let bytes = bytes.await?;
            Ok(match dtype {
                Precision::F32 => bytemuck_cast(&bytes[..n * 4]),
                Precision::F16 => precision::from_f16_bytes(&bytes, n),
            })
        }
    }

    /// Copies the first `size` bytes of `src` to a mappable buffer after everything recorded so
    /// far, submits, and resolves to them. The one readback path (tensors and timestamps).
    fn read_back(
        &self,
        src: &wgpu::Buffer,
        size: u64,
        what: &'static str,
    ) -> impl Future<Output = Result<Vec<u8>>> + 'static {
        let staging = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.end_pass();
        {
            let mut enc = self.encoder.borrow_mut();
            let enc = enc.get_or_insert_with(|| self.new_encoder());
            enc.copy_buffer_to_buffer(src, 0, &staging, 0, size);
        }
        self.submit();
        let state: Arc<Mutex<MapState>> = Arc::default();
        let cb_state = state.clone();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let mut s = cb_state.lock().expect("map state");
            s.result = Some(r.map_err(|e| Error::Gpu(format!("{what} failed: {e}"))));
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        });
        let waited = self.wait();
        let errors = self.ctx.error_sink();
        async move {
            waited?;
            MapFuture(state).await?;
            // On the web, nothing waits before the map resolves: errors raised by the work this
            // readback waited for (validation, out of memory, a lost device) arrive only now.
            GpuContext::check(&errors)?;
            let data = staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| Error::Gpu(format!("{what} failed: {e}")))?
                .to_vec();
            staging.unmap();
            Ok(data)
        }
    }
}

fn bytemuck_cast(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[derive(Default)]
struct MapState {
    result: Option<Result<()>>,
    waker: Option<Waker>,
}

struct MapFuture(Arc<Mutex<MapState>>);

impl Future for MapFuture {
    type Output = Result<()>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let mut s = self.0.lock().expect("map state");
        match s.result.take() {
            Some(r) => Poll::Ready(r),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Backend for GpuBackend {
    type Tensor = GpuTensor;

    fn upload(&self, data: &[f32], shape: &[usize]) -> Result<GpuTensor> {
        self.upload_as(data, shape, self.precision)
    }

    fn upload_times(&self, data: &[f32], shape: &[usize]) -> Result<GpuTensor> {
        let key = (
            data.iter().map(|v| v.to_bits()).collect::<Vec<u32>>(),
            shape.to_vec(),
        );
        if let Some(t) = self.times.borrow().get(&key) {
            return Ok(t.clone());
        }
        let t = self.upload_as(data, shape, Precision::F32)?;
        let mut times = self.times.borrow_mut();
        if times.len() >= MAX_TIME_TENSORS {
            times.clear();
        }
        times.insert(key, t.clone());
        Ok(t)
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn download(&self, t: &GpuTensor) -> Result<Vec<f32>> {
        pollster::block_on(self.download_async(t))
    }

    #[cfg(target_arch = "wasm32")]
    fn download(&self, _t: &GpuTensor) -> Result<Vec<f32>> {
        Err(Error::Gpu(
            "blocking readback is impossible in a browser; use download_async".into(),
        ))
    }

    fn sync(&self) -> Result<()> {
        self.submit();
        self.wait()
    }

    fn flush(&self) {
        self.submit();
    }

    fn conv2d(
        &self,
        x: &GpuTensor,
        w: &GpuTensor,
        bias: &GpuTensor,
        geom: Conv2d,
        residual: Option<&GpuTensor>,
    ) -> GpuTensor {
        let shape = ConvShape::new(&x.shape, &w.shape, geom, residual.is_some())
            .expect("conv2d takes 4-d input and weights");
        let tiles = self.conv_tiles.get();
        let tuned = match tiles {
            ConvTiles::ByLayer => self.tuned.borrow().get(&shape).copied(),
            _ => None,
        };
        let kernel = tuned.unwrap_or_else(|| shape.rule(tiles));
        self.conv2d_with(kernel, x, w, bias, geom, residual)
    }

    fn group_norm(
        &self,
        x: &GpuTensor,
        gamma: &GpuTensor,
        beta: &GpuTensor,
        groups: usize,
        eps: f32,
        modulation: Option<&GpuTensor>,
        silu: bool,
    ) -> GpuTensor {
        let y = self.alloc(&x.shape);
        let hw: usize = x.shape[2..].iter().product();
        let m = modulation.map(|m| m.buffer()).unwrap_or(&self.dummy);
        let params = [
            u(x.shape[0]),
            u(x.shape[1]),
            u(hw),
            u(groups),
            u(mod_repeat(x.shape[0], x.shape[1], modulation)),
            u(silu as usize),
            P::F(eps),
        ];
        let bufs = [
            (0, x.buffer()),
            (1, gamma.buffer()),
            (2, beta.buffer()),
            (3, m),
            (4, y.buffer()),
        ];
        self.dispatch(
            "group_norm.wgsl",
            "main",
            &bufs,
            &params,
            x.shape[0] * groups,
        );
        y
    }

    fn linear(
        &self,
        x: &GpuTensor,
        w: &GpuTensor,
        bias: &GpuTensor,
        modulation: Option<&GpuTensor>,
        act: Activation,
    ) -> GpuTensor {
        let (rows, inp, outp) = (x.shape[0], x.shape[1], w.shape[0]);
        let y = self.alloc(&[rows, outp]);
        let tiles_n = outp.div_ceil(64);
        // A few rows (the conditioning of a batch that shares its times) take linear.wgsl's
        // `gemv`, one workgroup per output column; the rest its tiled `main`.
        let (entry, total) = if (1..=GEMV_ROWS).contains(&rows) {
            ("gemv", outp)
        } else {
            ("main", rows.div_ceil(64) * tiles_n)
        };
        let m = modulation.map(|m| m.buffer()).unwrap_or(&self.dummy);
        let params = [
            u(rows),
            u(inp),
            u(outp),
            u(mod_repeat(rows, outp, modulation)),
            P::U(act.code()),
            u(tiles_n),
            u(total),
        ];
        let bufs = [
            (0, x.buffer()),
            (1, w.buffer()),
            (2, bias.buffer()),
            (3, m),
            (4, y.buffer()),
        ];
        self.dispatch("linear.wgsl", entry, &bufs, &params, total);
        y
    }

    fn timestep_embedding(
        &self,
        times: &GpuTensor,
        dim: usize,
        max_period: f32,
        time_scale: f32,
    ) -> GpuTensor {
        let n = times.shape[0];
        let half = dim / 2;
        let y = self.alloc(&[n, dim]);
        let freqs = self
            .freqs
            .borrow_mut()
            .entry((half, max_period.to_bits()))
            .or_insert_with(|| {
                // f32 in both precisions: embedding.wgsl reads the table as f32.
                self.upload_as(
                    &crate::cpu::embedding_frequencies(half, max_period),
                    &[half],
                    Precision::F32,
                )
                .expect("a small frequency table fits any adapter")
            })
            .clone();
        let params = [u(n), u(half), P::F(max_period), P::F(time_scale)];
        let bufs = [(0, times.buffer()), (1, freqs.buffer()), (2, y.buffer())];
        self.dispatch(
            "embedding.wgsl",
            "main",
            &bufs,
            &params,
            (n * half).div_ceil(64),
        );
        y
    }

    fn attention(&self, qkv: &GpuTensor, heads: usize) -> GpuTensor {
        let (n, c, l) = (qkv.shape[0], qkv.shape[1] / 3, qkv.shape[2]);
        let d = c / heads;
        assert!(
            d <= crate::config::MAX_HEAD_DIM,
            "head dimension {d} exceeds the kernel's limit"
        );
        let y = self.alloc(&[n, c, l]);
        let q_tiles = l.div_ceil(64);
        let total = n * heads * q_tiles;
        let params = [
            u(n),
            u(c),
            u(l),
            u(heads),
            u(d),
            u(q_tiles),
            u(total),
            P::F(1.0 / (d as f32).sqrt()),
        ];
        self.dispatch(
            "attention.wgsl",
            "main",
            &[(0, qkv.buffer()), (1, y.buffer())],
            &params,
            total,
        );
        y
    }

    fn upsample_nearest2x(&self, x: &GpuTensor) -> GpuTensor {
        let s = &x.shape;
        let y = self.alloc(&[s[0], s[1], 2 * s[2], 2 * s[3]]);
        let params = [u(s[0] * s[1]), u(s[2]), u(s[3])];
        self.dispatch(
            "upsample.wgsl",
            "main",
            &[(0, x.buffer()), (1, y.buffer())],
            &params,
            y.len().div_ceil(256),
        );
        y
    }

    fn concat_channels(&self, a: &GpuTensor, b: &GpuTensor) -> GpuTensor {
        let n = a.shape[0];
        let mut shape = a.shape.clone();
        shape[1] += b.shape[1];
        let y = self.alloc(&shape);
        let params = [u(n), u(a.len() / n), u(b.len() / n)];
        self.dispatch(
            "concat.wgsl",
            "main",
            &[(0, a.buffer()), (1, b.buffer()), (2, y.buffer())],
            &params,
            y.len().div_ceil(256),
        );
        y
    }

    fn reshape(&self, t: &GpuTensor, shape: &[usize]) -> GpuTensor {
        assert_eq!(
            t.len(),
            shape.iter().product::<usize>(),
            "reshape {:?} to {shape:?}",
            t.shape
        );
        GpuTensor {
            buf: t.buf.clone(),
            shape: shape.to_vec(),
            dtype: t.dtype,
        }
    }

    fn add(&self, a: &GpuTensor, b: &GpuTensor) -> GpuTensor {
        let y = self.alloc(&a.shape);
        let params = [u(a.len()), P::U(0), P::F(0.0)];
        self.dispatch(
            "elementwise.wgsl",
            "add",
            &[(0, a.buffer()), (1, b.buffer()), (2, y.buffer())],
            &params,
            a.len().div_ceil(256),
        );
        y
    }

    fn activation(&self, x: &GpuTensor, act: Activation) -> GpuTensor {
        let y = self.alloc(&x.shape);
        let params = [u(x.len()), P::U(act.code()), P::F(0.0)];
        self.dispatch(
            "elementwise.wgsl",
            "activate",
            &[(0, x.buffer()), (2, y.buffer())],
            &params,
            x.len().div_ceil(256),
        );
        y
    }

    fn flow_step(&self, x: &GpuTensor, v: &GpuTensor, dt: f32) -> GpuTensor {
        let y = self.alloc(&x.shape);
        let params = [u(x.len()), P::U(0), P::F(dt)];
        self.dispatch(
            "elementwise.wgsl",
            "flow_step",
            &[(0, x.buffer()), (1, v.buffer()), (2, y.buffer())],
            &params,
            x.len().div_ceil(256),
        );
        y
    }
}
