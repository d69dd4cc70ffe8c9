//! 2-D toy distributions. The checkerboard is the 2025 self-distillation paper's (METHOD §7):
//! a 4×4 board on [−1, 1]², points uniform in the squares with (i + j) even.

use flowmap::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toy {
    Checkerboard,
    EightGaussians,
    TwoMoons,
    Spiral,
}

impl Toy {
    pub const ALL: [Toy; 4] = [
        Toy::Checkerboard,
        Toy::EightGaussians,
        Toy::TwoMoons,
        Toy::Spiral,
    ];

    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown 2-D data set `{s}` (checkerboard, eight-gaussians, two-moons, spiral)"
                )
            })
    }

    pub fn name(self) -> &'static str {
        match self {
            Toy::Checkerboard => "checkerboard",
            Toy::EightGaussians => "eight-gaussians",
            Toy::TwoMoons => "two-moons",
            Toy::Spiral => "spiral",
        }
    }

    /// `n` points, interleaved x, y.
    pub fn sample(self, n: usize, rng: &mut Rng) -> Vec<f32> {
        let mut out = Vec::with_capacity(2 * n);
        for _ in 0..n {
            let (x, y) = match self {
                Toy::Checkerboard => {
                    // Pick one of the 8 white squares, then a uniform point inside it.
                    let k = (rng.uniform() * 8.0) as usize;
                    let (i, row) = (k % 4, k / 4 * 2);
                    let j = row + (i % 2);
                    let cell = 0.5;
                    (
                        -1.0 + cell * (i as f64 + rng.uniform()),
                        -1.0 + cell * (j as f64 + rng.uniform()),
                    )
                }
                Toy::EightGaussians => {
                    let k = (rng.uniform() * 8.0) as usize;
                    let a = std::f64::consts::TAU * k as f64 / 8.0;
                    (
                        a.cos() + 0.1 * rng.normal() as f64,
                        a.sin() + 0.1 * rng.normal() as f64,
                    )
                }
                Toy::TwoMoons => {
                    let a = std::f64::consts::PI * rng.uniform();
                    let (x, y) = if rng.uniform() < 0.5 {
                        (a.cos(), a.sin())
                    } else {
                        (1.0 - a.cos(), 0.5 - a.sin())
                    };
                    (
                        0.8 * (x - 0.5) + 0.05 * rng.normal() as f64,
                        0.8 * (y - 0.25) + 0.05 * rng.normal() as f64,
                    )
                }
                Toy::Spiral => {
                    let r = rng.uniform().sqrt();
                    let a = 3.0 * std::f64::consts::TAU * r;
                    (
                        r * a.cos() + 0.03 * rng.normal() as f64,
                        r * a.sin() + 0.03 * rng.normal() as f64,
                    )
                }
            };
            out.push(x as f32);
            out.push(y as f32);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkerboard_fills_only_even_squares_evenly() {
        let pts = Toy::Checkerboard.sample(80_000, &mut Rng::new(1));
        let mut counts = [[0usize; 4]; 4];
        for p in pts.chunks(2) {
            assert!(p[0] >= -1.0 && p[0] < 1.0 && p[1] >= -1.0 && p[1] < 1.0);
            let (i, j) = (((p[0] + 1.0) * 2.0) as usize, ((p[1] + 1.0) * 2.0) as usize);
            counts[i][j] += 1;
        }
        for (i, row) in counts.iter().enumerate() {
            for (j, &c) in row.iter().enumerate() {
                if (i + j) % 2 == 0 {
                    assert!(
                        (c as f64 - 10_000.0).abs() < 500.0,
                        "square ({i},{j}) has {c}"
                    );
                } else {
                    assert_eq!(c, 0, "square ({i},{j}) must be empty");
                }
            }
        }
    }

    #[test]
    fn every_set_is_finite_and_bounded() {
        for toy in Toy::ALL {
            let pts = toy.sample(5000, &mut Rng::new(2));
            assert!(
                pts.iter().all(|v| v.is_finite() && v.abs() < 2.0),
                "{}",
                toy.name()
            );
            assert_eq!(Toy::parse(toy.name()), Ok(toy));
        }
    }
}
