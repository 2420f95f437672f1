//! Delta math of every LoRA format against small hand-computed tensors, on a tiny
//! SDXL-named checkpoint written to a temporary directory; plus unknown-key counting and
//! architecture checks.

use candle_core::{DType, Device};
use sdxl_worker::lora::{ActiveLora, LoraEntry, LoraError, LoraLibrary, LoraState, WeightStore};
use sdxl_worker::weights::layout::{write_safetensors, Entry};
use sdxl_worker::weights::{Checkpoint, StDtype};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const CONV: &str = "model.diffusion_model.input_blocks.1.0.in_layers.2";
const PROJ_IN: &str = "model.diffusion_model.input_blocks.4.1.proj_in";
const TO_Q: &str = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q";
const TO_K: &str = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_k";
const IN_PROJ: &str = "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj";

type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

fn write(path: &Path, tensors: &Tensors, dtype: StDtype, meta: &[(&str, &str)]) {
    let entries: Vec<Entry> = tensors
        .iter()
        .map(|(n, s, _)| Entry {
            name: n.clone(),
            shape: s.clone(),
            dtype,
        })
        .collect();
    let by_name: BTreeMap<&str, &Vec<f32>> =
        tensors.iter().map(|(n, _, v)| (n.as_str(), v)).collect();
    write_safetensors(path, &entries, meta, |e, buf| {
        let v = by_name[e.name.as_str()];
        match dtype {
            StDtype::F32 => {
                for (c, x) in buf.chunks_exact_mut(4).zip(v.iter()) {
                    c.copy_from_slice(&x.to_le_bytes());
                }
            }
            StDtype::F16 => {
                for (c, x) in buf.chunks_exact_mut(2).zip(v.iter()) {
                    c.copy_from_slice(&half::f16::from_f32(*x).to_le_bytes());
                }
            }
            _ => unreachable!(),
        }
    })
    .unwrap();
}

fn t(name: &str, shape: &[usize], v: Vec<f32>) -> (String, Vec<usize>, Vec<f32>) {
    assert_eq!(shape.iter().product::<usize>(), v.len(), "{name}");
    (name.to_string(), shape.to_vec(), v)
}

/// A kohya module `m`: `{m}.lora_up.weight` and `{m}.lora_down.weight` as `(shape, values)`.
fn kohya(m: &str, up: (&[usize], Vec<f32>), down: (&[usize], Vec<f32>)) -> Tensors {
    vec![
        t(&format!("{m}.lora_up.weight"), up.0, up.1),
        t(&format!("{m}.lora_down.weight"), down.0, down.1),
    ]
}

/// The kohya name of the fixture's `proj_in` (`[2, 3]`).
const PROJ_IN_MODULE: &str = "lora_unet_input_blocks_4_1_proj_in";

/// A rank-1 LoRA of ones on the fixture's `proj_in`: fits this SDXL checkpoint.
fn proj_in_ones() -> Tensors {
    kohya(
        PROJ_IN_MODULE,
        (&[2, 1], vec![1.0; 2]),
        (&[1, 3], vec![1.0; 3]),
    )
}

/// Deterministic small values.
fn seq(n: usize, seed: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32 * 0.37 + seed).sin() * 0.8).round_to(0.125))
        .collect()
}

trait Round {
    fn round_to(self, q: f32) -> f32;
}
impl Round for f32 {
    fn round_to(self, q: f32) -> f32 {
        (self / q).round() * q
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    ckpt: Arc<Checkpoint>,
    base: BTreeMap<String, Vec<f32>>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let tensors: Tensors = vec![
        t(&format!("{CONV}.weight"), &[2, 2, 3, 3], seq(36, 0.1)),
        t(&format!("{CONV}.bias"), &[2], vec![0.5, -0.25]),
        t(&format!("{PROJ_IN}.weight"), &[2, 3], seq(6, 1.0)),
        t(&format!("{TO_Q}.weight"), &[4, 4], seq(16, 2.0)),
        t(&format!("{TO_K}.weight"), &[2, 2], vec![3.0, 4.0, 0.0, 5.0]),
        t(&format!("{IN_PROJ}_weight"), &[6, 2], seq(12, 3.0)),
        t(&format!("{IN_PROJ}_bias"), &[6], vec![0.0; 6]),
        t(
            "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
            &[2, 2],
            vec![1.0, 0.0, 0.0, 1.0],
        ),
    ];
    let path = dir.path().join("ckpt.safetensors");
    write(&path, &tensors, StDtype::F32, &[]);
    let base = tensors.into_iter().map(|(n, _, v)| (n, v)).collect();
    Fixture {
        dir: dir.path().to_path_buf(),
        _dir: dir,
        ckpt: Checkpoint::open(&path).unwrap(),
        base,
    }
}

impl Fixture {
    fn lora(&self, name: &str, tensors: &Tensors) -> Result<LoraLibrary, LoraError> {
        self.lora_meta(name, tensors, StDtype::F32, &[])
    }

