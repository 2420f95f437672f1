//! Text encoders against the diffusers references: `prompt_embeds` (penultimate layers of both
//! encoders, concatenated) and `pooled_prompt_embeds` (te2 EOS output projected), for every
//! reference case and its negative prompt when one was encoded. CPU, f32.

mod te_vae_common;

use candle_core::{DType, Device, Tensor};
use sdxl_worker::model::clip::{
    sdxl_text_conditioning, ClipActivation, ClipKind, ClipTextConfig, ClipTextModel,
    SDXL_LAYERS_FROM_END,
};
use sdxl_worker::model::ModelError;
use te_vae_common::*;

const TE1: &str = "conditioner.embedders.0.transformer";
const TE2: &str = "conditioner.embedders.1.model";
/// The acceptance tolerance: max abs diff ≤ 1e-4 × the reference's max abs value.
const TOL: f32 = 1e-4;

fn load_encoders(dtype: DType) -> (ClipTextModel, ClipTextModel) {
    let shapes = shape_map(&checkpoint());
    let vb = var_builder(dtype);
    let c1 = ClipTextConfig::infer(&shapes, TE1, ClipKind::OpenAiClip).unwrap();
    let c2 = ClipTextConfig::infer(&shapes, TE2, ClipKind::OpenClip).unwrap();
    (
        ClipTextModel::load(vb.pp(TE1), &c1).unwrap(),
        ClipTextModel::load(vb.pp(TE2), &c2).unwrap(),
    )
}

/// (width, layers, heads, MLP width, vocabulary, positions) of a text encoder.
fn sizes(c: &ClipTextConfig) -> (usize, usize, usize, usize, usize, usize) {
    (
        c.width,
        c.layers,
        c.heads,
        c.mlp_width,
        c.vocab_size,
        c.max_positions,
    )
}

#[test]
fn configs_are_read_from_shapes() {
    let shapes = shape_map(&checkpoint());
    let c1 = ClipTextConfig::infer(&shapes, TE1, ClipKind::OpenAiClip).unwrap();
    let c2 = ClipTextConfig::infer(&shapes, &format!("{TE2}."), ClipKind::OpenClip).unwrap();
    // fixtures/README.md, "The model": te1 64 / 2 / 1 / 256, te2 128 / 2 / 2 / 512, proj 96.
    assert_eq!(sizes(&c1), (64, 2, 1, 256, 49408, 77));
    assert_eq!(c1.activation, ClipActivation::QuickGelu);
    assert_eq!(c1.projection_dim, None);
    assert_eq!(sizes(&c2), (128, 2, 2, 512, 49408, 77));
    assert_eq!(c2.activation, ClipActivation::GeluErf);
    assert_eq!(c2.projection_dim, Some(96));
}

/// The prompt's token ids of a reference case, for tokenizer 1 and tokenizer 2.
fn case_input_ids(dir: &std::path::Path) -> (Tensor, Tensor) {
    (
        ids_tensor(&dir.join("input_ids_tokenizer.npy")),
        ids_tensor(&dir.join("input_ids_tokenizer_2.npy")),
    )
}

/// Encodes one prompt's ids the way the SDXL pipeline does.
fn encode(
    te1: &ClipTextModel,
    te2: &ClipTextModel,
    ids1: &Tensor,
    ids2: &Tensor,
) -> (Tensor, Tensor) {
    sdxl_text_conditioning(te1, te2, ids1, ids2, SDXL_LAYERS_FROM_END).unwrap()
}

