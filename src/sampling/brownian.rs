//! The seeded Brownian tree that SDE samplers (DPM++ SDE, DPM++ 2M SDE, DPM++ 3M SDE) draw
//! their noise from, reproducing torchsde's `BrownianInterval` as k-diffusion, ComfyUI, A1111
//! and diffusers' `DPMSolverSDEScheduler(noise_sampler_seed=…)` build it (CPU, float32).
//!
//! Why a tree and not plain draws: these samplers ask for the Brownian increment between two
//! noise levels, and the answer must not depend on which other intervals were asked for before
//! (DPM++ SDE queries a midpoint, then the full step). torchsde makes the path a deterministic
//! function of the seed by building a dyadic tree over `[σ_min, σ_max]`: every node owns a seed
//! derived from the global entropy and the node's position (numpy `SeedSequence` with
//! `spawn_key = (path bits, depth)`), the root increment is a normal draw scaled by
//! `sqrt(t1 − t0)`, and a child's increment is the Brownian-bridge sample given its parent's.
//! A query `[ta, tb]` is split into the tree nodes that tile it and their increments are summed.
//!
//! Everything that decides which numbers come out is reproduced exactly: the node seeds
//! ([`SeedSequence`]), the per-node `torch.randn` ([`TorchRng`], bit-exact), torchsde's
//! quantisation of every time to 6 decimals (`round(x, 6)` for `tol = 1e-6`), the clamping of
//! queries to the root interval, and the float32 order of operations of the bridge (each Python
//! float multiplies a float32 tensor after being rounded to float32). Sigmas are taken as
//! float32, as `torch.as_tensor(float)` makes them.
//!
//! Deliberate differences from torchsde, only on inputs a sampler never produces: a query with
//! equal ends returns zeros (torchsde divides 0 by 0 and returns NaN), a query whose ends round
//! to the same 1e-6 grid point returns zeros (torchsde recurses until it errors or returns zero),
//! and non-finite sigmas give zeros instead of looping.

use super::rng::TorchRng;

/// torchsde's `tol` as diffusers and k-diffusion set it: times are rounded to this many decimals.
const ROUND_DIGITS: i32 = 6;
/// numpy `SeedSequence` pool size that diffusers and k-diffusion pass (`pool_size=24`).
const POOL_SIZE: usize = 24;
/// Deepest node we create. The 1e-6 grid ends the descent long before this for any σ range a
/// schedule produces (depth ≈ log2(range / 1e-6) ≈ 24 for SDXL); the cap only keeps absurd
/// inputs from running away, and keeps the spawn key within a u64.
const MAX_DEPTH: u32 = 63;
/// Upper bound on the bytes of cached node increments per tree; at least a few nodes are
/// always kept.
const CACHE_BYTES: usize = 64 << 20;
/// Most node increments kept. Values never depend on the cache, only speed does: every query
/// tiles its interval with ~2·depth nodes down to the 1e-6 grid at both ends, and consecutive
/// queries share an end, so keeping a few hundred nodes (torchsde keeps 45) cuts the per-node
/// `randn` work about threefold for a 25-step DPM++ SDE run.
const CACHE_MAX_NODES: usize = 256;

/// numpy's `SeedSequence` (O'Neill's `seed_seq` successor): hashes an entropy integer and a
/// spawn key into a pool of 32-bit words, from which `generate_state` draws seeds. torchsde
/// seeds every tree node from one, so its output must be reproduced word for word.
#[derive(Debug, Clone)]
pub struct SeedSequence {
    pool: Vec<u32>,
}

const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;
const XSHIFT: u32 = 16;

/// An integer as numpy coerces it: little-endian 32-bit words, `[0]` for zero.
fn int_words(mut n: u64, out: &mut Vec<u32>) {
    if n == 0 {
        out.push(0);
    }
    while n > 0 {
        out.push(n as u32);
        n >>= 32;
    }
}

fn hashmix(value: u32, hash_const: &mut u32) -> u32 {
    let mut v = value ^ *hash_const;
    *hash_const = hash_const.wrapping_mul(MULT_A);
    v = v.wrapping_mul(*hash_const);
    v ^ (v >> XSHIFT)
}

