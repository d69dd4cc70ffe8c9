//! The model config and file metadata: the single definition of every architecture constant.
//!
//! A weights file is safetensors whose header metadata holds, under the key [`METADATA_KEY`],
//! the JSON form of [`ModelMeta`]. The trainer builds its modules from these same types, and the
//! tensor names come from walking the network in `net/` (see [`crate::net::param_specs`]), so
//! neither the shapes nor the names are written down twice.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The newest file format this build reads and the one it writes.
pub const FORMAT_VERSION: u32 = 1;
/// The safetensors metadata key whose value is the JSON [`ModelMeta`].
pub const METADATA_KEY: &str = "flowmap";
/// Attention heads are limited to this size: the fused WGSL attention keeps one query row and
/// its accumulator in registers.
pub const MAX_HEAD_DIM: usize = 64;

/// Bounds on an architecture's sizes, checked before anything is laid out or allocated, so that
/// a file declaring an absurd architecture (a width of 2^31, a product that overflows, even in
/// the page's 32-bit wasm) gets a named error instead of an overflow or an allocation abort.
/// They are far above anything this project trains: widths and channel counts up to 4,096,
/// depths up to 64, images up to 1,024 × 1,024, and at most 2^26 values per sample in any
/// activation.
pub mod limits {
    pub const MAX_WIDTH: usize = 4096;
    pub const MAX_DEPTH: usize = 64;
    pub const MAX_LEVELS: usize = 8;
    pub const MAX_BLOCKS: usize = 16;
    pub const MAX_IMAGE_SIDE: usize = 1024;
    pub const MAX_IN_CHANNELS: usize = 64;
    pub const MAX_MULT: usize = 64;
    pub const MAX_SAMPLE_VALUES: u64 = 1 << 26;
}

/// Pointwise nonlinearity used by the `mlp` architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// No nonlinearity (identity); used internally for plain linear layers.
    None,
    /// x · sigmoid(x).
    #[default]
    Silu,
    Relu,
    /// The exact (erf) GELU, as in PyTorch's and burn's default.
    Gelu,
}

impl Activation {
    /// The code the WGSL kernels switch on.
    pub fn code(self) -> u32 {
        match self {
            Activation::None => 0,
            Activation::Silu => 1,
            Activation::Relu => 2,
            Activation::Gelu => 3,
        }
    }
}

/// Time conditioning (METHOD §3): s and (t − s) each get a sinusoidal embedding of `dim`
/// channels, go through their own two-layer MLP (`dim → hidden → hidden`, SiLU between), and the
/// two results are summed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeEmbedConfig {
    /// Channels of each sinusoidal embedding (even). Default 64.
    #[serde(default = "defaults::embed_dim")]
    pub dim: usize,
    /// Width of the time MLPs and of the conditioning vector. Default 128.
    #[serde(default = "defaults::embed_hidden")]
    pub hidden: usize,
    /// Longest period of the sinusoids. Default 1e4 (METHOD §3).
    #[serde(default = "defaults::max_period")]
    pub max_period: f32,
    /// Times in [0, 1] are multiplied by this before embedding, so that the sinusoids resolve
    /// small time differences. Default 100: the trainer takes ∂_t by central differences with
    /// h = 1e-3 (METHOD §5), accurate only while the fastest sinusoid (angular frequency
    /// `time_scale`) moves little over h; at 1000 it would be off by ~17%, at 100 by ~0.2%.
    #[serde(default = "defaults::time_scale")]
    pub time_scale: f32,
}

impl Default for TimeEmbedConfig {
    fn default() -> Self {
        Self {
            dim: defaults::embed_dim(),
            hidden: defaults::embed_hidden(),
            max_period: defaults::max_period(),
            time_scale: defaults::time_scale(),
        }
    }
}