    fn lora_meta(
        &self,
        name: &str,
        tensors: &Tensors,
        dtype: StDtype,
        meta: &[(&str, &str)],
    ) -> Result<LoraLibrary, LoraError> {
        let path = self.dir.join(format!("{name}.safetensors"));
        write(&path, tensors, dtype, meta);
        self.load(name, path)
    }

    /// Loads the file at `path` as the only LoRA, named `name`, with default weight 1.
    fn load(&self, name: &str, path: PathBuf) -> Result<LoraLibrary, LoraError> {
        LoraLibrary::load(
            &[LoraEntry {
                name: name.into(),
                path,
                default_weight: 1.0,
            }],
            self.ckpt.shapes(),
        )
    }

    /// Applies the library's only LoRA at strength `s` and returns the f32 value of `key`.
    fn apply(&self, lib: &LoraLibrary, s: f32, key: &str) -> Vec<f32> {
        let store = WeightStore::new(self.ckpt.var_builder(DType::F32, &Device::Cpu));
        for (k, info) in self.ckpt.tensors() {
            store.load(k, &info.shape, DType::F32).unwrap();
        }
        let mut state = LoraState::new();
        state
            .switch(
                lib,
                &[ActiveLora {
                    index: 0,
                    unet_weight: s,
                    clip_weight: s,
                }],
                &store,
            )
            .unwrap();
        store
            .resident(key)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }
}

fn close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "element {i}: got {g}, want {w}\n{got:?}\n{want:?}"
        );
    }
}

fn add(base: &[f32], delta: &[f32], scale: f32) -> Vec<f32> {
    base.iter().zip(delta).map(|(b, d)| b + scale * d).collect()
}

#[test]
fn loha_linear_hand_computed() {
    let f = fixture();
    let m = "lora_unet_input_blocks_4_1_proj_in";
    let lib = f
        .lora(
            "loha",
            &vec![
                t(&format!("{m}.hada_w1_a"), &[2, 1], vec![1.0, 2.0]),
                t(&format!("{m}.hada_w1_b"), &[1, 3], vec![1.0, 0.0, -1.0]),
                t(&format!("{m}.hada_w2_a"), &[2, 1], vec![3.0, 1.0]),
                t(&format!("{m}.hada_w2_b"), &[1, 3], vec![1.0, 1.0, 1.0]),
                t(&format!("{m}.alpha"), &[], vec![2.0]),
            ],
        )
        .unwrap();
    // (w1a w1b) ⊙ (w2a w2b) = [[1,0,-1],[2,0,-2]] ⊙ [[3,3,3],[1,1,1]]; α/rank = 2/1; s = 0.5.
    let delta = [3.0, 0.0, -3.0, 2.0, 0.0, -2.0];
    let key = format!("{PROJ_IN}.weight");
    close(&f.apply(&lib, 0.5, &key), &add(&f.base[&key], &delta, 1.0));
}