#[test]
fn prompt_embeddings_match_diffusers_for_every_case() {
    let (te1, te2) = load_encoders(DType::F32);
    let mut worst = (0f32, 0f32);
    let mut checked = 0;
    for id in no_lora_case_ids() {
        let dir = cases_dir().join(&id);
        for neg in ["", "negative_"] {
            let ids1 = dir.join(format!("{neg}input_ids_tokenizer.npy"));
            // Negatives exist only when diffusers encoded them (CFG on, negative prompt set).
            let encoded = ids1.exists() && dir.join(format!("{neg}prompt_embeds.npy")).exists();
            if !encoded {
                assert!(neg == "negative_", "{id}: no input ids");
                continue;
            }
            let ids2 = dir.join(format!("{neg}input_ids_tokenizer_2.npy"));
            let (embeds, pooled) = encode(&te1, &te2, &ids_tensor(&ids1), &ids_tensor(&ids2));
            let want_e = npy_tensor(&dir.join(format!("{neg}prompt_embeds.npy")));
            let want_p = npy_tensor(&dir.join(format!("{neg}pooled_prompt_embeds.npy")));
            let de = rel_max_diff(&embeds, &want_e);
            let dp = rel_max_diff(&pooled, &want_p);
            assert!(de <= TOL, "{id} {neg}prompt_embeds: rel diff {de}");
            assert!(dp <= TOL, "{id} {neg}pooled: rel diff {dp}");
            worst = (worst.0.max(de), worst.1.max(dp));
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} prompts checked");
    eprintln!(
        "{checked} prompts: worst rel diff embeds {:.3e}, pooled {:.3e}",
        worst.0, worst.1
    );
}

#[test]
fn u32_ids_and_batches_give_the_same_result() {
    let (te1, te2) = load_encoders(DType::F32);
    let dir = cases_dir().join("longprompt_m_euler_a_128x128_nolora_s5_n8");
    let (i1, i2) = case_input_ids(&dir);
    let (e, p) = encode(&te1, &te2, &i1, &i2);
    let (e32, p32) = encode(
        &te1,
        &te2,
        &i1.to_dtype(DType::U32).unwrap(),
        &i2.to_dtype(DType::U32).unwrap(),
    );
    assert_eq!(rel_max_diff(&e32, &e), 0.0);
    assert_eq!(rel_max_diff(&p32, &p), 0.0);
    // A batch of the prompt and the empty prompt: each row as if encoded alone.
    let edir = cases_dir().join("emptyprompt_m_euler_128x128_nolora_s13_n8");
    let j1 = ids_tensor(&edir.join("input_ids_tokenizer.npy"));
    let j2 = ids_tensor(&edir.join("input_ids_tokenizer_2.npy"));
    let (eb, pb) = encode(
        &te1,
        &te2,
        &Tensor::cat(&[&i1, &j1], 0).unwrap(),
        &Tensor::cat(&[&i2, &j2], 0).unwrap(),
    );
    assert!(rel_max_diff(&eb.narrow(0, 0, 1).unwrap(), &e) < 1e-6);
    assert!(rel_max_diff(&pb.narrow(0, 0, 1).unwrap(), &p) < 1e-6);
    let want = npy_tensor(&edir.join("prompt_embeds.npy"));
    assert!(rel_max_diff(&eb.narrow(0, 1, 1).unwrap(), &want) < TOL);
}

#[test]
fn layer_selection_differs_and_is_validated() {
    let (te1, _) = load_encoders(DType::F32);
    let dir = cases_dir().join("m_euler_128x128_nolora_s0_n8");
    let ids = ids_tensor(&dir.join("input_ids_tokenizer.npy"));
    let last = te1.forward(&ids, 1, false).unwrap().hidden;
    let pen = te1.forward(&ids, 2, false).unwrap().hidden;
    let want = npy_tensor(&dir.join("prompt_embeds.npy"))
        .narrow(2, 0, 64)
        .unwrap();
    assert!(rel_max_diff(&pen, &want) < TOL);
    assert!(
        rel_max_diff(&last, &want) > 1e-2,
        "last layer must differ from penultimate"
    );
    assert!(matches!(
        te1.forward(&ids, 0, false),
        Err(ModelError::Unsupported(_))
    ));
    // layers + 1 = `hidden_states[0]`, the embeddings before any layer; one more is too far.
    let embeddings = te1.forward(&ids, 3, false).unwrap().hidden;
    assert!(rel_max_diff(&embeddings, &pen) > 1e-2);
    assert!(matches!(
        te1.forward(&ids, 4, false),
        Err(ModelError::Unsupported(_))
    ));
    let too_long = Tensor::zeros((1, 78), DType::U32, &Device::Cpu).unwrap();
    assert!(te1.forward(&too_long, 2, false).is_err());
    let bad_id = Tensor::new(&[[49408u32]], &Device::Cpu).unwrap();
    assert!(te1.forward(&bad_id, 2, false).is_err());
}

#[test]
fn half_precision_runs_close_to_f32() {
    let (f1, f2) = load_encoders(DType::F32);
    let dir = cases_dir().join("m_euler_128x128_nolora_s0_n8");
    let (i1, i2) = case_input_ids(&dir);
    let (e, p) = encode(&f1, &f2, &i1, &i2);
    for dtype in [DType::F16, DType::BF16] {
        let (h1, h2) = load_encoders(dtype);
        let (eh, ph) = encode(&h1, &h2, &i1, &i2);
        assert_eq!(eh.dtype(), dtype);
        let (de, dp) = (rel_max_diff(&eh, &e), rel_max_diff(&ph, &p));
        eprintln!("{dtype:?}: rel diff embeds {de:.3e}, pooled {dp:.3e}");
        // Rounding of half types only (bf16 has 8 mantissa bits).
        let tol = if dtype == DType::F16 { 5e-3 } else { 5e-2 };
        assert!(de < tol && dp < tol, "{dtype:?}: {de} {dp}");
    }
}

/// Writes a copy of the checkpoint's text-encoder tensors with one change, for error tests.
fn damaged_checkpoint(
    dir: &std::path::Path,
    drop: Option<&str>,
    reshape: Option<(&str, Vec<usize>)>,
) -> std::path::PathBuf {
    let vb_tensors = candle_core::safetensors::load(checkpoint(), &Device::Cpu).unwrap();
    let mut out = std::collections::HashMap::new();
    for (k, v) in vb_tensors {
        if !k.starts_with("conditioner.") || Some(k.as_str()) == drop {
            continue;
        }
        let v = match &reshape {
            Some((name, shape)) if *name == k => {
                let n: usize = shape.iter().product();
                v.flatten_all()
                    .unwrap()
                    .narrow(0, 0, n)
                    .unwrap()
                    .reshape(shape.clone())
                    .unwrap()
            }
            _ => v,
        };
        out.insert(k, v);
    }
    let path = dir.join("damaged.safetensors");
    candle_core::safetensors::save(&out, &path).unwrap();
    path
}

fn load_te2_from(path: &std::path::Path) -> Result<ClipTextModel, ModelError> {
    let shapes = shape_map(path);
    let cfg = ClipTextConfig::infer(&shapes, TE2, ClipKind::OpenClip)?;
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(&[path], DType::F32, &Device::Cpu).unwrap()
    };
    ClipTextModel::load(vb.pp(TE2), &cfg)
}

