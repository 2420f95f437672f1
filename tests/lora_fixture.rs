//! LoRA loading, resolution and exact switching on the `mini-m` fixture checkpoint and its
//! kohya LoRAs (tests/fixtures/README.md, "LoRA").

use candle_core::{DType, Device, Tensor};
use sdxl_worker::lora::{ActiveLora, LoraEntry, LoraLibrary, LoraState, WeightStore};
use sdxl_worker::weights::Checkpoint;
use std::path::PathBuf;
use std::sync::Arc;

fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(p)
}

const FP16: &str = "lora/mini-m.kohya_ldm.fp16.safetensors";
const FP32: &str = "lora/mini-m.kohya_ldm.safetensors";
const DIFFUSERS: &str = "lora/mini-m.kohya_diffusers.safetensors";

fn checkpoint() -> Arc<Checkpoint> {
    Checkpoint::open(fixture("mini-m.fp16.safetensors")).unwrap()
}

fn library(ckpt: &Checkpoint) -> LoraLibrary {
    let entries: Vec<LoraEntry> = [("fp16", FP16), ("fp32", FP32), ("diffusers", DIFFUSERS)]
        .iter()
        .map(|(n, p)| LoraEntry {
            name: n.to_string(),
            path: fixture(p),
            default_weight: 1.0,
        })
        .collect();
    LoraLibrary::load(&entries, ckpt.shapes()).unwrap()
}

/// A store holding every UNet and text-encoder weight in `dtype`, as a model build leaves it.
fn store(ckpt: &Arc<Checkpoint>, dtype: DType) -> Arc<WeightStore> {
    store_of(ckpt, dtype, |_| true)
}

/// A store holding the UNet and text-encoder weights that `keep` selects.
fn store_of(ckpt: &Arc<Checkpoint>, dtype: DType, keep: impl Fn(&str) -> bool) -> Arc<WeightStore> {
    let store = WeightStore::new(ckpt.var_builder(dtype, &Device::Cpu));
    for (k, info) in ckpt.tensors() {
        if !k.starts_with("first_stage_model.")
            && info.dtype == sdxl_worker::weights::StDtype::F16
            && keep(k)
        {
            store.load(k, &info.shape, dtype).unwrap();
        }
    }
    store
}

fn report() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("lora/mini-m.report.json")).unwrap())
        .unwrap()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn bits(t: &Tensor) -> Vec<u8> {
    let t = t.flatten_all().unwrap();
    match t.dtype() {
        DType::F32 => t
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F16 => t
            .to_vec1::<half::f16>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        d => panic!("unexpected dtype {d:?}"),
    }
}

#[test]
fn every_fixture_module_resolves_with_no_unmatched_key() {
    let ckpt = checkpoint();
    let lib = library(&ckpt);
    let r = report();
    let modules = r["modules"].as_array().unwrap();
    assert_eq!(modules.len(), 222);
    for l in lib.loras() {
        assert_eq!(l.stats.modules, 222, "{}", l.name);
        assert_eq!(l.stats.matched, 222, "{}: {:?}", l.name, l.stats);
        assert_eq!(
            l.stats.unmatched, 0,
            "{}: {:?}",
            l.name, l.stats.unmatched_examples
        );
        assert_eq!(l.stats.unknown_tensors, 0, "{}", l.name);
        assert_eq!(l.patches.len(), 222);
    }
    // Both namings reach the same checkpoint key (and row block) for every module.
    let (_, ldm) = lib.get("fp32").unwrap();
    let (_, dif) = lib.get("diffusers").unwrap();
    for m in modules {
        let a = ldm
            .patches
            .iter()
            .find(|p| p.module == m["kohya_ldm"].as_str().unwrap())
            .unwrap();
        let b = dif
            .patches
            .iter()
            .find(|p| p.module == m["kohya_diffusers"].as_str().unwrap())
            .unwrap();
        assert_eq!(a.target, b.target, "{}", m["module"]);
        assert_eq!(a.alpha_eff, m["alpha"].as_f64().unwrap() as f32 / 4.0);
        let want_prefix = match m["component"].as_str().unwrap() {
            "unet" => "model.diffusion_model.",
            "text_encoder" => "conditioner.embedders.0.transformer.",
            _ => "conditioner.embedders.1.model.",
        };
        assert!(a.target.key.starts_with(want_prefix), "{}", a.target.key);
        // Identical deltas, bit for bit.
        let shape: Vec<usize> = ckpt.shapes()[&a.target.key].clone();
        let mut s = shape.clone();
        if let Some((_, n)) = a.target.rows {
            s[0] = n;
        }
        let da = a.adapter.delta(&Device::Cpu, &s).unwrap();
        let db = b.adapter.delta(&Device::Cpu, &s).unwrap();
        assert_eq!(bits(&da), bits(&db), "{}", m["module"]);
    }
}