#[test]
fn lokr_full_and_factored_hand_computed() {
    let f = fixture();
    let m = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q";
    let key = format!("{TO_Q}.weight");
    // Full w1, w2: kron([[1,2],[3,4]], [[0,1],[1,0]]); alpha ignored (nothing factored).
    let lib = f
        .lora(
            "lokr",
            &vec![
                t(&format!("{m}.lokr_w1"), &[2, 2], vec![1.0, 2.0, 3.0, 4.0]),
                t(&format!("{m}.lokr_w2"), &[2, 2], vec![0.0, 1.0, 1.0, 0.0]),
                t(&format!("{m}.alpha"), &[], vec![8.0]),
            ],
        )
        .unwrap();
    let kron = [
        0.0, 1.0, 0.0, 2.0, //
        1.0, 0.0, 2.0, 0.0, //
        0.0, 3.0, 0.0, 4.0, //
        3.0, 0.0, 4.0, 0.0,
    ];
    close(&f.apply(&lib, 1.0, &key), &add(&f.base[&key], &kron, 1.0));
    // Factored w2 = [[1],[2]]·[[1,-1]] = [[1,-1],[2,-2]], rank 1, alpha 0.5 → α_eff 0.5.
    let lib = f
        .lora(
            "lokr2",
            &vec![
                t(&format!("{m}.lokr_w1"), &[2, 2], vec![1.0, 2.0, 3.0, 4.0]),
                t(&format!("{m}.lokr_w2_a"), &[2, 1], vec![1.0, 2.0]),
                t(&format!("{m}.lokr_w2_b"), &[1, 2], vec![1.0, -1.0]),
                t(&format!("{m}.alpha"), &[], vec![0.5]),
            ],
        )
        .unwrap();
    let kron = [
        1.0, -1.0, 2.0, -2.0, //
        2.0, -2.0, 4.0, -4.0, //
        3.0, -3.0, 4.0, -4.0, //
        6.0, -6.0, 8.0, -8.0,
    ];
    close(&f.apply(&lib, 2.0, &key), &add(&f.base[&key], &kron, 1.0));
}

/// Σ over the Tucker core, written out as loops: ΔW[o,i,k,l] = Σ_{m,n} up[o,m]·mid[m,n,k,l]·down[n,i].
#[test]
fn locon_tucker_conv_matches_explicit_sum() {
    let f = fixture();
    let m = "lora_unet_input_blocks_1_0_in_layers_2";
    let (up, mid, down) = (seq(4, 5.0), seq(36, 6.0), seq(4, 7.0));
    let lib = f
        .lora(
            "locon",
            &vec![
                t(&format!("{m}.lora_up.weight"), &[2, 2, 1, 1], up.clone()),
                t(&format!("{m}.lora_mid.weight"), &[2, 2, 3, 3], mid.clone()),
                t(
                    &format!("{m}.lora_down.weight"),
                    &[2, 2, 1, 1],
                    down.clone(),
                ),
                t(&format!("{m}.alpha"), &[], vec![1.0]),
            ],
        )
        .unwrap();
    let mut delta = vec![0f32; 36];
    for o in 0..2 {
        for i in 0..2 {
            for kl in 0..9 {
                let mut acc = 0.0;
                for mm in 0..2 {
                    for n in 0..2 {
                        acc += up[o * 2 + mm] * mid[(mm * 2 + n) * 9 + kl] * down[n * 2 + i];
                    }
                }
                delta[(o * 2 + i) * 9 + kl] = acc;
            }
        }
    }
    let key = format!("{CONV}.weight");
    // α/rank = 1/2, s = 0.7.
    close(&f.apply(&lib, 0.7, &key), &add(&f.base[&key], &delta, 0.35));
}