/// U-Net for images of shape C×H×W.
///
/// Down path: `conv_in`, then per level `blocks_per_level` residual blocks (each followed by
/// self-attention at the levels in `attention_levels`) and a stride-2 conv except at the last
/// level. Middle: res, attention, res. Up path: per level (deepest first) `blocks_per_level + 1`
/// residual blocks on the concatenation with the matching skip, then nearest ×2 upsampling and a
/// 3×3 conv except at level 0. Out: GroupNorm, SiLU, (nearest ×2 upsampling when
/// `stem_stride` = 2), 3×3 conv.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnetConfig {
    pub in_channels: usize,
    pub height: usize,
    pub width: usize,
    /// Channels at level 0. Default 16: the shipped MNIST model must train in ≤ 2 h on a 2-core
    /// CPU (docs/BENCHMARKS.md has the throughput that sized it).
    #[serde(default = "defaults::base_channels")]
    pub base_channels: usize,
    /// Channel multiplier per level; its length is the number of levels. Default [1, 2, 2].
    #[serde(default = "defaults::channel_mult")]
    pub channel_mult: Vec<usize>,
    /// Residual blocks per level on the way down. Default 1.
    #[serde(default = "defaults::blocks_per_level")]
    pub blocks_per_level: usize,
    /// Levels (0-based) whose blocks are followed by self-attention. Default [2] (the lowest).
    #[serde(default = "defaults::attention_levels")]
    pub attention_levels: Vec<usize>,
    /// Attention heads. Default 1.
    #[serde(default = "defaults::heads")]
    pub heads: usize,
    /// GroupNorm groups. Default 8.
    #[serde(default = "defaults::groups")]
    pub groups: usize,
    /// GroupNorm epsilon. Default 1e-5.
    #[serde(default = "defaults::eps")]
    pub eps: f32,
    /// Stride of `conv_in`: 1, or 2 to run the first level at half resolution (14×14 for MNIST),
    /// in which case the output is brought back by nearest ×2 upsampling before `out.conv`.
    /// Fewer, wider levels cost fewer FLOPs per sample and run at a higher rate on the CPU
    /// (docs/BENCHMARKS.md). Default 1.
    #[serde(default = "defaults::stem_stride")]
    pub stem_stride: usize,
    #[serde(default)]
    pub time: TimeEmbedConfig,
}

/// How an `mlp` reads the times s and t.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Conditioning {
    /// Sinusoidal embeddings of s and t − s through the time MLPs (METHOD §3), read by every
    /// layer as a per-unit scale-shift.
    #[default]
    Embed,
    /// The raw times as two extra inputs: the first layer sees [s, t, x] and no layer is
    /// modulated; no time MLPs. The authors' checkerboard network (RECIPES.md); about 2.5× fewer
    /// FLOPs than `embed` at width 256.
    Raw,
}

/// Time-conditioned MLP for points in R^dim: `depth` hidden layers, each linear then (with
/// `embed` conditioning) a time scale-shift, then the activation; an `output` linear.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpConfig {
    /// Dimension of the data points. Default 2.
    #[serde(default = "defaults::point_dim")]
    pub dim: usize,
    /// Hidden width. Default 256.
    #[serde(default = "defaults::mlp_width")]
    pub width: usize,
    /// Number of hidden layers. Default 4.
    #[serde(default = "defaults::mlp_depth")]
    pub depth: usize,
    #[serde(default)]
    pub activation: Activation,
    /// How the times enter. Default `embed`.
    #[serde(default)]
    pub conditioning: Conditioning,
    /// The time embedding (unused with `raw` conditioning).
    #[serde(default)]
    pub time: TimeEmbedConfig,
}

/// The network architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "lowercase")]
pub enum ModelConfig {
    Unet(UnetConfig),
    Mlp(MlpConfig),
}

/// How a sample is laid out and displayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataKind {
    /// C×H×W images, drawn as a PNG grid.
    Image,
    /// Points in R^d, drawn as a scatter plot.
    Points,
}

/// The data the model generates: its shape and the affine map from model space to data range
/// (`data = model · scale + offset`; images train in [−1, 1] and are stored in [0, 1]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    pub kind: DataKind,
    /// Shape of one sample: [C, H, W] for images, [d] for points.
    pub shape: Vec<usize>,
    pub scale: f32,
    pub offset: f32,
    /// The data range for display: pixel values are clamped to it, scatter plots span it.
    pub range: [f32; 2],
    /// Name of the data set (free text, e.g. "mnist" or "checkerboard").
    #[serde(default)]
    pub name: String,
}

/// The stochastic interpolant the model was trained with (METHOD §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Interpolant {
    #[default]
    Linear,
    Trigonometric,
}

