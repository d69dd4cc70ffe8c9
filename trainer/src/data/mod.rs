//! Training data: MNIST-format IDX files and the 2-D toy distributions (METHOD §7).

pub mod idx;
pub mod toy2d;