fn mix(x: u32, y: u32) -> u32 {
    let r = MIX_MULT_L
        .wrapping_mul(x)
        .wrapping_sub(MIX_MULT_R.wrapping_mul(y));
    r ^ (r >> XSHIFT)
}

impl SeedSequence {
    /// `numpy.random.SeedSequence(entropy, spawn_key=spawn_key, pool_size=pool_size)`.
    pub fn new(entropy: u64, spawn_key: &[u64], pool_size: usize) -> Self {
        let mut words = Vec::new();
        int_words(entropy, &mut words);
        // numpy pads the run entropy with zeros to the pool size when a spawn key follows, so
        // that spawned children cannot collide with a longer user entropy.
        if !spawn_key.is_empty() && words.len() < pool_size {
            words.resize(pool_size, 0);
        }
        for &k in spawn_key {
            int_words(k, &mut words);
        }
        let mut pool = vec![0u32; pool_size];
        let mut hash_const = INIT_A;
        for (i, slot) in pool.iter_mut().enumerate() {
            *slot = hashmix(words.get(i).copied().unwrap_or(0), &mut hash_const);
        }
        for src in 0..pool_size {
            for dst in 0..pool_size {
                if src != dst {
                    let h = hashmix(pool[src], &mut hash_const);
                    pool[dst] = mix(pool[dst], h);
                }
            }
        }
        for &w in words.iter().skip(pool_size) {
            for slot in pool.iter_mut() {
                let h = hashmix(w, &mut hash_const);
                *slot = mix(*slot, h);
            }
        }
        Self { pool }
    }

    /// `generate_state(n)` as uint32 words.
    pub fn generate_state(&self, n: usize) -> Vec<u32> {
        let mut hash_const = INIT_B;
        (0..n)
            .map(|i| {
                let mut v = self
                    .pool
                    .get(i % self.pool.len().max(1))
                    .copied()
                    .unwrap_or(0);
                v ^= hash_const;
                hash_const = hash_const.wrapping_mul(MULT_B);
                v = v.wrapping_mul(hash_const);
                v ^ (v >> XSHIFT)
            })
            .collect()
    }
}

/// Python's `round(x, 6)`: the double nearest to `x` correctly rounded (ties to even, on the
/// exact binary value) to 6 decimals. torchsde quantises every node boundary and query time with
/// it, and node identity is decided by `==` on these values, so it must be exact, not
/// `(x * 1e6).round() / 1e6` (which double-rounds).
pub(crate) fn round6(x: f64) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    let neg = x < 0.0;
    let a = x.abs();
    let bits = a.to_bits();
    let exp_bits = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    // a = mant · 2^exp exactly.
    let (mant, exp) = if exp_bits == 0 {
        (frac, -1074)
    } else {
        (frac | (1u64 << 52), exp_bits - 1075)
    };
    if exp >= 0 {
        return x; // an integer: already on the grid
    }
    let shift = (-exp) as u32;
    let scale = 10u128.pow(ROUND_DIGITS as u32);
    let num = u128::from(mant) * scale; // a · 10^6 · 2^shift, < 2^73
    let q = if shift >= 100 {
        // a · 10^6 < 2^-27: rounds to zero.
        0u128
    } else {
        let q = num >> shift;
        let rem = num - (q << shift);
        let half = 1u128 << (shift - 1);
        if rem > half || (rem == half && q & 1 == 1) {
            q + 1
        } else {
            q
        }
    };
    if q >= 1u128 << 53 {
        // Too large for the grid to be finer than the double spacing: Python returns x.
        return x;
    }
    let r = q as f64 / scale as f64; // correctly rounded: nearest double to q / 10^6
    if neg {
        -r
    } else {
        r
    }
}

/// One node of the dyadic tree: its position (the spawn key torchsde derives from the path,
/// `2·parent + is_right`, and the depth) and its rounded time span.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Node {
    key: u64,
    depth: u32,
    start: f64,
    end: f64,
}

impl Node {
    /// torchsde's halfway split point (`_split_exact(0.5 * (end + start))`, rounded).
    fn mid(&self) -> f64 {
        round6(0.5 * (self.end + self.start))
    }