/// Everything in the file besides the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelMeta {
    pub format_version: u32,
    pub model: ModelConfig,
    pub data: DataSpec,
    /// Standard deviation of the Gaussian base x0 ~ N(0, σ0² I) (METHOD §1).
    pub sigma0: f32,
    #[serde(default)]
    pub interpolant: Interpolant,
    /// The training objective (`fm`, `lsd`, `lmd`, `emd`, `pfmm`, `psd`, `esd`) or `random`.
    pub method: String,
    /// Free-form provenance: steps, data, seed, git commit, date.
    #[serde(default)]
    pub provenance: BTreeMap<String, String>,
}

impl ModelMeta {
    /// Metadata for weights that no training produced (random initialisations for tests and
    /// benchmarks): the current format, σ0 = 1, the linear interpolant, method `random`.
    pub fn untrained(model: ModelConfig, data: DataSpec) -> Self {
        ModelMeta {
            format_version: FORMAT_VERSION,
            model,
            data,
            sigma0: 1.0,
            interpolant: Interpolant::Linear,
            method: "random".into(),
            provenance: BTreeMap::new(),
        }
    }

    /// Parses and validates the metadata JSON of a weights file.
    pub fn from_json(text: &str) -> Result<Self> {
        // Read the version first, so that a newer file is reported as such and not as a
        // field we do not know.
        let raw: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::Metadata(format!("not JSON: {e}")))?;
        let version = raw
            .get("format_version")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| Error::Metadata("no integer `format_version`".into()))?;
        if version > FORMAT_VERSION as u64 {
            return Err(Error::NewerVersion {
                found: version.min(u32::MAX as u64) as u32,
                supported: FORMAT_VERSION,
            });
        }
        if version == 0 {
            return Err(Error::Metadata("format_version 0 does not exist".into()));
        }
        let meta: ModelMeta =
            serde_json::from_value(raw).map_err(|e| Error::Metadata(e.to_string()))?;
        meta.validate()?;
        Ok(meta)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("metadata serializes")
    }

    /// Checks the config and that the data spec agrees with the model.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        let expected = self.model.sample_shape();
        if self.data.shape != expected {
            return Err(Error::Metadata(format!(
                "data shape {:?} does not match the model's sample shape {:?}",
                self.data.shape, expected
            )));
        }
        let kind_ok = matches!(
            (&self.model, self.data.kind),
            (ModelConfig::Unet(_), DataKind::Image) | (ModelConfig::Mlp(_), DataKind::Points)
        );
        if !kind_ok {
            return Err(Error::Metadata(format!(
                "data kind {:?} does not fit a {} model",
                self.data.kind,
                self.model.arch_name()
            )));
        }
        let finite = [
            self.sigma0,
            self.data.scale,
            self.data.offset,
            self.data.range[0],
            self.data.range[1],
        ];
        if finite.iter().any(|v| !v.is_finite()) {
            return Err(Error::Metadata(
                "sigma0, scale, offset and range must be finite".into(),
            ));
        }
        if self.sigma0 <= 0.0 {
            return Err(Error::Metadata(format!(
                "sigma0 must be positive, got {}",
                self.sigma0
            )));
        }
        if self.data.range[0] >= self.data.range[1] {
            return Err(Error::Metadata(format!(
                "empty data range {:?}",
                self.data.range
            )));
        }
        Ok(())
    }
}

