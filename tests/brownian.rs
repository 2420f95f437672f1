//! The Brownian-tree noise of the SDE samplers against what diffusers' `BrownianTreeNoiseSampler`
//! (torchsde 0.2.6, torch 2.15 CPU) returned for the same seeds and sigmas, recorded by
//! `fixtures/tools/brownian_reference.py` into `fixtures/brownian/`.

mod common_sampling;

use std::path::{Path, PathBuf};

use common_sampling::assert_bits_equal;
use sdxl_worker::sampling::brownian::{BrownianTreeNoise, SeedSequence};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/brownian")
}

fn manifest() -> serde_json::Value {
    let text = std::fs::read_to_string(dir().join("brownian_manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn read_f32(file: &str) -> (Vec<u64>, Vec<f32>) {
    let bytes = std::fs::read(dir().join(file)).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = npy.shape().to_vec();
    (shape, npy.into_vec::<f32>().unwrap())
}

fn f32_of(v: &serde_json::Value) -> f64 {
    f64::from(f32::from_bits(v.as_u64().unwrap() as u32))
}

struct Case {
    name: String,
    seed: u64,
    numel: usize,
    sigma_min: f64,
    sigma_max: f64,
    queries: Vec<(f64, f64)>,
    /// The sampler's outputs, `[queries, numel]`.
    want: Vec<f32>,
    /// The signed raw increments, `[queries, numel]`.
    want_w: Vec<f32>,
    /// torch's float32 `sqrt(|σ' − σ|)` per query.
    torch_sqrt: Vec<f32>,
}

fn cases() -> Vec<Case> {
    let m = manifest();
    m["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let numel = c["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .product();
            let queries: Vec<(f64, f64)> = c["queries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|q| (f32_of(&q[0]), f32_of(&q[1])))
                .collect();
            let (shape, want) = read_f32(c["file"].as_str().unwrap());
            assert_eq!(shape, vec![queries.len() as u64, numel as u64]);
            let (shape_w, want_w) = read_f32(c["w_file"].as_str().unwrap());
            assert_eq!(shape_w, shape);
            let torch_sqrt: Vec<f32> = c["torch_sqrt_bits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| f32::from_bits(v.as_u64().unwrap() as u32))
                .collect();
            assert_eq!(torch_sqrt.len(), queries.len());
            Case {
                name: c["name"].as_str().unwrap().to_string(),
                seed: c["seed"].as_u64().unwrap(),
                numel,
                sigma_min: c["sigma_min"].as_f64().unwrap(),
                sigma_max: c["sigma_max"].as_f64().unwrap(),
                queries,
                want,
                want_w,
                torch_sqrt,
            }
        })
        .collect()
}

/// Largest |got − want| / max(1, |want|) over a sample.
fn max_rel(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(g, w)| f64::from((g - w).abs()) / f64::from(w.abs()).max(1.0))
        .fold(0.0, f64::max)
}

/// numpy `SeedSequence(entropy, spawn_key, pool_size=24).generate_state(4)`, word for word.
#[test]
fn seed_sequence_matches_numpy() {
    let m = manifest();
    let rows = m["seed_sequence"].as_array().unwrap();
    assert!(rows.len() >= 8);
    for r in rows {
        let entropy = r["entropy"].as_u64().unwrap();
        let key: Vec<u64> = r["spawn_key"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let want: Vec<u32> = r["words"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let pool = r["pool_size"].as_u64().unwrap() as usize;
        let got = SeedSequence::new(entropy, &key, pool).generate_state(4);
        assert_eq!(got, want, "entropy {entropy} spawn key {key:?}");
    }
}

/// Every recorded query of every case, asked in the recorded order.
///
/// * The signed increment `W(σ, σ')` equals torchsde's bit for bit (every node seed, per-node
///   `randn`, bridge step and sum is reproduced).
/// * The normalised sample is bit-identical wherever torch's float32 `sqrt(|σ' − σ|)` is the
///   correctly rounded one; where torch's (MKL) sqrt is one ulp off, values are within 1e-6
///   relative (measured ≈ 1.5e-7). The count of such queries is printed.
#[test]
fn matches_torchsde_reference() {
    let all = cases();
    assert_eq!(all.len(), 5);
    for case in &all {
        let mut tree =
            BrownianTreeNoise::new(case.seed, case.sigma_min, case.sigma_max, case.numel);
        let mut worst = 0.0f64;
        let mut misrounded = 0;
        for (i, &(s, s_next)) in case.queries.iter().enumerate() {
            let range = i * case.numel..(i + 1) * case.numel;
            let w = tree.increment(s, s_next);
            assert_bits_equal(
                &w,
                &case.want_w[range.clone()],
                &format!("{} W {i}", case.name),
            );
            let got = tree.sample(s, s_next);
            let want = &case.want[range];
            worst = worst.max(max_rel(&got, want));
            let ours = ((s_next as f32) - (s as f32)).abs().sqrt();
            if ours.to_bits() == case.torch_sqrt[i].to_bits() {
                assert_bits_equal(&got, want, &format!("{} sample {i}", case.name));
            } else {
                misrounded += 1;
            }
        }
        eprintln!(
            "{}: max rel diff {worst:.3e}; {misrounded} of {} queries with torch's sqrt one ulp off",
            case.name,
            case.queries.len()
        );
        assert!(worst <= 1e-6, "{}: max rel diff {worst:e}", case.name);
    }
}

/// A fresh tree asked for the queries in reverse order gives the same values (the path is a
/// function of the seed only), and a second tree with the same seed gives the same bytes.
#[test]
fn independent_of_query_order() {
    let case = cases().into_iter().next().unwrap();
    let mut forward = BrownianTreeNoise::new(case.seed, case.sigma_min, case.sigma_max, case.numel);
    let fwd: Vec<Vec<f32>> = case
        .queries
        .iter()
        .map(|&(a, b)| forward.sample(a, b))
        .collect();
    let mut backward =
        BrownianTreeNoise::new(case.seed, case.sigma_min, case.sigma_max, case.numel);
    for (i, &(a, b)) in case.queries.iter().enumerate().rev() {
        let got = backward.sample(a, b);
        let same = got
            .iter()
            .zip(&fwd[i])
            .all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "query {i} differs when asked in reverse order");
    }
    // Asking the same interval twice (served from the cache the second time) changes nothing.
    let (a, b) = case.queries[3];
    assert_eq!(forward.sample(a, b), fwd[3]);
}

/// Different seeds give different paths; the reversed direction gives the negated sample.
#[test]
fn seed_and_direction() {
    let mut a = BrownianTreeNoise::new(1, 0.03, 14.6, 64);
    let mut b = BrownianTreeNoise::new(2, 0.03, 14.6, 64);
    let x = a.sample(10.0, 5.0);
    assert_ne!(x, b.sample(10.0, 5.0));
    let y = a.sample(5.0, 10.0);
    for (p, q) in x.iter().zip(&y) {
        assert_eq!(*p, -*q);
    }
}

/// A long sample path is standard normal per query: mean ≈ 0, variance ≈ 1, and increments of
/// adjacent intervals are uncorrelated (the Brownian-bridge construction is right).
#[test]
fn statistics_are_standard_normal() {
    let n = 4096;
    let mut t = BrownianTreeNoise::new(99, 0.03, 14.6, n);
    let s1 = t.sample(8.0, 3.0);
    let s2 = t.sample(3.0, 1.0);
    let mean = s1.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
    let var = s1.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / n as f64;
    let cov = s1
        .iter()
        .zip(&s2)
        .map(|(&a, &b)| f64::from(a) * f64::from(b))
        .sum::<f64>()
        / n as f64;
    assert!(mean.abs() < 0.06, "mean {mean}");
    assert!((var - 1.0).abs() < 0.08, "var {var}");
    assert!(cov.abs() < 0.06, "cov {cov}");
}

/// Degenerate inputs give finite results and no panic: equal sigmas, no elements, sigmas
/// outside the tree's range (clamped), bounds in the wrong order.
#[test]
fn degenerate_inputs() {
    let mut t = BrownianTreeNoise::new(3, 0.03, 14.6, 10);
    assert!(t.sample(2.0, 2.0).iter().all(|v| *v == 0.0));
    assert!(t.sample(100.0, 50.0).iter().all(|v| *v == 0.0));
    assert!(t.sample(20.0, 0.0).iter().all(|v| v.is_finite()));
    let mut empty = BrownianTreeNoise::new(3, 0.03, 14.6, 0);
    assert!(empty.sample(5.0, 1.0).is_empty());
    let mut swapped = BrownianTreeNoise::new(3, 14.6, 0.03, 10);
    let mut normal = BrownianTreeNoise::new(3, 0.03, 14.6, 10);
    let (s, n) = (swapped.sample(5.0, 1.0), normal.sample(5.0, 1.0));
    assert!(s.iter().zip(&n).all(|(a, b)| *a == -*b));
}

/// The independent recording of diffusers' `BrownianTreeNoiseSampler` in
/// `fixtures/reference-samplers/brownian/` (made by the sampler-reference tooling, not by the
/// script that made `fixtures/brownian/`): an 8-step Karras DPM++ SDE run and an out-of-order
/// query sequence for three seeds, and raw torchsde increments over `[0, 1]` and the σ range.
/// Raw increments must be bit-identical; normalised samples within 1e-6 relative (torch's
/// float32 sqrt of the step is MKL's, one ulp off for some steps).
#[test]
fn matches_sampler_reference_recording() {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference-samplers/brownian");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("brownian.json")).unwrap()).unwrap();
    let load = |file: &str| -> (Vec<u64>, Vec<u8>) {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let shape = npyz::NpyFile::new(&bytes[..]).unwrap().shape().to_vec();
        (shape, bytes)
    };
    let sampler = &json["sampler"];
    let (smin, smax) = (
        sampler["sigma_min"].as_f64().unwrap(),
        sampler["sigma_max"].as_f64().unwrap(),
    );
    let numel: usize = sampler["x_shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .product();
    let sequences = json["sequences"].as_array().unwrap();
    assert_eq!(sequences.len(), 6);
    for seq in sequences {
        let seed = seq["seed"].as_u64().unwrap();
        let (_, qbytes) = load(seq["queries"].as_str().unwrap());
        let queries = npyz::NpyFile::new(&qbytes[..])
            .unwrap()
            .into_vec::<f64>()
            .unwrap();
        let (shape, nbytes) = load(seq["noise"].as_str().unwrap());
        let want = npyz::NpyFile::new(&nbytes[..])
            .unwrap()
            .into_vec::<f32>()
            .unwrap();
        let n_queries = queries.len() / 2;
        assert_eq!(shape[0] as usize, n_queries);
        assert_eq!(want.len(), n_queries * numel);
        let mut tree = BrownianTreeNoise::new(seed, smin, smax, numel);
        let mut worst = 0.0f64;
        let mut identical = 0;
        for q in 0..n_queries {
            let got = tree.sample(queries[2 * q], queries[2 * q + 1]);
            let w = &want[q * numel..(q + 1) * numel];
            worst = worst.max(max_rel(&got, w));
            identical += got
                .iter()
                .zip(w)
                .filter(|(a, b)| a.to_bits() == b.to_bits())
                .count();
        }
        eprintln!(
            "{} seed {seed}: max rel diff {worst:.3e}, {identical}/{} bit-identical",
            seq["sequence"].as_str().unwrap(),
            n_queries * numel
        );
        assert!(worst <= 1e-6, "{} seed {seed}: {worst:e}", seq["sequence"]);
    }
    for raw in json["torchsde_raw"].as_array().unwrap() {
        let entropy = raw["entropy"].as_u64().unwrap();
        let numel: usize = raw["w0_shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .product();
        let (_, bytes) = load(raw["file"].as_str().unwrap());
        let want = npyz::NpyFile::new(&bytes[..])
            .unwrap()
            .into_vec::<f32>()
            .unwrap();
        let mut tree = BrownianTreeNoise::new(
            entropy,
            raw["t0"].as_f64().unwrap(),
            raw["t1"].as_f64().unwrap(),
            numel,
        );
        for (k, iv) in raw["intervals"].as_array().unwrap().iter().enumerate() {
            let got = tree.increment(iv[0].as_f64().unwrap(), iv[1].as_f64().unwrap());
            assert_bits_equal(
                &got,
                &want[k * numel..(k + 1) * numel],
                &format!("{} interval {k}", raw["file"]),
            );
        }
    }
}
