//! Writing results: a PNG grid of images, a scatter-plot PNG of 2-D points, raw `.npy`. Every
//! file goes to a temporary name beside the target and is renamed into place, so a failure never
//! leaves a half-written file.

use crate::config::{DataKind, DataSpec};
use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let werr = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::Output(format!("{} is not a file path", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(werr)
}

/// Removes the temporary files that [`write_atomic`] leaves beside `path` when its process is
/// killed mid-write (`.NAME.PID.tmp`); call it before writing `path` again. The file at `path`
/// itself is untouched: it is always either the previous whole file or the new one.
pub fn remove_stale_temporaries(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!(".{}.", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name();
        let n = n.to_string_lossy();
        if n.starts_with(&prefix) && n.ends_with(".tmp") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The formats `flowmap sample` writes, chosen by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Png,
    Npy,
}

impl OutputFormat {
    pub fn from_path(path: &Path) -> Result<Self> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref()
        {
            Some("png") => Ok(OutputFormat::Png),
            Some("npy") => Ok(OutputFormat::Npy),
            _ => Err(Error::Argument(format!(
                "output {} must end in .png (grid or scatter plot) or .npy (raw samples)",
                path.display()
            ))),
        }
    }
}

/// Encodes samples (already in data range, `n × shape`) as the file the path asks for.
pub fn encode(samples: &[f32], n: usize, data: &DataSpec, format: OutputFormat) -> Result<Vec<u8>> {
    let mut shape = vec![n];
    shape.extend(&data.shape);
    match format {
        OutputFormat::Npy => Ok(npy(samples, &shape)),
        OutputFormat::Png => match data.kind {
            DataKind::Image => image_grid(samples, n, &data.shape, data.range),
            DataKind::Points => scatter(samples, n, data.shape[0], data.range),
        },
    }
}

/// A float32 little-endian `.npy` (format version 1.0).
pub fn npy(data: &[f32], shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is padded to a multiple of 64.
    let pad = (64 - (10 + header.len() + 1) % 64) % 64;
    header.push_str(&" ".repeat(pad));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + 4 * data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

fn encode_png(
    width: usize,
    height: usize,
    color: png::ColorType,
    pixels: &[u8],
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width as u32, height as u32);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc
            .write_header()
            .map_err(|e| Error::Output(e.to_string()))?;
        w.write_image_data(pixels)
            .map_err(|e| Error::Output(e.to_string()))?;
    }
    Ok(out)
}

/// Images tiled in a near-square grid with a 2-pixel gutter, each pixel scaled ×2.
pub fn image_grid(samples: &[f32], n: usize, shape: &[usize], range: [f32; 2]) -> Result<Vec<u8>> {
    image_rows(samples, n, (n as f64).sqrt().ceil() as usize, shape, range)
}

/// Images tiled `cols` to a row (row-major), with a 2-pixel gutter, each pixel scaled ×2.
pub fn image_rows(
    samples: &[f32],
    n: usize,
    cols: usize,
    shape: &[usize],
    range: [f32; 2],
) -> Result<Vec<u8>> {
    let (c, h, w) = (shape[0], shape[1], shape[2]);
    let cols = cols.clamp(1, n.max(1));
    if c != 1 && c != 3 {
        return Err(Error::Output(format!(
            "cannot draw {c}-channel images as PNG; use .npy"
        )));
    }
    const ZOOM: usize = 2;
    const GAP: usize = 2;
    let rows = n.div_ceil(cols);
    let (cw, ch) = (w * ZOOM + GAP, h * ZOOM + GAP);
    let (width, height) = (cols * cw + GAP, rows * ch + GAP);
    let mut px = vec![40u8; width * height * c];
    let to_u8 =
        |v: f32| (((v - range[0]) / (range[1] - range[0])).clamp(0.0, 1.0) * 255.0).round() as u8;
    for i in 0..n {
        let (gx, gy) = (GAP + (i % cols) * cw, GAP + (i / cols) * ch);
        let img = &samples[i * c * h * w..(i + 1) * c * h * w];
        for y in 0..h * ZOOM {
            for x in 0..w * ZOOM {
                for k in 0..c {
                    let v = img[(k * h + y / ZOOM) * w + x / ZOOM];
                    px[((gy + y) * width + gx + x) * c + k] = to_u8(v);
                }
            }
        }
    }
    let color = if c == 1 {
        png::ColorType::Grayscale
    } else {
        png::ColorType::Rgb
    };
    encode_png(width, height, color, &px)
}

/// A 512×512 density scatter plot of the first two coordinates over `range`², log-shaded.
pub fn scatter(samples: &[f32], n: usize, dim: usize, range: [f32; 2]) -> Result<Vec<u8>> {
    if dim < 2 {
        return Err(Error::Output(
            "a scatter plot needs at least 2 dimensions; use .npy".into(),
        ));
    }
    const SIZE: usize = 512;
    let mut counts = vec![0u32; SIZE * SIZE];
    let span = range[1] - range[0];
    for p in samples.chunks_exact(dim).take(n) {
        let fx = (p[0] - range[0]) / span;
        let fy = (range[1] - p[1]) / span; // y up
        if (0.0..1.0).contains(&fx) && (0.0..1.0).contains(&fy) {
            counts[(fy * SIZE as f32) as usize * SIZE + (fx * SIZE as f32) as usize] += 1;
        }
    }
    let max = counts.iter().copied().max().unwrap_or(0).max(1) as f32;
    let mut px = vec![255u8; SIZE * SIZE * 3];
    for (i, &c) in counts.iter().enumerate() {
        if c > 0 {
            // Darker blue for denser cells; a single point is still clearly visible.
            let a = 0.35 + 0.65 * ((c as f32).ln_1p() / max.ln_1p());
            px[i * 3] = (255.0 * (1.0 - a)) as u8;
            px[i * 3 + 1] = (255.0 * (1.0 - 0.8 * a)) as u8;
            px[i * 3 + 2] = (255.0 * (1.0 - 0.4 * a)) as u8;
        }
    }
    encode_png(SIZE, SIZE, png::ColorType::Rgb, &px)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_parsable() {
        let b = npy(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[3, 2]);
        let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
        assert!(header.contains("'shape': (3, 2)") && header.ends_with('\n'));
        assert_eq!(b.len(), 10 + hlen + 24);
        assert!(npy(&[1.0], &[1]).windows(4).any(|w| w == b"(1,)"));
    }

    #[test]
    fn atomic_write_leaves_nothing_on_failure() {
        let dir = std::env::temp_dir().join(format!("flowmap-out-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("missing-dir").join("x.png");
        assert!(write_atomic(&target, b"abc").is_err());
        let ok = dir.join("ok.bin");
        write_atomic(&ok, b"abc").unwrap();
        assert_eq!(std::fs::read(&ok).unwrap(), b"abc");
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
