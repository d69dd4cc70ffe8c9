//! Typed errors of the library. Every failure a user can cause (bad file, bad shape, bad
//! argument, missing adapter, exceeded limits) has a variant whose message names the problem.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a valid safetensors file ({0})")]
    Format(String),
    #[error(
        "the weights file has no flowmap metadata (the `flowmap` key of the safetensors header)"
    )]
    MissingMetadata,
    #[error("invalid flowmap metadata: {0}")]
    Metadata(String),
    #[error("format version {found} is newer than this flowmap understands (up to {supported}); upgrade flowmap")]
    NewerVersion { found: u32, supported: u32 },
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("missing tensor `{0}` in the weights file")]
    MissingTensor(String),
    #[error("unexpected tensor `{0}` in the weights file (does the config match the weights?)")]
    UnexpectedTensor(String),
    #[error("tensor `{name}` has shape {found:?}, the config expects {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor `{name}` has dtype {dtype}; only F32 and F16 are supported")]
    Dtype { name: String, dtype: String },
    #[error("tensor `{name}` contains a non-finite value (NaN or infinity) at index {index}")]
    NonFinite { name: String, index: usize },
    #[error("invalid argument: {0}")]
    Argument(String),
    #[error("no GPU adapter found ({0})")]
    NoAdapter(String),
    #[error("GPU error: {0}")]
    Gpu(String),
    /// The device lacks a feature that was asked for explicitly (e.g. `--precision f16`).
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("the GPU ran out of memory ({0})")]
    GpuOutOfMemory(String),
    /// A kernel tuning file (`flowmap tune`) that cannot be used here.
    #[error("kernel tuning: {0}")]
    Tuning(String),
    #[error("output error: {0}")]
    Output(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