/// LoHa with Tucker cores: m = einsum('i j k l, j r, i p -> p r k l', t, wb, wa) per side.
#[test]
fn loha_tucker_conv_matches_explicit_sum() {
    let f = fixture();
    let m = "lora_unet_input_blocks_1_0_in_layers_2";
    let r = 2;
    let (w1a, w1b, t1) = (seq(r * 2, 1.5), seq(r * 2, 2.5), seq(r * r * 9, 3.5));
    let (w2a, w2b, t2) = (seq(r * 2, 4.5), seq(r * 2, 5.5), seq(r * r * 9, 6.5));
    // The metadata entry only shifts the header length: without it the length's first two
    // bytes read 0x80 0x03, which weights::Checkpoint::open currently mistakes for a pickle.
    let lib = f
        .lora_meta(
            "loha_t",
            &vec![
                t(&format!("{m}.hada_w1_a"), &[r, 2], w1a.clone()),
                t(&format!("{m}.hada_w1_b"), &[r, 2], w1b.clone()),
                t(&format!("{m}.hada_t1"), &[r, r, 3, 3], t1.clone()),
                t(&format!("{m}.hada_w2_a"), &[r, 2], w2a.clone()),
                t(&format!("{m}.hada_w2_b"), &[r, 2], w2b.clone()),
                t(&format!("{m}.hada_t2"), &[r, r, 3, 3], t2.clone()),
            ],
            StDtype::F32,
            &[("ss_network_module", "lycoris.kohya")],
        )
        .unwrap();
    let side = |wa: &[f32], wb: &[f32], tt: &[f32]| {
        let mut out = vec![0f32; 36];
        for p in 0..2 {
            for rr in 0..2 {
                for kl in 0..9 {
                    let mut acc = 0.0;
                    for i in 0..r {
                        for j in 0..r {
                            acc += tt[(i * r + j) * 9 + kl] * wb[j * 2 + rr] * wa[i * 2 + p];
                        }
                    }
                    out[(p * 2 + rr) * 9 + kl] = acc;
                }
            }
        }
        out
    };
    let (m1, m2) = (side(&w1a, &w1b, &t1), side(&w2a, &w2b, &t2));
    let delta: Vec<f32> = m1.iter().zip(&m2).map(|(a, b)| a * b).collect();
    let key = format!("{CONV}.weight");
    // No alpha: α_eff = 1.
    close(&f.apply(&lib, 1.0, &key), &add(&f.base[&key], &delta, 1.0));
}

/// DoRA on W = [[3,4],[0,5]] with ΔW = up·down = [[1,0],[0,1]]·…, both the output-row and the
/// input-column norm (docs/formats.md, *DoRA*).
#[test]
fn dora_output_and_input_axis_hand_computed() {
    let f = fixture();
    let m = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k";
    let key = format!("{TO_K}.weight");
    let up = vec![1.0, 0.0, 0.0, 1.0];
    let down = vec![1.0, 2.0, 0.0, -1.0]; // ΔW = [[1,2],[0,-1]]
    let w = [3.0f32, 4.0, 0.0, 5.0];
    // alpha 1, rank 2 → ΔW' = 0.5 ΔW = [[0.5,1],[0,-0.5]]; W_c = [[3.5,5],[0,4.5]].
    let wc = [3.5f32, 5.0, 0.0, 4.5];
    let eps = f32::EPSILON;
    // The same LoRA (alpha 1) with a `dora_scale` of the given shape.
    let dora = |name: &str, shape: &[usize], scale: Vec<f32>| {
        let extra = vec![
            t(&format!("{m}.alpha"), &[], vec![1.0]),
            t(&format!("{m}.dora_scale"), shape, scale),
        ];
        let tensors = [
            kohya(m, (&[2, 2], up.clone()), (&[2, 2], down.clone())),
            extra,
        ]
        .concat();
        f.lora(name, &tensors).unwrap()
    };
    // Output axis (dora_scale [2,1]): norms of the ORIGINAL rows: 5 and 5.
    let lib = dora("dora_out", &[2, 1], vec![2.0, 10.0]);
    let scaled: Vec<f32> = (0..4)
        .map(|i| wc[i] * [2.0, 10.0][i / 2] / (5.0 + eps))
        .collect();
    close(&f.apply(&lib, 1.0, &key), &scaled);
    // Strength 0.5: W + 0.5 (W_c' − W).
    let half: Vec<f32> = (0..4).map(|i| w[i] + 0.5 * (scaled[i] - w[i])).collect();
    close(&f.apply(&lib, 0.5, &key), &half);
    // Input axis (dora_scale [1,2]): norms of W_c's columns: sqrt(3.5²) and sqrt(5²+4.5²).
    let lib = dora("dora_in", &[1, 2], vec![1.0, 3.0]);
    let cols = [3.5f32, (25.0f32 + 20.25).sqrt()];
    let scaled: Vec<f32> = (0..4)
        .map(|i| wc[i] * [1.0, 3.0][i % 2] / (cols[i % 2] + eps))
        .collect();
    close(&f.apply(&lib, 1.0, &key), &scaled);
}