#[test]
fn te2_modules_hit_the_rows_of_the_fused_in_proj() {
    let ckpt = checkpoint();
    let lib = library(&ckpt);
    let (_, l) = lib.get("fp16").unwrap();
    let key = "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight";
    for (i, part) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
        let name = format!("lora_te2_text_model_encoder_layers_1_self_attn_{part}");
        let p = l.patches.iter().find(|p| p.module == name).unwrap();
        assert_eq!(p.target.key, key);
        assert_eq!(p.target.rows, Some((i * 128, 128)));
    }
    // Unfused modules: Hugging Face name → OpenCLIP key.
    for (module, key) in [
        (
            "lora_te2_text_model_encoder_layers_0_self_attn_out_proj",
            "conditioner.embedders.1.model.transformer.resblocks.0.attn.out_proj.weight",
        ),
        (
            "lora_te2_text_model_encoder_layers_0_mlp_fc1",
            "conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_fc.weight",
        ),
    ] {
        let p = l.patches.iter().find(|p| p.module == module).unwrap();
        assert_eq!(p.target.key, key, "{module}");
    }
}

/// Reads a LoRA tensor of the fixture file as f64 through an independent path (raw bytes).
fn raw(file: &Checkpoint, name: &str) -> (Vec<usize>, Vec<f64>) {
    let info = file.info(name).unwrap();
    let b = file.bytes(name).unwrap();
    let v: Vec<f64> = match info.dtype {
        sdxl_worker::weights::StDtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        sdxl_worker::weights::StDtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        d => panic!("{d:?}"),
    };
    (info.shape.clone(), v)
}

