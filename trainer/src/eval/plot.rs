//! The report's figures, drawn with plotters: the quality-versus-NFE chart (title, axes with
//! ticks and labels, log2 NFE on x, a legend naming each method, the floor as a labelled dashed
//! line) and titles and row labels on the sample pictures (K and the method). Text is set in
//! DejaVu Sans, bundled in `trainer/assets/` (its licence beside it), so a figure looks the same
//! on every machine and needs no system fonts.

use super::Row;
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use std::path::Path;
use std::sync::Once;

const FONT: &str = "sans-serif";

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
];

fn fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bundled file is a valid TrueType font; a failure here would be a build defect.
        let _ = register_font(
            FONT,
            FontStyle::Normal,
            include_bytes!("../../assets/DejaVuSans.ttf"),
        );
    });
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing a figure: {e:?}")
}

fn encode_rgb(px: &[u8], w: u32, h: u32) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header()?.write_image_data(px)?;
    }
    Ok(out)
}

/// Quality (`metric`, lower is better) against log2 NFE, one line per row of the table, the floor
/// (the metric of real data against real data) dashed.
pub fn quality_vs_nfe(
    path: &Path,
    title: &str,
    metric: &str,
    ks: &[usize],
    rows: &[Row],
    floor: f64,
) -> Result<()> {
    fonts();
    let (w, h) = (900u32, 560u32);
    let mut px = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut px, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let xs: Vec<f64> = ks.iter().map(|&k| (k as f64).log2()).collect();
        let xmin = xs.iter().cloned().fold(f64::MAX, f64::min);
        let xmax = xs.iter().cloned().fold(f64::MIN, f64::max).max(xmin + 1.0);
        let ymax = rows
            .iter()
            .flat_map(|r| r.cells.iter().flatten().map(|c| c.primary))
            .chain([floor])
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max)
            .max(1e-9)
            * 1.08;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 22))
            .margin(14)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d((xmin - 0.2)..(xmax + 0.2), 0.0..ymax)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("log2 NFE (network evaluations per sample)")
            .y_desc(metric)
            .x_labels((xmax - xmin) as usize + 1)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.3}"))
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 16))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(plot_err)?;
        for (i, r) in rows.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let pts: Vec<(f64, f64)> = xs
                .iter()
                .zip(&r.cells)
                .filter_map(|(&x, c)| c.as_ref().map(|m| (x, m.primary)))
                .filter(|p| p.1.is_finite())
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(plot_err)?
                .label(r.label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(3))
                });
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(plot_err)?;
        }
        let grey = RGBColor(120, 120, 120);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(xmin - 0.2, floor), (xmax + 0.2, floor)],
                8,
                5,
                grey.stroke_width(2),
            ))
            .map_err(plot_err)?
            .label(format!("floor: real data against real data ({floor:.4})"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], grey.stroke_width(2))
            });
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font((FONT, 14))
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    flowmap::output::write_atomic(path, &encode_rgb(&px, w, h)?)?;
    Ok(())
}

/// Decodes a PNG (grey or RGB, 8-bit) into RGB pixels.
fn decode_rgb(png_bytes: &[u8]) -> Result<(Vec<u8>, u32, u32)> {
    let mut dec = png::Decoder::new(std::io::Cursor::new(png_bytes)).read_info()?;
    let mut buf = vec![0; dec.output_buffer_size().unwrap_or(0)];
    let info = dec.next_frame(&mut buf)?;
    let px = &buf[..info.buffer_size()];
    let rgb = match info.color_type {
        png::ColorType::Rgb => px.to_vec(),
        png::ColorType::Grayscale => px.iter().flat_map(|&v| [v, v, v]).collect(),
        png::ColorType::Rgba => px.chunks(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        other => return Err(anyhow!("cannot label a {other:?} PNG")),
    };
    Ok((rgb, info.width, info.height))
}

/// The picture `png_bytes` with `title` above it and, when `row_labels` is given, one label per
/// equal-height row to its left (e.g. "K = 4" for each row of an across-K strip).
pub fn labelled(png_bytes: &[u8], title: &str, row_labels: &[String]) -> Result<Vec<u8>> {
    fonts();
    let (img, iw, ih) = decode_rgb(png_bytes)?;
    let (top, left) = (34u32, if row_labels.is_empty() { 0 } else { 70 });
    let (w, h) = ((iw + left).max(320), ih + top);
    let mut px = vec![255u8; (w * h * 3) as usize];
    for y in 0..ih {
        let src = &img[(y * iw * 3) as usize..((y + 1) * iw * 3) as usize];
        let at = (((y + top) * w + left) * 3) as usize;
        px[at..at + src.len()].copy_from_slice(src);
    }
    {
        let root = BitMapBackend::with_buffer(&mut px, (w, h)).into_drawing_area();
        let style = TextStyle::from((FONT, 18).into_font()).color(&BLACK);
        root.draw(&Text::new(title.to_string(), (6, 8), style.clone()))
            .map_err(plot_err)?;
        let row_h = ih as f64 / row_labels.len().max(1) as f64;
        let small = TextStyle::from((FONT, 16).into_font()).color(&BLACK);
        for (i, l) in row_labels.iter().enumerate() {
            let y = top as f64 + row_h * (i as f64 + 0.5) - 8.0;
            root.draw(&Text::new(l.clone(), (6, y as i32), small.clone()))
                .map_err(plot_err)?;
        }
        root.present().map_err(plot_err)?;
    }
    encode_rgb(&px, w, h)
}