    /// Whether the node can be split into two non-empty children.
    fn splittable(&self) -> bool {
        let m = self.mid();
        self.depth < MAX_DEPTH && m > self.start && m < self.end
    }

    fn child(&self, right: bool) -> Node {
        let m = self.mid();
        Node {
            key: 2 * self.key + u64::from(right),
            depth: self.depth + 1,
            start: if right { m } else { self.start },
            end: if right { self.end } else { m },
        }
    }
}

/// A small least-recently-used cache of node increments (torchsde keeps one too; values do not
/// depend on it, only speed does).
#[derive(Debug, Default)]
struct NodeCache {
    capacity: usize,
    entries: Vec<((u64, u32), Vec<f32>)>,
}

impl NodeCache {
    fn get(&mut self, key: (u64, u32)) -> Option<&Vec<f32>> {
        let pos = self.entries.iter().position(|(k, _)| *k == key)?;
        let entry = self.entries.remove(pos);
        self.entries.push(entry);
        self.entries.last().map(|(_, v)| v)
    }

    fn insert(&mut self, key: (u64, u32), value: Vec<f32>) {
        if self.capacity == 0 {
            return;
        }
        if let Some(pos) = self.entries.iter().position(|(k, _)| *k == key) {
            self.entries.remove(pos);
        } else if self.entries.len() >= self.capacity {
            self.entries.remove(0);
        }
        self.entries.push((key, value));
    }
}

/// What k-diffusion's / diffusers' `BrownianTreeNoiseSampler(x, σ_min, σ_max, seed)` returns:
/// `sample(σ, σ_next) = W(σ, σ_next) / sqrt(|σ_next − σ|)`, a standard normal tensor (C order,
/// `numel` values) that is a deterministic function of the seed and the two sigmas, whatever
/// was sampled before. One per image seed (A1111) or one per batch with the batch's first seed
/// (diffusers, ComfyUI, which pass the whole batch's `numel`).
pub struct BrownianTreeNoise {
    entropy: u64,
    numel: usize,
    /// The root node (`[round(t0), round(t1)]`, key 0, depth 0).
    root: Node,
    /// The root increment `randn · sqrt(t1 − t0)`.
    root_w: Vec<f32>,
    /// −1 when the bounds were given as `σ_min > σ_max` (torch's `BatchedBrownianTree.sign`).
    sign: f32,
    cache: NodeCache,
}

impl std::fmt::Debug for BrownianTreeNoise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrownianTreeNoise")
            .field("seed", &self.entropy)
            .field("numel", &self.numel)
            .field("t0", &self.root.start)
            .field("t1", &self.root.end)
            .finish_non_exhaustive()
    }
}

impl BrownianTreeNoise {
    /// The tree for `seed` over `[sigma_min, sigma_max]` (diffusers passes the smallest positive
    /// and the largest schedule sigma) producing `numel` values per sample. Bounds given in the
    /// wrong order are swapped and the sign of every sample flipped, as torch's wrapper does;
    /// non-finite bounds make a degenerate tree whose samples are all zero.
    pub fn new(seed: u64, sigma_min: f64, sigma_max: f64, numel: usize) -> Self {
        // `torch.as_tensor(float)` is float32; torchsde then works with `float(t)`.
        let (a, b) = (sigma_min as f32, sigma_max as f32);
        let (lo, hi, sign) = if a < b { (a, b, 1.0) } else { (b, a, -1.0) };
        let (t0, t1) = if lo.is_finite() && hi.is_finite() {
            (f64::from(lo), f64::from(hi))
        } else {
            (0.0, 0.0)
        };
        let root = Node {
            key: 0,
            depth: 0,
            start: round6(t0),
            end: round6(t1),
        };
        // The root increment uses the unrounded span, as torchsde does.
        let root_seed = SeedSequence::new(seed, &[], POOL_SIZE).generate_state(1)[0];
        let scale = (t1 - t0).sqrt() as f32;
        let root_w = TorchRng::new(u64::from(root_seed))
            .randn(numel)
            .into_iter()
            .map(|v| v * scale)
            .collect();
        let capacity = (CACHE_BYTES / numel.max(1).saturating_mul(4)).clamp(4, CACHE_MAX_NODES);
        Self {
            entropy: seed,
            numel,
            root,
            root_w,
            sign,
            cache: NodeCache {
                capacity,
                entries: Vec::new(),
            },
        }
    }