/// Merging the fp16 LoRA at 0.6 gives, for every one of the 222 modules, the original weight
/// plus 0.6 · alpha/rank · up·down computed here independently in f64 (conv: up[o,r] ·
/// down[r,i,kh,kw]), on the right rows of te2's fused in_proj; and no other key changes.
#[test]
fn merged_weights_match_an_independent_computation() {
    let ckpt = checkpoint();
    let lib = library(&ckpt);
    let store = store(&ckpt, DType::F32);
    let lfile = Checkpoint::open(fixture(FP16)).unwrap();
    let (idx, _) = lib.get("fp16").unwrap();
    let mut state = LoraState::new();
    let set = [ActiveLora {
        index: idx,
        unet_weight: 0.6,
        clip_weight: 0.6,
    }];
    let stats = state.switch(&lib, &set, &store).unwrap();
    // 222 modules; te2's q/k/v share one key per layer: 222 - 2·2 keys.
    assert_eq!(stats.patched_keys, 218);
    let r = report();
    let mut expected: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    let (_, l) = lib.get("fp16").unwrap();
    for m in r["modules"].as_array().unwrap() {
        let name = m["kohya_ldm"].as_str().unwrap();
        let p = l.patches.iter().find(|p| p.module == name).unwrap();
        let (us, up) = raw(&lfile, &format!("{name}.lora_up.weight"));
        let (ds, down) = raw(&lfile, &format!("{name}.lora_down.weight"));
        let alpha = raw(&lfile, &format!("{name}.alpha")).1[0];
        let (out, rank) = (us[0], us[1]);
        let inner: usize = ds[1..].iter().product();
        let key = p.target.key.clone();
        let base = expected.entry(key.clone()).or_insert_with(|| {
            f32s(
                &store
                    .original(&key, &ckpt.shapes()[&key], DType::F32)
                    .unwrap(),
            )
            .iter()
            .map(|&v| v as f64)
            .collect()
        });
        let row0 = p.target.rows.map(|r| r.0).unwrap_or(0);
        for o in 0..out {
            for i in 0..inner {
                let mut acc = 0.0;
                for k in 0..rank {
                    acc += up[o * rank + k] * down[k * inner + i];
                }
                base[(row0 + o) * inner + i] += 0.6 * alpha / rank as f64 * acc;
            }
        }
    }
    for (key, want) in &expected {
        let got = f32s(&store.resident(key).unwrap());
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        let diff = got
            .iter()
            .zip(want)
            .fold(0f64, |m, (g, w)| m.max((*g as f64 - w).abs()));
        assert!(
            diff <= 2e-6 * scale,
            "{key}: max diff {diff} (scale {scale})"
        );
    }
    // Every other weight is untouched.
    for (k, info) in ckpt.tensors() {
        if expected.contains_key(k) {
            continue;
        }
        if let Some(t) = store.resident(k) {
            let orig = store.original(k, &info.shape, DType::F32).unwrap();
            assert_eq!(bits(&t), bits(&orig), "{k} changed");
        }
    }
}

/// The fp16 file's values are the fp32 file's rounded to fp16 and are upcast exactly: the
/// f32 factors seen by the math equal `f16(x).to_f32()` of the fp32 file.
#[test]
fn fp16_factors_upcast_exactly() {
    let ckpt = checkpoint();
    let lib = library(&ckpt);
    let (_, a) = lib.get("fp16").unwrap();
    let (_, b) = lib.get("fp32").unwrap();
    for (pa, pb) in a.patches.iter().zip(&b.patches) {
        assert_eq!(pa.module, pb.module);
        let (
            sdxl_worker::lora::format::Adapter::Lora {
                up: ua, down: da, ..
            },
            sdxl_worker::lora::format::Adapter::Lora {
                up: ub, down: db, ..
            },
        ) = (&pa.adapter, &pb.adapter)
        else {
            panic!("fixture modules are plain LoRA");
        };
        assert_eq!(ua.dtype(), DType::F16);
        for (x, y) in [(ua, ub), (da, db)] {
            let up: Vec<f32> = f32s(x);
            let rounded: Vec<f32> = f32s(y)
                .iter()
                .map(|v| half::f16::from_f32(*v).to_f32())
                .collect();
            assert_eq!(up, rounded, "{}", pa.module);
        }
    }
}

fn set(lib: &LoraLibrary, items: &[(&str, f32, f32)]) -> Vec<ActiveLora> {
    items
        .iter()
        .map(|(n, w, c)| ActiveLora {
            index: lib.get(n).unwrap().0,
            unet_weight: *w,
            clip_weight: *c,
        })
        .collect()
}

/// Every resident weight's bytes, by key.
type Snapshot = Vec<(String, Vec<u8>)>;

fn snapshot(store: &WeightStore, ckpt: &Checkpoint) -> Snapshot {
    ckpt.tensors()
        .keys()
        .filter_map(|k| store.resident(k).map(|t| (k.clone(), bits(&t))))
        .collect()
}

