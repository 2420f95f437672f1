//! A1111's variation seed ("subseed"): the initial noise of an image is a spherical
//! interpolation between the noise of its seed and the noise of a second seed, so that a small
//! strength gives a nearby variation of the same image.
//!
//! Users paste A1111 infotexts (`Variation seed: …, Variation seed strength: …`) and expect the
//! same picture, so this follows A1111's `slerp(val, low, high)` (`modules/rng.py`, called from
//! `ImageRNG.first` as `slerp(strength, noise, subnoise)` on each image's `[C, H, W]` noise) with
//! its quirks:
//!
//! * The "vectors" are the columns along dim 1 (H) of the `[C, H, W]` tensor, one angle per
//!   `(c, w)`, not the whole tensor.
//! * If the mean cosine over all columns exceeds 0.9995, A1111 switches to a linear blend
//!   `low·val + high·(1 − val)` whose weights are the reverse of the spherical branch's
//!   (strength weights the *seed* noise there). Kept as written, since that is what A1111 users'
//!   images came from.
//! * A1111 skips the interpolation entirely when the strength is 0.
//!
//! Element-wise steps are float32 as in torch (Python floats rounded to float32 before they
//! multiply a tensor); the two reductions (norm, dot) are accumulated in f64 and rounded, which
//! agrees with torch's float32 reductions to a few ulp. Two deliberate differences, only where
//! A1111 produces NaN: cosines are clamped to [−1, 1] before `acos`, and a column with zero angle
//! (or zero norm) uses the limit weights `(1 − val, val)` instead of dividing 0 by 0.

/// Cosine mean above which A1111 blends linearly instead of spherically.
const LINEAR_THRESHOLD: f64 = 0.9995;

/// `noise` (the seed's) and `subnoise` (the variation seed's) blended with `strength` exactly as
/// A1111 does for one image: 0 gives `noise`, 1 gives `subnoise`. `shape` is that image's noise
/// shape, normally `[C, H, W]`; the interpolation runs along its second axis. A shape of rank
/// below 2 is treated as having leading axes of length 1.
///
/// # Panics
/// If `noise`, `subnoise` and `shape` do not describe the same number of elements: they come
/// from the same generator call sites, so a mismatch is a bug in the caller, not bad input.
pub fn slerp_noise(strength: f32, noise: &[f32], subnoise: &[f32], shape: &[usize]) -> Vec<f32> {
    let numel: usize = shape.iter().product();
    assert_eq!(
        noise.len(),
        numel,
        "slerp_noise: noise length vs shape {shape:?}"
    );
    assert_eq!(
        subnoise.len(),
        numel,
        "slerp_noise: subnoise length vs shape {shape:?}"
    );
    if strength == 0.0 || numel == 0 {
        return noise.to_vec();
    }
    let (outer, mid, inner) = match shape {
        [] => (1, 1, 1),
        [n] => (1, *n, 1),
        [a, b, rest @ ..] => (*a, *b, rest.iter().product()),
    };
    let val = f64::from(strength);
    let val32 = strength;
    let one_minus32 = (1.0 - val) as f32;

    // Per column (o, i): the cosine of the angle between the unit columns of `noise` and
    // `subnoise`, formed as A1111 does (normalise each, multiply, sum).
    let columns = outer * inner;
    let mut dots = vec![0f32; columns];
    for o in 0..outer {
        for i in 0..inner {
            let at = |h: usize| o * mid * inner + h * inner + i;
            let norm = |x: &[f32]| {
                ((0..mid).map(|h| f64::from(x[at(h)]).powi(2)).sum::<f64>()).sqrt() as f32
            };
            let (nl, nh) = (norm(noise), norm(subnoise));
            let dot: f64 = (0..mid)
                .map(|h| f64::from((noise[at(h)] / nl) * (subnoise[at(h)] / nh)))
                .sum();
            dots[o * inner + i] = dot as f32;
        }
    }
    let mean = dots.iter().map(|&d| f64::from(d)).sum::<f64>() / columns as f64;
    // `dot.mean()` is a float32 tensor compared with a Python float.
    if f64::from(mean as f32) > LINEAR_THRESHOLD {
        return noise
            .iter()
            .zip(subnoise)
            .map(|(&l, &h)| l * val32 + h * one_minus32)
            .collect();
    }

    // Per column weights of `noise` and `subnoise`.
    let weights: Vec<(f32, f32)> = dots
        .iter()
        .map(|&d| {
            let omega = sin_cos_f32::acos(d.clamp(-1.0, 1.0));
            let so = sin_cos_f32::sin(omega);
            if so == 0.0 || !so.is_finite() {
                return (one_minus32, val32);
            }
            let wl = sin_cos_f32::sin(one_minus32 * omega) / so;
            let wh = sin_cos_f32::sin(val32 * omega) / so;
            (wl, wh)
        })
        .collect();
    let mut out = vec![0f32; numel];
    for o in 0..outer {
        for h in 0..mid {
            for i in 0..inner {
                let k = o * mid * inner + h * inner + i;
                let (wl, wh) = weights[o * inner + i];
                out[k] = wl * noise[k] + wh * subnoise[k];
            }
        }
    }
    out
}

/// float32 `acos`/`sin` as torch's (SLEEF, ≤ 1 ulp) are closest to: evaluated in f64 and
/// rounded once, i.e. correctly rounded in all but vanishingly rare cases.
mod sin_cos_f32 {
    pub fn acos(x: f32) -> f32 {
        f64::from(x).acos() as f32
    }

    pub fn sin(x: f32) -> f32 {
        f64::from(x).sin() as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo(n: usize, k: u32) -> Vec<f32> {
        // A deterministic spread of values; no RNG needed for the identities below.
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ k) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    #[test]
    fn endpoints() {
        let shape = [4, 8, 6];
        let (a, b) = (pseudo(192, 1), pseudo(192, 77));
        assert_eq!(slerp_noise(0.0, &a, &b, &shape), a);
        let one = slerp_noise(1.0, &a, &b, &shape);
        for (x, y) in one.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-6, "{x} vs {y}");
        }
    }

    #[test]
    fn degenerate_shapes_do_not_panic() {
        assert!(slerp_noise(0.5, &[], &[], &[0, 4, 4]).is_empty());
        let v = slerp_noise(0.5, &[1.0, 2.0], &[2.0, -1.0], &[2]);
        assert!(v.iter().all(|x| x.is_finite()));
        // Identical columns in one place, different elsewhere: no NaN from 0/0.
        let mut a = pseudo(32, 3);
        let b = pseudo(32, 9);
        a[..4].copy_from_slice(&b[..4]);
        let v = slerp_noise(0.4, &a, &b, &[2, 4, 4]);
        assert!(v.iter().all(|x| x.is_finite()));
        // All-zero noise (zero norms) gives finite values too.
        let z = vec![0.0; 16];
        assert!(slerp_noise(0.4, &z, &b[..16], &[1, 4, 4])
            .iter()
            .all(|x| x.is_finite()));
    }
}