    /// Number of values per sample.
    pub fn numel(&self) -> usize {
        self.numel
    }

    /// The normalised increment between two sigmas, in either order (the sign follows the
    /// direction, as in torch): `W(σ, σ_next) / sqrt(|σ_next − σ|)` with both sigmas taken as
    /// float32. Queries outside `[σ_min, σ_max]` are clamped to it (torchsde warns and clamps).
    /// Equal sigmas give zeros (torchsde: NaN, see module docs).
    ///
    /// The divisor is the IEEE float32 square root; torch's x86 builds take it from MKL, which
    /// is off by one ulp for some arguments, so for those queries the values differ from torch's
    /// by one ulp (≤ 1.2e-7 relative). [`Self::increment`] has no such step and matches exactly.
    pub fn sample(&mut self, sigma: f64, sigma_next: f64) -> Vec<f32> {
        let (a, b) = (sigma as f32, sigma_next as f32);
        if !(a.is_finite() && b.is_finite()) || a == b {
            return vec![0.0; self.numel];
        }
        let denom = (b - a).abs().sqrt();
        let mut w = self.increment(sigma, sigma_next);
        for v in w.iter_mut() {
            *v /= denom;
        }
        w
    }

    /// The signed Brownian increment `W(σ_next) − W(σ)` itself (torch's
    /// `BatchedBrownianTree(σ, σ_next)`), for samplers that scale the noise themselves.
    pub fn increment(&mut self, sigma: f64, sigma_next: f64) -> Vec<f32> {
        let (a, b) = (sigma as f32, sigma_next as f32);
        if !(a.is_finite() && b.is_finite()) {
            return vec![0.0; self.numel];
        }
        let (lo, hi, sign) = if a < b { (a, b, 1.0) } else { (b, a, -1.0f32) };
        let scale = self.sign * sign;
        let mut w = self.raw_increment(f64::from(lo), f64::from(hi));
        for v in w.iter_mut() {
            *v *= scale;
        }
        w
    }

    /// The raw Brownian increment `W(tb) − W(ta)` for `ta <= tb` (torchsde
    /// `BrownianInterval.__call__(ta, tb)`).
    fn raw_increment(&mut self, ta: f64, tb: f64) -> Vec<f32> {
        let (start, end) = (self.root.start, self.root.end);
        let ta = ta.clamp(start, end.max(start));
        let tb = tb.clamp(start, end.max(start));
        if ta >= tb {
            return vec![0.0; self.numel];
        }
        let (ra, rb) = (round6(ta), round6(tb));
        if ra >= rb {
            return vec![0.0; self.numel];
        }
        let mut pieces = Vec::new();
        let mut path = Vec::new();
        decompose(self.root, ra, rb, &mut path, &mut pieces);
        let mut total: Option<Vec<f32>> = None;
        for chain in &pieces {
            let w = self.node_w(chain);
            total = Some(match total {
                None => w,
                Some(mut acc) => {
                    for (x, y) in acc.iter_mut().zip(&w) {
                        *x += *y;
                    }
                    acc
                }
            });
        }
        total.unwrap_or_else(|| vec![0.0; self.numel])
    }

    /// The increment of the last node of `chain` (root first), computed from the deepest cached
    /// ancestor down by Brownian-bridge sampling.
    fn node_w(&mut self, chain: &[Node]) -> Vec<f32> {
        let mut first = 0;
        let mut w = self.root_w.clone();
        for (i, node) in chain.iter().enumerate().skip(1).rev() {
            if let Some(v) = self.cache.get((node.key, node.depth)) {
                w = v.clone();
                first = i;
                break;
            }
        }
        for pair in chain[first..].windows(2) {
            let (parent, child) = (pair[0], pair[1]);
            w = self.bridge(&parent, &w, child.start > parent.start);
            self.cache.insert((child.key, child.depth), w.clone());
        }
        w
    }