/// diffusers/PEFT names (`lora_A`/`lora_B`, `unet.`/`text_encoder_2.` prefixes, no alpha →
/// scale 1); the te2 `k_proj` lands on rows 2..4 of the fused in_proj.
#[test]
fn peft_names_and_fused_rows() {
    let f = fixture();
    let lib = f
        .lora(
            "peft",
            &vec![
                t(
                    "text_encoder_2.text_model.encoder.layers.0.self_attn.k_proj.lora_A.weight",
                    &[1, 2],
                    vec![1.0, 2.0],
                ),
                t(
                    "text_encoder_2.text_model.encoder.layers.0.self_attn.k_proj.lora_B.weight",
                    &[2, 1],
                    vec![0.5, -1.0],
                ),
                t("unet.down_blocks.1.attentions.0.proj_in.lora_A.weight", &[1, 3], vec![1.0, 0.0, 2.0]),
                t("unet.down_blocks.1.attentions.0.proj_in.lora_B.weight", &[2, 1], vec![1.0, 1.0]),
                t(
                    "base_model.model.text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight",
                    &[1, 2],
                    vec![1.0, 1.0],
                ),
                t(
                    "base_model.model.text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight",
                    &[2, 1],
                    vec![1.0, 0.0],
                ),
            ],
        )
        .unwrap();
    assert_eq!(lib.loras()[0].stats.unmatched, 0);
    let key = format!("{IN_PROJ}_weight");
    let mut want = f.base[&key].clone();
    // B·A = [[0.5, 1], [-1, -2]] on rows 2, 3.
    for (i, d) in [0.5, 1.0, -1.0, -2.0].iter().enumerate() {
        want[4 + i] += 2.0 * d;
    }
    close(&f.apply(&lib, 2.0, &key), &want);
    let key = format!("{PROJ_IN}.weight");
    close(
        &f.apply(&lib, 1.0, &key),
        &add(&f.base[&key], &[1.0, 0.0, 2.0, 1.0, 0.0, 2.0], 1.0),
    );
    let key =
        "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight";
    close(&f.apply(&lib, 1.0, key), &[2.0, 1.0, 0.0, 1.0]);
}

/// Full `diff` / `diff_b` deltas (no alpha), including the bias rows of a fused in_proj.
#[test]
fn diff_and_diff_b() {
    let f = fixture();
    let m = "lora_unet_input_blocks_1_0_in_layers_2";
    let diff = seq(36, 9.0);
    let lib = f
        .lora(
            "diff",
            &vec![
                t(&format!("{m}.diff"), &[2, 2, 3, 3], diff.clone()),
                t(&format!("{m}.diff_b"), &[2], vec![1.0, 2.0]),
                t(&format!("{m}.alpha"), &[], vec![7.0]),
                t(
                    "lora_te2_text_model_encoder_layers_0_self_attn_v_proj.diff_b",
                    &[2],
                    vec![3.0, 4.0],
                ),
            ],
        )
        .unwrap();
    let key = format!("{CONV}.weight");
    close(&f.apply(&lib, 0.5, &key), &add(&f.base[&key], &diff, 0.5));
    close(&f.apply(&lib, 0.5, &format!("{CONV}.bias")), &[1.0, 0.75]);
    close(
        &f.apply(&lib, 0.5, &format!("{IN_PROJ}_bias")),
        &[0.0, 0.0, 0.0, 0.0, 1.5, 2.0],
    );
}

/// fp16 LoRA factors are used exactly as stored (upcast, not re-rounded).
#[test]
fn fp16_lora_values_are_used_exactly() {
    let f = fixture();
    // 0.1 is not representable: the fp16 value is 0.0999755859375.
    let lib = f
        .lora_meta(
            "f16",
            &kohya(
                PROJ_IN_MODULE,
                (&[2, 1], vec![0.1, 1.0]),
                (&[1, 3], vec![1.0, 0.0, 0.0]),
            ),
            StDtype::F16,
            &[],
        )
        .unwrap();
    let key = format!("{PROJ_IN}.weight");
    let got = f.apply(&lib, 1.0, &key);
    assert_eq!(got[0], f.base[&key][0] + half::f16::from_f32(0.1).to_f32());
    assert_eq!(got[3], f.base[&key][3] + 1.0);
    assert_ne!(half::f16::from_f32(0.1).to_f32(), 0.1);
}