impl ModelConfig {
    pub fn arch_name(&self) -> &'static str {
        match self {
            ModelConfig::Unet(_) => "unet",
            ModelConfig::Mlp(_) => "mlp",
        }
    }

    pub fn time(&self) -> &TimeEmbedConfig {
        match self {
            ModelConfig::Unet(c) => &c.time,
            ModelConfig::Mlp(c) => &c.time,
        }
    }

    /// The shape of one sample (without the batch dimension).
    pub fn sample_shape(&self) -> Vec<usize> {
        match self {
            ModelConfig::Unet(c) => vec![c.in_channels, c.height, c.width],
            ModelConfig::Mlp(c) => vec![c.dim],
        }
    }

    /// Number of scalars in one sample.
    pub fn sample_len(&self) -> usize {
        self.sample_shape().iter().product()
    }

    /// Every size within [`limits`], checked with no arithmetic that can overflow.
    fn check_limits(&self) -> Result<()> {
        use limits::*;
        let over = |what: &str, v: usize, max: usize| -> Result<()> {
            if v > max {
                Err(Error::Config(format!(
                    "{what} {v} exceeds the supported maximum {max}"
                )))
            } else {
                Ok(())
            }
        };
        let t = self.time();
        over("time.dim", t.dim, MAX_WIDTH)?;
        over("time.hidden", t.hidden, MAX_WIDTH)?;
        match self {
            ModelConfig::Mlp(c) => {
                over("mlp dim", c.dim, MAX_WIDTH)?;
                over("mlp width", c.width, MAX_WIDTH)?;
                over("mlp depth", c.depth, MAX_DEPTH)?;
            }
            ModelConfig::Unet(c) => {
                over("unet in_channels", c.in_channels, MAX_IN_CHANNELS)?;
                over("unet height", c.height, MAX_IMAGE_SIDE)?;
                over("unet width", c.width, MAX_IMAGE_SIDE)?;
                over("unet base_channels", c.base_channels, MAX_WIDTH)?;
                over(
                    "unet levels (channel_mult entries)",
                    c.channel_mult.len(),
                    MAX_LEVELS,
                )?;
                over("unet blocks_per_level", c.blocks_per_level, MAX_BLOCKS)?;
                over("unet heads", c.heads, MAX_WIDTH)?;
                over("unet groups", c.groups, MAX_WIDTH)?;
                over(
                    "unet attention levels",
                    c.attention_levels.len(),
                    MAX_LEVELS,
                )?;
                for &m in &c.channel_mult {
                    over("unet channel_mult entry", m, MAX_MULT)?;
                    // Both factors are bounded above, so the product fits even in 32 bits.
                    over("unet channels at a level", c.base_channels * m, MAX_WIDTH)?;
                    // Concatenated skips double a level's channels; 2 · channels · pixels.
                    let values =
                        2 * (c.base_channels * m) as u64 * c.height as u64 * c.width as u64;
                    if values > MAX_SAMPLE_VALUES {
                        return Err(Error::Config(format!(
                            "a {}x{} level with {} channels holds {values} values per sample, over the supported {MAX_SAMPLE_VALUES}",
                            c.height,
                            c.width,
                            c.base_channels * m
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        self.check_limits()?;
        let t = self.time();
        if t.dim == 0 || !t.dim.is_multiple_of(2) {
            return bad(format!("time.dim must be even and positive, got {}", t.dim));
        }
        if t.hidden == 0 {
            return bad("time.hidden must be positive".into());
        }
        let ok = t.max_period > 1.0
            && t.max_period.is_finite()
            && t.time_scale > 0.0
            && t.time_scale.is_finite();
        if !ok {
            return bad("time.max_period must be > 1 and time.time_scale > 0".into());
        }
        match self {
            ModelConfig::Mlp(c) => {
                if c.dim == 0 || c.width == 0 || c.depth == 0 {
                    return bad(format!("mlp dim, width and depth must be positive: {c:?}"));
                }
                if c.activation == Activation::None {
                    return bad("mlp activation must be silu, relu or gelu".into());
                }
            }
            ModelConfig::Unet(c) => {
                if c.in_channels == 0 || c.height == 0 || c.width == 0 || c.base_channels == 0 {
                    return bad(
                        "unet in_channels, height, width and base_channels must be positive".into(),
                    );
                }
                let levels = c.channel_mult.len();
                if levels == 0 || c.channel_mult.contains(&0) {
                    return bad("unet channel_mult must be non-empty with positive entries".into());
                }
                if c.blocks_per_level == 0 {
                    return bad("unet blocks_per_level must be positive".into());
                }
                if c.stem_stride != 1 && c.stem_stride != 2 {
                    return bad(format!(
                        "unet stem_stride must be 1 or 2, got {}",
                        c.stem_stride
                    ));
                }
                let halvings = levels - 1 + usize::from(c.stem_stride == 2);
                let div = 1usize << halvings;
                if c.height % div != 0 || c.width % div != 0 {
                    return bad(format!(
                        "{}x{} images cannot be halved {halvings} times (height and width must be divisible by {div})",
                        c.height,
                        c.width,
                    ));
                }
                if c.groups == 0 || c.heads == 0 {
                    return bad("unet groups and heads must be positive".into());
                }
                for (level, &m) in c.channel_mult.iter().enumerate() {
                    let ch = c.base_channels * m;
                    if ch % c.groups != 0 {
                        return bad(format!(
                            "level {level} has {ch} channels, not divisible by {} groups",
                            c.groups
                        ));
                    }
                    if c.attention_levels.contains(&level) {
                        if ch % c.heads != 0 {
                            return bad(format!(
                                "level {level} has {ch} channels, not divisible by {} heads",
                                c.heads
                            ));
                        }
                        if ch / c.heads > MAX_HEAD_DIM {
                            return bad(format!(
                                "head dimension {} at level {level} exceeds {MAX_HEAD_DIM}; use more heads",
                                ch / c.heads
                            ));
                        }
                    }
                }
                // The middle block always has attention at the deepest width.
                let deepest = c.base_channels * c.channel_mult[levels - 1];
                if deepest % c.heads != 0 || deepest / c.heads > MAX_HEAD_DIM {
                    return bad(format!(
                        "the middle attention has {deepest} channels: needs heads dividing it with head dimension ≤ {MAX_HEAD_DIM}"
                    ));
                }
                if let Some(l) = c.attention_levels.iter().find(|&&l| l >= levels) {
                    return bad(format!(
                        "attention level {l} does not exist ({levels} levels)"
                    ));
                }
                if c.eps.is_nan() || c.eps <= 0.0 {
                    return bad("unet eps must be positive".into());
                }
            }
        }
        Ok(())
    }

    /// The U-Net the shipped MNIST model uses (1×28×28).
    pub fn mnist_default() -> Self {
        ModelConfig::Unet(UnetConfig {
            in_channels: 1,
            height: 28,
            width: 28,
            base_channels: defaults::base_channels(),
            channel_mult: defaults::channel_mult(),
            blocks_per_level: defaults::blocks_per_level(),
            attention_levels: defaults::attention_levels(),
            heads: defaults::heads(),
            groups: defaults::groups(),
            eps: defaults::eps(),
            stem_stride: defaults::stem_stride(),
            time: TimeEmbedConfig::default(),
        })
    }

    /// The MNIST U-Net with a stride-2 stem: two levels at 14×14 (24 channels) and 7×7 (48,
    /// with attention), about half the FLOPs of `mnist_default` per sample.
    pub fn mnist_stem() -> Self {
        let ModelConfig::Unet(mut c) = Self::mnist_default() else {
            unreachable!("mnist_default is a unet")
        };
        c.base_channels = 24;
        c.channel_mult = vec![1, 2];
        c.attention_levels = vec![1];
        c.stem_stride = 2;
        ModelConfig::Unet(c)
    }

    /// The MLP the shipped 2-D models use.
    pub fn toy2d_default() -> Self {
        ModelConfig::Mlp(MlpConfig {
            dim: defaults::point_dim(),
            width: defaults::mlp_width(),
            depth: defaults::mlp_depth(),
            activation: Activation::Silu,
            conditioning: Conditioning::Embed,
            time: TimeEmbedConfig::default(),
        })
    }

    /// The authors' checkerboard MLP shape (RECIPES.md) at our width: raw [s, t, x] input, GELU,
    /// 4 × 256 (the paper's 4 × 512 costs 4× the FLOPs per sample).
    pub fn toy2d_raw() -> Self {
        ModelConfig::Mlp(MlpConfig {
            dim: defaults::point_dim(),
            width: defaults::mlp_width(),
            depth: defaults::mlp_depth(),
            activation: Activation::Gelu,
            conditioning: Conditioning::Raw,
            time: TimeEmbedConfig::default(),
        })
    }

    /// Whether the network has the time-embedding MLPs (`time.s`, `time.d`).
    pub fn has_time_embedding(&self) -> bool {
        !matches!(
            self,
            ModelConfig::Mlp(MlpConfig {
                conditioning: Conditioning::Raw,
                ..
            })
        )
    }
}

impl DataSpec {
    /// The default data description for a model: images in [0, 1] for a `unet`, points plotted
    /// over [−1.5, 1.5]² for an `mlp`.
    pub fn for_model(model: &ModelConfig, name: &str) -> Self {
        match model {
            ModelConfig::Unet(c) => DataSpec::image([c.in_channels, c.height, c.width], name),
            ModelConfig::Mlp(c) => DataSpec::points(c.dim, [-1.5, 1.5], name),
        }
    }

    /// MNIST-like grayscale images trained in [−1, 1], stored in [0, 1].
    pub fn image(shape: [usize; 3], name: &str) -> Self {
        DataSpec {
            kind: DataKind::Image,
            shape: shape.to_vec(),
            scale: 0.5,
            offset: 0.5,
            range: [0.0, 1.0],
            name: name.into(),
        }
    }

    /// Points in R^d, used as they are; `range` is the plotting window.
    pub fn points(dim: usize, range: [f32; 2], name: &str) -> Self {
        DataSpec {
            kind: DataKind::Points,
            shape: vec![dim],
            scale: 1.0,
            offset: 0.0,
            range,
            name: name.into(),
        }
    }

    /// Maps a model-space value to the data range.
    pub fn to_data(&self, x: f32) -> f32 {
        x * self.scale + self.offset
    }
}

mod defaults {
    pub fn embed_dim() -> usize {
        64
    }
    pub fn embed_hidden() -> usize {
        128
    }
    pub fn max_period() -> f32 {
        1e4
    }
    pub fn time_scale() -> f32 {
        100.0
    }
    pub fn base_channels() -> usize {
        16
    }
    pub fn channel_mult() -> Vec<usize> {
        vec![1, 2, 2]
    }
    pub fn blocks_per_level() -> usize {
        1
    }
    pub fn attention_levels() -> Vec<usize> {
        vec![2]
    }
    pub fn heads() -> usize {
        1
    }
    pub fn groups() -> usize {
        8
    }
    pub fn eps() -> f32 {
        1e-5
    }
    pub fn stem_stride() -> usize {
        1
    }
    pub fn point_dim() -> usize {
        2
    }
    pub fn mlp_width() -> usize {
        256
    }
    pub fn mlp_depth() -> usize {
        4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ModelMeta {
        ModelMeta {
            format_version: FORMAT_VERSION,
            model: ModelConfig::mnist_default(),
            data: DataSpec::image([1, 28, 28], "mnist"),
            sigma0: 1.0,
            interpolant: Interpolant::Linear,
            method: "lsd".into(),
            provenance: BTreeMap::new(),
        }
    }

    #[test]
    fn metadata_round_trips_through_json() {
        let m = meta();
        assert_eq!(ModelMeta::from_json(&m.to_json()).unwrap(), m);
    }

    #[test]
    fn newer_version_is_named() {
        let mut v: serde_json::Value = serde_json::from_str(&meta().to_json()).unwrap();
        v["format_version"] = 99.into();
        let e = ModelMeta::from_json(&v.to_string()).unwrap_err();
        assert!(matches!(e, Error::NewerVersion { found: 99, .. }), "{e}");
    }

    #[test]
    fn config_errors_name_the_problem() {
        let mut m = meta();
        if let ModelConfig::Unet(c) = &mut m.model {
            c.channel_mult = vec![1, 2, 2, 2];
        }
        let e = m.validate().unwrap_err().to_string();
        assert!(e.contains("divisible by 8"), "{e}");
        let mut m = meta();
        m.data.shape = vec![3, 28, 28];
        assert!(m
            .validate()
            .unwrap_err()
            .to_string()
            .contains("does not match"));
    }

    #[test]
    fn stem_stride_is_validated_against_the_image_size() {
        assert!(ModelConfig::mnist_stem().validate().is_ok());
        let ModelConfig::Unet(mut c) = ModelConfig::mnist_default() else {
            panic!("a unet")
        };
        c.stem_stride = 2; // 28 → 14 → 7 → 3.5 with three levels
        let e = ModelConfig::Unet(c.clone())
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("halved 3 times"), "{e}");
        c.stem_stride = 3;
        let e = ModelConfig::Unet(c).validate().unwrap_err().to_string();
        assert!(e.contains("stem_stride must be 1 or 2"), "{e}");
        // Files written before the field existed read as stride 1.
        let old: ModelConfig =
            serde_json::from_str(r#"{"arch":"unet","in_channels":1,"height":28,"width":28}"#)
                .unwrap();
        assert_eq!(old, ModelConfig::mnist_default());
    }

    #[test]
    fn defaults_fill_missing_fields() {
        let json = r#"{"arch":"mlp"}"#;
        let c: ModelConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c, ModelConfig::toy2d_default());
    }
}
