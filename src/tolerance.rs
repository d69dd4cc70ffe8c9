//! The one measure of "close enough" between two computations of the same values (a kernel and
//! its CPU reference, the page and the native sampler, burn and the sampler): the worst absolute
//! difference relative to the reference's scale. On every target, wasm included.

/// Panics unless [`scaled_error`] of `got` against `want` is within `tol`, naming `what`, the
/// worst element and the values there. The assertion of the parity tests (native, wasm, trainer).
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let (worst, scale) = scaled_error(got, want);
    if worst.is_nan() || worst > tol * scale {
        let at = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .enumerate()
            .fold((0, -1.0f32), |(i, m), (j, d)| {
                if d.is_nan() || d > m {
                    (j, if d.is_nan() { f32::INFINITY } else { d })
                } else {
                    (i, m)
                }
            })
            .0;
        panic!(
            "{what}: max abs error {worst} at {at} (got {} vs want {}) exceeds {tol} × {scale}",
            got[at], want[at]
        );
    }
}

/// Worst relative difference of `got` against `want`: max |a − b| / max(1, max |b|) (NaN counts
/// as infinitely wrong). The measure of every GPU parity test and of the GPU report.
pub fn scaled_error(got: &[f32], want: &[f32]) -> (f32, f32) {
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| {
            let d = (a - b).abs();
            if d.is_nan() {
                f32::INFINITY
            } else {
                d
            }
        })
        .fold(0.0f32, f32::max);
    let worst = if got.len() == want.len() {
        worst
    } else {
        f32::INFINITY
    };
    (worst, scale)
}