#[test]
fn unknown_keys_are_counted() {
    let f = fixture();
    let tensors = [
        proj_in_ones(),
        kohya(
            "lora_unet_input_blocks_9_1_proj_in",
            (&[2, 1], vec![1.0; 2]),
            (&[1, 3], vec![1.0; 3]),
        ),
        vec![
            t("lora_unet_label_emb_0_0.diff", &[2], vec![1.0; 2]),
            t(
                "lora_te1_text_model_encoder_layers_7_mlp_fc1.diff",
                &[2],
                vec![1.0; 2],
            ),
            t(&format!("{PROJ_IN_MODULE}.something_new"), &[1], vec![1.0]),
        ],
    ]
    .concat();
    let lib = f.lora("partial", &tensors).unwrap();
    let s = &lib.loras()[0].stats;
    assert_eq!(
        (s.modules, s.matched, s.unmatched, s.unknown_tensors),
        (4, 1, 3, 1),
        "{s:?}"
    );
    assert!(s
        .unmatched_examples
        .contains(&"lora_unet_input_blocks_9_1_proj_in".to_string()));
}

#[test]
fn loras_for_other_architectures_are_refused() {
    let f = fixture();
    let ones = |n: usize| vec![1.0; n];
    // (file name, tensors, metadata, what the error must mention)
    type Case<'a> = (&'a str, Tensors, &'a [(&'a str, &'a str)], &'a str);
    let cases: Vec<Case> = vec![
        // SD 1.5: one text encoder (`lora_te_`).
        (
            "sd15_te",
            [
                kohya(
                    "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
                    (&[2, 1], ones(2)),
                    (&[1, 2], ones(2)),
                ),
                proj_in_ones(),
            ]
            .concat(),
            &[],
            "lora_te_",
        ),
        // SD 1.5 UNet names that exist in SDXL's diffusers naming, with other widths (768-wide
        // cross-attention context against this checkpoint's).
        (
            "sd15_unet",
            kohya(
                "lora_unet_down_blocks_1_attentions_0_proj_in",
                (&[2, 1], ones(2)),
                (&[1, 768], vec![0.0; 768]),
            ),
            &[],
            "shapes",
        ),
        // Metadata that names SD 1.5.
        (
            "sd15_meta",
            proj_in_ones(),
            &[("ss_base_model_version", "sd_v1")],
            "sd_v1",
        ),
        // Nothing matches (e.g. a Flux LoRA).
        (
            "flux",
            kohya(
                "lora_transformer_single_blocks_0_attn_to_q",
                (&[2, 1], ones(2)),
                (&[1, 2], ones(2)),
            ),
            &[],
            "none of its 1 modules",
        ),
        (
            "flux_meta",
            proj_in_ones(),
            &[("modelspec.architecture", "flux-1-dev/lora")],
            "flux-1-dev",
        ),
    ];
    for (name, tensors, meta, says) in cases {
        let e = f.lora_meta(name, &tensors, StDtype::F32, meta).unwrap_err();
        assert!(
            matches!(e, LoraError::WrongArchitecture { .. }),
            "{name}: {e}"
        );
        assert!(e.to_string().contains(says), "{name}: {e}");
    }
    // An SDXL LoRA with model-spec metadata loads.
    f.lora_meta(
        "sdxl_meta",
        &proj_in_ones(),
        StDtype::F32,
        &[("modelspec.architecture", "stable-diffusion-xl-v1-base/lora")],
    )
    .unwrap();
}

#[test]
fn malformed_modules_and_files_are_clear_errors() {
    let f = fixture();
    let e = f
        .lora(
            "half",
            &vec![t(
                &format!("{PROJ_IN_MODULE}.lora_up.weight"),
                &[2, 1],
                vec![1.0; 2],
            )],
        )
        .unwrap_err();
    assert!(e.to_string().contains("no `down`"), "{e}");
    let bad = f.dir.join("bad.safetensors");
    std::fs::write(&bad, b"PK\x03\x04 this is a zip").unwrap();
    let e = f.load("bad", bad).unwrap_err();
    assert!(e.to_string().contains("not a safetensors file"), "{e}");
}