#[test]
fn missing_or_misshapen_tensors_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let name = "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight";
    let p = damaged_checkpoint(tmp.path(), Some(name), None);
    match load_te2_from(&p) {
        Err(ModelError::MissingTensor { name: n }) => assert_eq!(n, name),
        other => panic!("expected MissingTensor, got {other:?}"),
    }
    let p = damaged_checkpoint(tmp.path(), None, Some((name, vec![256, 128])));
    match load_te2_from(&p) {
        Err(ModelError::BadShape { name: n, found, .. }) => {
            assert_eq!(n, name);
            assert_eq!(found, vec![256, 128]);
        }
        other => panic!("expected BadShape, got {other:?}"),
    }
    let proj = "conditioner.embedders.1.model.text_projection";
    let p = damaged_checkpoint(tmp.path(), None, Some((proj, vec![96, 128])));
    let err = load_te2_from(&p).unwrap_err();
    assert!(err.to_string().contains(proj), "{err}");
    let te1_ln = "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight";
    let p = damaged_checkpoint(tmp.path(), Some(te1_ln), None);
    let shapes = shape_map(&p);
    let cfg = ClipTextConfig::infer(&shapes, TE1, ClipKind::OpenAiClip).unwrap();
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(&[&p], DType::F32, &Device::Cpu).unwrap()
    };
    let err = ClipTextModel::load(vb.pp(TE1), &cfg).unwrap_err();
    assert!(err.to_string().contains(te1_ln), "{err}");
    // A file with no text encoder at that prefix.
    let err = ClipTextConfig::infer(&shapes, "conditioner.embedders.5.model", ClipKind::OpenClip)
        .unwrap_err();
    assert!(matches!(err, ModelError::MissingTensor { .. }), "{err}");
}

/// The penultimate hidden state does not run the last layer: poisoning that layer with NaN
/// leaves the SDXL conditioning of te1 unchanged (and does show up in the pooled output).
#[test]
fn layers_after_the_selected_one_are_not_run() {
    let tensors: std::collections::HashMap<String, Tensor> =
        candle_core::safetensors::load(checkpoint(), &Device::Cpu)
            .unwrap()
            .into_iter()
            .filter(|(k, _)| k.starts_with("conditioner."))
            .map(|(k, v)| {
                let last = k.contains(".encoder.layers.1.") || k.contains(".resblocks.1.");
                let v = if last {
                    (v.to_dtype(DType::F32).unwrap() * f64::NAN).unwrap()
                } else {
                    v
                };
                (k, v)
            })
            .collect();
    let shapes = tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let c1 = ClipTextConfig::infer(&shapes, TE1, ClipKind::OpenAiClip).unwrap();
    let c2 = ClipTextConfig::infer(&shapes, TE2, ClipKind::OpenClip).unwrap();
    let te1 = ClipTextModel::load(vb.pp(TE1), &c1).unwrap();
    let te2 = ClipTextModel::load(vb.pp(TE2), &c2).unwrap();
    let dir = cases_dir().join("m_euler_128x128_nolora_s0_n8");
    let (i1, i2) = case_input_ids(&dir);
    let h1 = te1
        .forward(&i1, SDXL_LAYERS_FROM_END, false)
        .unwrap()
        .hidden;
    let want = npy_tensor(&dir.join("prompt_embeds.npy"));
    assert!(rel_max_diff(&h1, &want.narrow(2, 0, 64).unwrap()) < TOL);
    let o2 = te2.forward(&i2, SDXL_LAYERS_FROM_END, true).unwrap();
    assert!(rel_max_diff(&o2.hidden, &want.narrow(2, 64, 128).unwrap()) < TOL);
    let pooled = o2
        .pooled
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(pooled.iter().all(|v| v.is_nan()));
}
