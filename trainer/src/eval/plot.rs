//! A dependency-free line plot: quality versus log2(NFE), one colour per table row, the floor
//! as a dashed grey line. Axes and ticks only (labels live in the Markdown beside it).

use super::Row;
use anyhow::Result;
use std::path::Path;

pub const COLOR_NAMES: [&str; 8] = [
    "blue", "orange", "green", "red", "purple", "brown", "pink", "olive",
];
const COLORS: [[u8; 3]; 8] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [188, 189, 34],
];

pub fn quality_vs_nfe(path: &Path, ks: &[usize], rows: &[Row], floor: f64) -> Result<()> {
    let (w, h, m) = (640usize, 400usize, 40usize);
    let mut px = vec![255u8; w * h * 3];
    let put = |x: i64, y: i64, c: [u8; 3], px: &mut Vec<u8>| {
        if x >= 0 && y >= 0 && (x as usize) < w && (y as usize) < h {
            let i = (y as usize * w + x as usize) * 3;
            px[i..i + 3].copy_from_slice(&c);
        }
    };
    let values: Vec<f64> = rows
        .iter()
        .flat_map(|r| r.cells.iter().flatten().map(|c| c.primary))
        .chain([floor])
        .filter(|v| v.is_finite())
        .collect();
    let ymax = values.iter().cloned().fold(0.0f64, f64::max).max(1e-9) * 1.05;
    let xs: Vec<f64> = ks.iter().map(|&k| (k as f64).log2()).collect();
    let (xmin, xmax) = (
        xs.iter().cloned().fold(f64::MAX, f64::min),
        xs.iter().cloned().fold(f64::MIN, f64::max).max(xs[0] + 1.0),
    );
    let to_px = |x: f64, y: f64| -> (i64, i64) {
        let fx = (x - xmin) / (xmax - xmin);
        let fy = (y / ymax).clamp(0.0, 1.0);
        (
            (m as f64 + fx * (w - 2 * m) as f64) as i64,
            ((h - m) as f64 - fy * (h - 2 * m) as f64) as i64,
        )
    };
    // Axes and ticks.
    for x in m..w - m {
        put(x as i64, (h - m) as i64, [0, 0, 0], &mut px);
    }
    for y in m..h - m {
        put(m as i64, y as i64, [0, 0, 0], &mut px);
    }
    for &x in &xs {
        let (tx, ty) = to_px(x, 0.0);
        for d in 0..6 {
            put(tx, ty + d, [0, 0, 0], &mut px);
        }
    }
    // Floor, dashed.
    let (_, fy) = to_px(xmin, floor);
    for x in (m..w - m).filter(|x| (x / 6) % 2 == 0) {
        put(x as i64, fy, [150, 150, 150], &mut px);
    }
    for (ri, r) in rows.iter().enumerate() {
        let c = COLORS[ri % COLORS.len()];
        let pts: Vec<(i64, i64)> = xs
            .iter()
            .zip(&r.cells)
            .filter_map(|(&x, cell)| cell.as_ref().map(|m| to_px(x, m.primary)))
            .collect();
        for seg in pts.windows(2) {
            let ((x0, y0), (x1, y1)) = (seg[0], seg[1]);
            let steps = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
            for i in 0..=steps {
                let x = x0 + (x1 - x0) * i / steps;
                let y = y0 + (y1 - y0) * i / steps;
                for d in -1..=1 {
                    put(x, y + d, c, &mut px);
                }
            }
        }
        for &(x, y) in &pts {
            for dx in -3..=3 {
                for dy in -3..=3 {
                    put(x + dx, y + dy, c, &mut px);
                }
            }
        }
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w as u32, h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header()?.write_image_data(&px)?;
    }
    flowmap::output::write_atomic(path, &out)?;
    Ok(())
}
