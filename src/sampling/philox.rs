//! A1111's "NV" noise source: a CPU imitation of `torch.randn(..., device="cuda")` built on the
//! Philox4x32-10 counter-based generator (A1111 `modules/rng_philox.py`; see docs/sampling.md,
//! *Noise sources*).
//!
//! A1111 makes this its default random source so that a seed gives the same image on any GPU
//! vendor (or none). Users who copy an A1111 infotext with `RNG: NV` expect our image to start
//! from the same noise, so this reproduces A1111's generator, not torch's CUDA kernel: each
//! `randn` call uses a fresh counter block (`offset` advances by one per call, whatever the
//! number of values), element `i` of a call is the first Box–Muller output of the Philox block at
//! counter `[offset, 0, i, 0]`, and the second output (and words 2, 3) are discarded.

/// Philox multipliers (Salmon et al. 2011, the values CUDA's curand uses).
const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
/// Weyl key increments (golden ratio and √3 − 1 in 32-bit fixed point).
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;
/// Rounds of the "-10" variant.
const ROUNDS: usize = 10;

/// One Philox round: two 32×32→64 products, then the word permutation with the key mixed in.
fn round(c: [u32; 4], k: [u32; 2]) -> [u32; 4] {
    let p0 = u64::from(c[0]) * u64::from(M0);
    let p1 = u64::from(c[2]) * u64::from(M1);
    let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
    let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
    [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0]
}

/// The Philox4x32-10 block function: ten rounds, the key bumped by (W0, W1) between rounds.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for r in 0..ROUNDS {
        if r > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        c = round(c, k);
    }
    c
}

/// A1111's uniform scale: the float32 literal `2.3283064e-10` (≈ 2⁻³², but the rounded
/// decimal, not the exact power), widened to f64 because numpy promotes uint32 × float32 to
/// float64.
fn two_pow32_inv() -> f64 {
    f64::from(2.328_306_4e-10_f32)
}

/// A1111's angle scale: the Python-double product `2.3283064e-10 * 6.2831855` narrowed to
/// float32 (it is stored in a float32 array), then widened again by numpy's promotion.
fn two_pow32_inv_2pi() -> f64 {
    f64::from((2.328_306_4e-10_f64 * 6.283_185_5_f64) as f32)
}

/// First Box–Muller output from two Philox words, evaluated in f64 as numpy does and narrowed to
/// f32 at the end. The half-step offsets keep `u` strictly inside (0, 1), so `ln u` is finite.
fn box_muller(x: u32, y: u32) -> f32 {
    let a = two_pow32_inv();
    let b = two_pow32_inv_2pi();
    // `two_pow32_inv / 2` is a float32 halving (exact), then promoted.
    let u = f64::from(x) * a + a / 2.0;
    let v = f64::from(y) * b + b / 2.0;
    let s = (-2.0 * u.ln()).sqrt();
    (s * v.sin()) as f32
}

/// One "NV" generator, as A1111's `rng_philox.Generator(seed)`. Cloning copies the position.
#[derive(Clone)]
pub struct NvRng {
    seed: u64,
    /// Number of `randn` calls made so far: counter word 0 of the next call.
    offset: u32,
}

impl std::fmt::Debug for NvRng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvRng")
            .field("seed", &self.seed)
            .field("offset", &self.offset)
            .finish()
    }
}

impl NvRng {
    /// A generator for `seed`. All 64 bits are used (key = `[lo32, hi32]`), unlike torch's CPU
    /// generator, because A1111 fills a uint64 key array with the seed.
    pub fn new(seed: u64) -> Self {
        Self { seed, offset: 0 }
    }

    /// The seed this generator was created with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// `n` standard normal float32 values, as A1111's `Generator.randn(shape)` for any shape
    /// with `n` elements (C order). Every call, even an empty one, advances the offset by one,
    /// as in A1111. The element index is a 32-bit counter word, so it wraps past 2³² values per
    /// call exactly as A1111's uint32 `arange` does (far beyond any latent size).
    pub fn randn(&mut self, n: usize) -> Vec<f32> {
        let key = [self.seed as u32, (self.seed >> 32) as u32];
        let offset = self.offset;
        self.offset = self.offset.wrapping_add(1);
        (0..n)
            .map(|i| {
                let g = philox4x32_10([offset, 0, i as u32, 0], key);
                box_muller(g[0], g[1])
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random123's published known-answer test for Philox4x32-10 (`kat_vectors`): counter and
    /// key all ones.
    #[test]
    fn philox_known_answer() {
        let out = philox4x32_10([u32::MAX; 4], [u32::MAX; 2]);
        assert_eq!(out, [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]);
        let out = philox4x32_10([0; 4], [0; 2]);
        assert_eq!(out, [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]);
    }

    /// The expected output in A1111's `rng_philox.py` docstring: seed 0, shape (3, 4). The
    /// docstring's digits are themselves up to 2.6e-7 away from what A1111's code gives with
    /// numpy 2.4 (element 8: −1.07454231 printed, −1.07454205 computed), hence 3e-7 here; the
    /// bit-exact comparison with the numpy algorithm is in `tests/noise.rs`.
    #[test]
    fn a1111_docstring_values() {
        let got = NvRng::new(0).randn(12);
        let want = [
            -0.924_662_59,
            -0.425_344_15,
            -2.643_845_7,
            0.145_183_88,
            -0.120_866_47,
            -0.579_725_64,
            -0.622_851_22,
            -0.328_387_09,
            -1.074_542_31,
            -0.363_144_07,
            -1.671_050_67,
            2.265_504_97,
        ];
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!((f64::from(*a) - b).abs() <= 3e-7, "{i}: {a} vs {b}");
        }
    }

    #[test]
    fn offset_advances_per_call() {
        let mut g = NvRng::new(7);
        let a = g.randn(8);
        let b = g.randn(8);
        assert_ne!(a, b);
        let _ = g.randn(0);
        let mut h = NvRng::new(7);
        h.randn(1);
        h.randn(1);
        h.randn(3);
        // Fourth call on both: offset 3, regardless of earlier sizes.
        assert_eq!(g.randn(4), h.randn(4));
    }
}
