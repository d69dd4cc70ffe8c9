//! `cargo run -p trainer -- …`: the training side of flowmap. This build provides the data layer
//! (`trainer data`): the IDX reader and the 2-D generators that training reads from.

mod data;

use anyhow::{bail, Context, Result};
use data::idx::load_images;
use data::toy2d::Toy;
use flowmap::rng::Rng;
use std::path::PathBuf;

const USAGE: &str = "usage:
  trainer data mnist [IMAGES.idx[.gz] LABELS.idx[.gz]]   summarise an IDX image set (default: the bundled train split)
  trainer data toy NAME [N] [OUT.npy]                     draw N points (default 10000) of checkerboard, eight-gaussians, two-moons or spiral";

fn main() -> std::process::ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<()> {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["data", "mnist", rest @ ..] => {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data");
            let (images, labels) = match rest {
                [] => (
                    root.join("train-images-idx3-ubyte.gz"),
                    root.join("train-labels-idx1-ubyte.gz"),
                ),
                [i, l] => (PathBuf::from(i), PathBuf::from(l)),
                _ => bail!("{USAGE}"),
            };
            let set = load_images(&images, &labels).context("loading the image set")?;
            let mut counts = [0usize; 10];
            set.labels.iter().for_each(|&l| counts[l as usize] += 1);
            let mean = set.pixels.iter().map(|&p| p as f64).sum::<f64>() / set.pixels.len() as f64;
            println!(
                "{}: {} images of {}×{}, pixel mean {mean:.4} in [−1, 1]",
                images.display(),
                set.n,
                set.height,
                set.width
            );
            println!("labels per digit: {counts:?}");
            Ok(())
        }
        ["data", "toy", name, rest @ ..] => {
            let toy = Toy::parse(name).map_err(anyhow::Error::msg)?;
            let n: usize = match rest.first() {
                Some(s) => s
                    .parse()
                    .with_context(|| format!("`{s}` is not a point count"))?,
                None => 10_000,
            };
            if n == 0 {
                bail!("the point count must be at least 1");
            }
            let pts = toy.sample(n, &mut Rng::new(0));
            let (mx, my) = pts.chunks(2).fold((0.0f64, 0.0f64), |(x, y), p| {
                (x + p[0] as f64, y + p[1] as f64)
            });
            let var = pts.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / pts.len() as f64;
            println!(
                "{}: {n} points, mean ({:.3}, {:.3}), std {:.3}",
                toy.name(),
                mx / n as f64,
                my / n as f64,
                var.sqrt()
            );
            if let Some(out) = rest.get(1) {
                let path = PathBuf::from(out);
                flowmap::output::write_atomic(&path, &flowmap::output::npy(&pts, &[n, 2]))?;
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        _ => bail!("{USAGE}"),
    }
}