    /// A child's increment given its parent's: the left part is
    /// `mean + sqrt(var)·noise` with `mean = (l/h)·W`, `var = l·r/h`, the right part is the rest.
    /// Python floats are rounded to float32 before they multiply the tensor, and the products
    /// are formed in torchsde's order, so the float32 results are the same bits.
    fn bridge(&self, parent: &Node, parent_w: &[f32], right: bool) -> Vec<f32> {
        let mid = parent.mid();
        let h_reciprocal = 1.0 / (parent.end - parent.start);
        let left_diff = mid - parent.start;
        let right_diff = parent.end - mid;
        let var = left_diff * right_diff * h_reciprocal;
        let (l32, h32, s32) = (left_diff as f32, h_reciprocal as f32, var.sqrt() as f32);
        let seed = SeedSequence::new(
            self.entropy,
            &[parent.key, u64::from(parent.depth)],
            POOL_SIZE,
        )
        .generate_state(1)[0];
        let noise = TorchRng::new(u64::from(seed)).randn(self.numel);
        parent_w
            .iter()
            .zip(&noise)
            .map(|(&w, &n)| {
                let left = (l32 * w) * h32 + s32 * n;
                if right {
                    w - left
                } else {
                    left
                }
            })
            .collect()
    }
}

/// Tiles `[ta, tb]` (grid points inside `node`) with tree nodes, left to right, each given with
/// its chain of ancestors from the root (torchsde `_loc`, which with the halfway tree always
/// finds this canonical tiling whatever was queried before).
fn decompose(node: Node, ta: f64, tb: f64, path: &mut Vec<Node>, out: &mut Vec<Vec<Node>>) {
    path.push(node);
    if (ta == node.start && tb == node.end) || !node.splittable() {
        out.push(path.clone());
    } else {
        let mid = node.mid();
        if tb <= mid {
            decompose(node.child(false), ta, tb, path, out);
        } else if ta >= mid {
            decompose(node.child(true), ta, tb, path, out);
        } else {
            decompose(node.child(false), ta, mid, path, out);
            decompose(node.child(true), mid, tb, path, out);
        }
    }
    path.pop();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from CPython 3.11 `round(x, 6)` (see tests/fixtures/tools/brownian_reference.py).
    #[test]
    fn round6_matches_python() {
        assert_eq!(round6(0.0078125), 0.007812); // exact tie: to even
        assert_eq!(round6(14.614641189575195), 14.614641);
        assert_eq!(round6(0.029167532920837402), 0.029168);
        assert_eq!(round6(1e-7), 0.0);
        assert_eq!(round6(123.4567895), 123.456789);
        assert_eq!(round6(7.5e-7), 1e-6);
        assert_eq!(round6(-7.5e-7), -1e-6);
        assert_eq!(round6(1e300), 1e300);
    }

    #[test]
    fn children_tile_parent() {
        let n = Node {
            key: 0,
            depth: 0,
            start: 0.029168,
            end: 14.614647,
        };
        let (l, r) = (n.child(false), n.child(true));
        assert_eq!(
            (l.start, l.end, r.start, r.end),
            (n.start, n.mid(), n.mid(), n.end)
        );
        assert_eq!((l.key, l.depth, r.key, r.depth), (0, 1, 1, 1));
    }

    #[test]
    fn equal_and_empty_are_zero() {
        let mut t = BrownianTreeNoise::new(1, 0.03, 14.6, 20);
        assert_eq!(t.sample(1.0, 1.0), vec![0.0; 20]);
        let mut e = BrownianTreeNoise::new(1, 0.03, 14.6, 0);
        assert!(e.sample(2.0, 1.0).is_empty());
        let mut d = BrownianTreeNoise::new(1, 1.0, 1.0, 5);
        assert!(d.sample(2.0, 1.0).iter().all(|v| *v == 0.0));
        let mut nan = BrownianTreeNoise::new(1, f64::NAN, 1.0, 5);
        assert!(nan.sample(0.5, 0.2).iter().all(|v| v.is_finite()));
        assert!(t.sample(f64::NAN, 1.0).iter().all(|v| *v == 0.0));
    }
}