/// A, then B, then none: every resident weight equals the original bit for bit, in f16
/// (the GPU dtype) and f32.
#[test]
fn apply_a_then_b_then_none_restores_bit_for_bit() {
    let ckpt = checkpoint();
    let lib = library(&ckpt);
    for (dtype, keep) in [(DType::F16, false), (DType::F32, false), (DType::F16, true)] {
        let store = if keep {
            let s = WeightStore::keeping_originals(ckpt.var_builder(dtype, &Device::Cpu));
            for (k, info) in ckpt.tensors() {
                if !k.starts_with("first_stage_model.")
                    && info.dtype == sdxl_worker::weights::StDtype::F16
                {
                    s.load(k, &info.shape, dtype).unwrap();
                }
            }
            s
        } else {
            store(&ckpt, dtype)
        };
        let original = snapshot(&store, &ckpt);
        let mut state = LoraState::new();
        let a = set(&lib, &[("fp16", 1.0, 1.0)]);
        let b = set(&lib, &[("diffusers", 0.6, 0.3), ("fp32", -0.5, 0.0)]);
        state.switch(&lib, &a, &store).unwrap();
        let with_a = snapshot(&store, &ckpt);
        assert_ne!(with_a, original);
        state.switch(&lib, &b, &store).unwrap();
        assert_ne!(snapshot(&store, &ckpt), with_a);
        let s = state.switch(&lib, &[], &store).unwrap();
        assert_eq!(s.patched_keys, 0);
        assert_eq!(s.restored_keys, 218);
        assert_eq!(
            snapshot(&store, &ckpt),
            original,
            "{dtype:?} keep originals {keep}"
        );
        // Switching again from kept originals gives the same bits as from the file.
        state.switch(&lib, &a, &store).unwrap();
        assert_eq!(
            snapshot(&store, &ckpt),
            with_a,
            "{dtype:?} keep originals {keep}"
        );
        state.switch(&lib, &[], &store).unwrap();
        assert_eq!(state.patched_keys(), 0);
    }
}

/// 1,000 switches over four sets: each set always produces the same bits as its first
/// application, and the end state with no LoRA is the original. To keep the test quick only
/// the text encoders (including te2's fused in_proj row blocks) and the UNet's middle block
/// are resident; keys no model loaded are skipped by a switch, and drift is a per-key matter.
#[test]
fn thousand_switches_do_not_drift() {
    let ckpt = checkpoint();
    let lib = library(&ckpt);
    let store = store_of(&ckpt, DType::F16, |k| {
        k.starts_with("conditioner.") || k.contains(".middle_block.")
    });
    let original = snapshot(&store, &ckpt);
    let sets = [
        set(&lib, &[("fp16", 1.0, 1.0)]),
        set(&lib, &[("fp16", 0.6, 0.6), ("diffusers", 0.8, 0.2)]),
        set(&lib, &[("fp32", 1.5, 1.0)]),
        vec![],
    ];
    let mut first: Vec<Option<Snapshot>> = vec![None; sets.len()];
    let mut state = LoraState::new();
    for i in 0..1000 {
        let which = (i * 7 + i / 3) % sets.len();
        state.switch(&lib, &sets[which], &store).unwrap();
        // Checking every switch is slow; check each set's first use and every 97th switch.
        if first[which].is_none() {
            first[which] = Some(snapshot(&store, &ckpt));
        } else if i % 97 == 0 {
            assert_eq!(Some(snapshot(&store, &ckpt)), first[which], "switch {i}");
        }
    }
    assert_eq!(first[3].as_ref(), Some(&original));
    for (which, s) in sets.iter().enumerate() {
        state.switch(&lib, s, &store).unwrap();
        assert_eq!(Some(snapshot(&store, &ckpt)), first[which]);
    }
    state.switch(&lib, &[], &store).unwrap();
    assert_eq!(snapshot(&store, &ckpt), original);
}

