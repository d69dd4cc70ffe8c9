//! IDX files (the MNIST format): a big-endian header `0 0 type ndim`, `ndim` u32 sizes, then the
//! values. Gzipped files (`.gz`) are inflated on the fly. Images are scaled from u8 [0, 255] to
//! [−1, 1], the model space of METHOD §1.

use flate2::read::GzDecoder;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum IdxError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Malformed { path: PathBuf, problem: String },
    #[error("{images} has {n_images} images but {labels} has {n_labels} labels")]
    CountMismatch {
        images: PathBuf,
        n_images: usize,
        labels: PathBuf,
        n_labels: usize,
    },
}

/// A decoded u8 IDX array.
#[derive(Debug, Clone, PartialEq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// The largest IDX body accepted (4 GiB: the full MNIST training images are 47 MB). A gzipped
/// file is inflated only up to this, so a small file that inflates without end is refused.
pub const MAX_IDX_BYTES: u64 = 1 << 32;

/// Reads an unsigned-byte IDX file (gzipped or not).
pub fn read_idx(path: &Path) -> Result<IdxArray, IdxError> {
    let raw = std::fs::read(path).map_err(|source| IdxError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_idx(&raw).map_err(|problem| IdxError::Malformed {
        path: path.to_path_buf(),
        problem,
    })
}

/// Decodes the bytes of an IDX file, inflating them first when they are gzipped; the error says
/// what is wrong. Memory grows with the bytes actually present, never with a size a header
/// claims.
pub fn decode_idx(raw: &[u8]) -> Result<IdxArray, String> {
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return parse_idx(raw);
    }
    let mut out = Vec::new();
    GzDecoder::new(raw)
        .take(MAX_IDX_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("cannot inflate the gzip stream: {e}"))?;
    if out.len() as u64 > MAX_IDX_BYTES {
        return Err(format!(
            "inflates to more than {MAX_IDX_BYTES} bytes, the most an IDX file may hold"
        ));
    }
    parse_idx(&out)
}

/// Parses IDX bytes; the error says what is wrong.
pub fn parse_idx(b: &[u8]) -> Result<IdxArray, String> {
    if b.len() < 4 {
        return Err(format!("{} bytes is too short for an IDX header", b.len()));
    }
    if b[0] != 0 || b[1] != 0 {
        return Err("not an IDX file (the magic number must start with two zero bytes)".into());
    }
    if b[2] != 0x08 {
        return Err(format!(
            "element type 0x{:02x} is not unsigned byte (0x08)",
            b[2]
        ));
    }
    let ndim = b[3] as usize;
    if ndim == 0 {
        return Err("zero dimensions".into());
    }
    let header = 4 + 4 * ndim;
    if b.len() < header {
        return Err(format!(
            "truncated header: {ndim} dimensions need {header} bytes, file has {}",
            b.len()
        ));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| {
            u32::from_be_bytes([b[4 + 4 * i], b[5 + 4 * i], b[6 + 4 * i], b[7 + 4 * i]]) as usize
        })
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("dimensions overflow")?;
    let body = &b[header..];
    if body.len() != count {
        return Err(format!(
            "dimensions {dims:?} need {count} data bytes, the file has {}",
            body.len()
        ));
    }
    Ok(IdxArray {
        dims,
        data: body.to_vec(),
    })
}

/// Images in [−1, 1] (N × 1 × H × W, flattened) with their labels.
#[derive(Debug, Clone)]
pub struct ImageSet {
    pub n: usize,
    pub height: usize,
    pub width: usize,
    pub pixels: Vec<f32>,
    pub labels: Vec<u8>,
}

/// Loads an image file and its label file, checking that they belong together.
pub fn load_images(images: &Path, labels: &Path) -> Result<ImageSet, IdxError> {
    let img = read_idx(images)?;
    let lab = read_idx(labels)?;
    if img.dims.len() != 3 {
        return Err(IdxError::Malformed {
            path: images.to_path_buf(),
            problem: format!("expected 3 dimensions (N, H, W), found {:?}", img.dims),
        });
    }
    if lab.dims.len() != 1 {
        return Err(IdxError::Malformed {
            path: labels.to_path_buf(),
            problem: format!("expected 1 dimension (N), found {:?}", lab.dims),
        });
    }
    if img.dims[0] != lab.dims[0] {
        return Err(IdxError::CountMismatch {
            images: images.to_path_buf(),
            n_images: img.dims[0],
            labels: labels.to_path_buf(),
            n_labels: lab.dims[0],
        });
    }
    if let Some(bad) = lab.data.iter().find(|&&l| l > 9) {
        return Err(IdxError::Malformed {
            path: labels.to_path_buf(),
            problem: format!("label {bad} is not a digit 0-9"),
        });
    }
    Ok(ImageSet {
        n: img.dims[0],
        height: img.dims[1],
        width: img.dims[2],
        pixels: img.data.iter().map(|&p| p as f32 / 127.5 - 1.0).collect(),
        labels: lab.data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            b.extend(d.to_be_bytes());
        }
        b.extend(data);
        b
    }

    #[test]
    fn parses_and_rejects_with_reasons() {
        let a = parse_idx(&idx(&[2, 3], &[1, 2, 3, 4, 5, 6])).unwrap();
        assert_eq!(a.dims, [2, 3]);
        assert!(parse_idx(&idx(&[2, 3], &[1, 2, 3]))
            .unwrap_err()
            .contains("need 6 data bytes"));
        assert!(parse_idx(&[1, 2, 3, 4, 5])
            .unwrap_err()
            .contains("not an IDX"));
        let mut f = idx(&[1], &[0]);
        f[2] = 0x0d;
        assert!(parse_idx(&f).unwrap_err().contains("not unsigned byte"));
        assert!(parse_idx(&[0, 0, 8, 3, 0])
            .unwrap_err()
            .contains("truncated header"));
    }

    #[test]
    fn bundled_mnist_loads_scaled_and_labelled() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
        let test = load_images(
            &root.join("test-images-idx3-ubyte.gz"),
            &root.join("test-labels-idx1-ubyte.gz"),
        );
        let set = test.unwrap();
        assert_eq!((set.n, set.height, set.width), (1000, 28, 28));
        assert!(set.pixels.iter().all(|p| (-1.0..=1.0).contains(p)));
        let mut counts = [0usize; 10];
        set.labels.iter().for_each(|&l| counts[l as usize] += 1);
        assert_eq!(counts, [100; 10]);
        let mismatch = load_images(
            &root.join("test-images-idx3-ubyte.gz"),
            &root.join("train-labels-idx1-ubyte.gz"),
        );
        assert!(matches!(mismatch, Err(IdxError::CountMismatch { .. })));
    }
}