/// Switching between sets that share a LoRA at the same strength recomputes only keys
/// whose contributions change.
#[test]
fn unchanged_keys_are_not_recomputed() {
    let ckpt = checkpoint();
    let lib = library(&ckpt);
    let store = store(&ckpt, DType::F32);
    let mut state = LoraState::new();
    state
        .switch(&lib, &set(&lib, &[("fp16", 1.0, 1.0)]), &store)
        .unwrap();
    let s = state
        .switch(&lib, &set(&lib, &[("fp16", 1.0, 0.5)]), &store)
        .unwrap();
    // Only the text-encoder keys change strength: 12 te1 + 8 te2 keys.
    assert_eq!(s.patched_keys, 20);
    assert_eq!(s.unchanged_keys, 198);
    let s = state
        .switch(&lib, &set(&lib, &[("fp16", 1.0, 0.5)]), &store)
        .unwrap();
    assert_eq!((s.patched_keys, s.restored_keys), (0, 0));
}

#[test]
fn unknown_lora_names_list_the_available_ones() {
    let ckpt = checkpoint();
    let lib = library(&ckpt);
    let e = lib
        .resolve(&[
            ("fp16".into(), None, None),
            ("nope".into(), Some(1.0), None),
        ])
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("unknown LoRA `nope`"), "{msg}");
    assert!(msg.contains("diffusers, fp16, fp32"), "{msg}");
    assert_eq!(e.error_type(), "invalid_input");
    let ok = lib
        .resolve(&[
            ("fp16".into(), Some(0.8), None),
            ("fp32".into(), None, Some(0.25)),
        ])
        .unwrap();
    assert_eq!((ok[0].unet_weight, ok[0].clip_weight), (0.8, 0.8));
    assert_eq!((ok[1].unet_weight, ok[1].clip_weight), (1.0, 0.25));
    assert!(lib
        .resolve(&[("fp16".into(), Some(f64::NAN), None)])
        .is_err());
}

/// The pipeline-facing runtime: prompt tags and the request list resolve into one set, the
/// tags leave the prompt, models built from its `VarBuilder` see the merged weights, and the
/// same set twice changes nothing.
#[test]
fn runtime_prepares_request_and_prompt_tags() {
    use sdxl_worker::lora::LoraRuntime;
    let ckpt = checkpoint();
    let lib = library(&ckpt);
    let mut rt = LoraRuntime::new(lib, ckpt.var_builder(DType::F32, &Device::Cpu));
    let key = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight";
    // What a model built from the runtime now would get for `key`.
    let served = |rt: &LoraRuntime| {
        f32s(
            &rt.var_builder(DType::F32, &Device::Cpu)
                .get((64, 64), key)
                .unwrap(),
        )
    };
    let original = served(&rt);

    let p = rt
        .prepare(
            &[("fp32".into(), Some(0.5), None)],
            "a cat <lora:fp16:0.8>, sitting",
        )
        .unwrap();
    assert_eq!(p.prompt, "a cat , sitting");
    assert_eq!(
        p.active,
        vec![
            ("fp16".to_string(), 0.8, 0.8),
            ("fp32".to_string(), 0.5, 0.5)
        ]
    );
    assert!(p.changed);
    let merged = served(&rt);
    assert_ne!(merged, original);

    // The request list overrides a tag of the same LoRA.
    let p = rt
        .prepare(
            &[
                ("fp16".into(), Some(0.8), None),
                ("fp32".into(), Some(0.5), None),
            ],
            "<lora:fp16:0.1>x",
        )
        .unwrap();
    assert!(!p.changed, "same set as before");
    assert_eq!(p.prompt, "x");

    let e = rt.prepare(&[], "<lora:missing:1>").unwrap_err();
    assert!(e.to_string().contains("unknown LoRA `missing`"), "{e}");
    let e = rt.prepare(&[], "<lora:fp16:lots>").unwrap_err();
    assert_eq!(e.error_type(), "invalid_input");

    let p = rt.prepare(&[], "plain").unwrap();
    assert!(p.changed);
    let back = served(&rt);
    assert_eq!(back, original);
}
