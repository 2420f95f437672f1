//! Checkpoint loading and architecture detection on the mini-m fixture and on modified or
//! synthetic copies of it written to a temporary directory.

use sdxl_worker::weights::layout::{sdxl_layout, write_safetensors, Entry, SdxlDims};
use sdxl_worker::weights::{
    detect, Architecture, Checkpoint, Family, Prediction, StDtype, WeightsError,
};
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mini-m.fp16.safetensors")
}

/// Writes a copy of the fixture after `edit` changed its list of entries (names, shapes);
/// tensor bytes are copied from the original by name (new names get zeros).
fn rewrite(dst: &Path, edit: impl FnOnce(&mut Vec<Entry>)) {
    let src = Checkpoint::open(fixture()).unwrap();
    let mut entries: Vec<Entry> = src
        .tensors()
        .iter()
        .map(|(name, info)| Entry {
            name: name.clone(),
            shape: info.shape.clone(),
            dtype: info.dtype,
        })
        .collect();
    edit(&mut entries);
    write_safetensors(dst, &entries, &[("format", "pt")], |e, buf| {
        if let Ok(bytes) = src.bytes(&e.name) {
            if bytes.len() == buf.len() {
                buf.copy_from_slice(bytes);
            }
        }
    })
    .unwrap();
}

/// Turns the fixture into an SDXL inpainting checkpoint: 9 UNet input channels.
#[allow(clippy::ptr_arg)] // the signature of `rewrite`'s edit callback, which may add entries
fn as_inpaint(entries: &mut Vec<Entry>) {
    for e in entries.iter_mut() {
        if e.name == "model.diffusion_model.input_blocks.0.0.weight" {
            e.shape = vec![32, 9, 3, 3];
        }
    }
}

/// Turns the fixture into a refiner-like checkpoint: OpenCLIP alone, as `embedders.0`.
fn as_refiner(entries: &mut Vec<Entry>) {
    entries.retain(|e| !e.name.starts_with("conditioner.embedders.0."));
    for e in entries.iter_mut() {
        if let Some(rest) = e.name.strip_prefix("conditioner.embedders.1.") {
            e.name = format!("conditioner.embedders.0.{rest}");
        }
    }
}

/// The architecture `detect` finds in the file at `p`.
fn detected(p: &Path) -> Architecture {
    let c = Checkpoint::open(p).unwrap();
    detect(c.path(), c.shapes()).unwrap()
}

#[test]
fn fixture_is_sdxl_base_eps() {
    let c = Checkpoint::open(fixture()).unwrap();
    assert_eq!(c.tensors().len(), 811);
    assert_eq!(c.metadata().get("format").map(String::as_str), Some("pt"));
    let arch = detect(c.path(), c.shapes()).unwrap();
    assert_eq!(arch.family, Family::SdxlBase);
    assert_eq!(arch.prediction, Prediction::Epsilon);
    assert!(!arch.zero_terminal_snr);
}

/// The layout generator (used for full-size synthetic checkpoints) reproduces the fixture's
/// header exactly with mini-m's dimensions, so the full-size layout is the real SDXL one.
#[test]
fn layout_generator_reproduces_fixture_header() {
    let c = Checkpoint::open(fixture()).unwrap();
    let generated = sdxl_layout(&SdxlDims::mini_m(), StDtype::F16);
    let from_file: Vec<(String, Vec<usize>, StDtype)> = c
        .tensors()
        .iter()
        .map(|(k, v)| (k.clone(), v.shape.clone(), v.dtype))
        .collect();
    let generated: Vec<(String, Vec<usize>, StDtype)> = generated
        .into_iter()
        .map(|e| (e.name, e.shape, e.dtype))
        .collect();
    for (a, b) in from_file.iter().zip(&generated) {
        assert_eq!(a, b);
    }
    assert_eq!(from_file.len(), generated.len());
    // The full-size layout has SDXL base 1.0's tensor count and parameter count.
    let full = sdxl_layout(&SdxlDims::sdxl_base(), StDtype::F16);
    let params: usize = full.iter().map(|e| e.shape.iter().product::<usize>()).sum();
    assert!(
        (3_400_000_000..3_600_000_000).contains(&params),
        "{params} parameters"
    );
}

#[test]
fn truncated_file_names_expected_and_found_size() {
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("cut.safetensors");
    let bytes = std::fs::read(fixture()).unwrap();
    std::fs::write(&dst, &bytes[..bytes.len() - 1000]).unwrap();
    let err = Checkpoint::open(&dst).unwrap_err();
    match &err {
        WeightsError::Truncated {
            path,
            expected,
            found,
        } => {
            assert_eq!(path, &dst);
            assert_eq!(*expected, bytes.len() as u64);
            assert_eq!(*found, bytes.len() as u64 - 1000);
        }
        other => panic!("unexpected error {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("cut.safetensors") && msg.contains("truncated"),
        "{msg}"
    );

    // Cut inside the header as well.
    std::fs::write(&dst, &bytes[..100]).unwrap();
    assert!(matches!(
        Checkpoint::open(&dst),
        Err(WeightsError::Truncated { .. })
    ));
    std::fs::write(&dst, &bytes[..3]).unwrap();
    assert!(Checkpoint::open(&dst).is_err());
}

#[test]
fn corrupt_header_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("bad.safetensors");
    let mut bytes = std::fs::read(fixture()).unwrap();
    // Overwrite the start of the JSON with garbage of the same length.
    bytes[9..20].copy_from_slice(b"xxxxxxxxxxx");
    std::fs::write(&dst, &bytes).unwrap();
    let msg = Checkpoint::open(&dst).unwrap_err().to_string();
    assert!(
        msg.contains("bad.safetensors") && msg.contains("corrupt"),
        "{msg}"
    );

    // Extra bytes after the last tensor.
    let mut bytes = std::fs::read(fixture()).unwrap();
    bytes.extend_from_slice(&[0; 10]);
    std::fs::write(&dst, &bytes).unwrap();
    let msg = Checkpoint::open(&dst).unwrap_err().to_string();
    assert!(msg.contains("10 bytes follow the last tensor"), "{msg}");
}

#[test]
fn pickle_and_zip_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (name, content, tell) in [
        (
            "model.ckpt",
            b"PK\x03\x04\x14\x00\x00\x00archive/data.pkl".to_vec(),
            "zip",
        ),
        (
            "model.safetensors",
            b"PK\x03\x04\x14\x00\x00\x00".to_vec(),
            "zip",
        ),
        (
            "old.pt",
            b"\x80\x02}q\x00(X\x05\x00\x00\x00state".to_vec(),
            "pickle",
        ),
        (
            "model.gguf",
            b"GGUF\x03\x00\x00\x00\x00\x00\x00\x00".to_vec(),
            "GGUF",
        ),
        (
            "page.safetensors",
            b"<!DOCTYPE html><html>".to_vec(),
            "HTML",
        ),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        let err = Checkpoint::open(&p).unwrap_err();
        assert!(
            matches!(err, WeightsError::NotSafetensors { .. }),
            "{name}: {err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(name) && msg.contains(tell), "{msg}");
    }
}

/// A tiny safetensors file with the given (name, shape) F16 tensors.
fn synthetic(dir: &Path, name: &str, tensors: &[(&str, &[usize])]) -> PathBuf {
    let p = dir.join(name);
    let entries: Vec<Entry> = tensors
        .iter()
        .map(|(n, s)| Entry {
            name: n.to_string(),
            shape: s.to_vec(),
            dtype: StDtype::F16,
        })
        .collect();
    write_safetensors(&p, &entries, &[], |_, _| {}).unwrap();
    p
}

fn refusal(p: &Path) -> String {
    let c = Checkpoint::open(p).unwrap();
    match detect(c.path(), c.shapes()) {
        Err(e @ WeightsError::UnsupportedArchitecture { .. }) => e.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn other_architectures_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    const UNET_IN: &str = "model.diffusion_model.input_blocks.0.0.weight";
    const LEVEL0_TO_K: &str =
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight";
    // (file name, tensors, what the refusal must say)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a [usize])], &'a [&'a str]);
    let cases: [Case; 6] = [
        (
            "sd15.safetensors",
            &[
                (UNET_IN, &[320, 4, 3, 3]),
                (LEVEL0_TO_K, &[320, 768]),
                (
                    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
                    &[49408, 8],
                ),
                ("first_stage_model.decoder.conv_in.weight", &[512, 4, 3, 3]),
            ],
            &["Stable Diffusion 1.x", "sd15.safetensors"],
        ),
        (
            "sd2.safetensors",
            &[
                (UNET_IN, &[320, 4, 3, 3]),
                (LEVEL0_TO_K, &[320, 1024]),
                ("cond_stage_model.model.positional_embedding", &[77, 1024]),
            ],
            &["Stable Diffusion 2.x"],
        ),
        (
            "flux.safetensors",
            &[
                (
                    "model.diffusion_model.double_blocks.0.img_attn.qkv.weight",
                    &[96, 32],
                ),
                (
                    "model.diffusion_model.single_blocks.0.linear1.weight",
                    &[96, 32],
                ),
                ("model.diffusion_model.img_in.weight", &[32, 64]),
            ],
            &["a Flux model"],
        ),
        (
            "lora.safetensors",
            &[(
                "lora_unet_input_blocks_4_1_proj_in.lora_down.weight",
                &[4, 64],
            )],
            &["LoRA"],
        ),
        (
            "vae.safetensors",
            &[
                ("encoder.conv_in.weight", &[32, 3, 3, 3]),
                ("decoder.conv_in.weight", &[64, 4, 3, 3]),
            ],
            &["standalone VAE"],
        ),
        ("x.safetensors", &[("foo.bar", &[3])], &["not a recognised"]),
    ];
    for (name, tensors, says) in cases {
        let msg = refusal(&synthetic(dir.path(), name, tensors));
        for s in says {
            assert!(msg.contains(s), "{name}: {msg}");
        }
    }
}

#[test]
fn refiner_and_inpaint_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let inpaint = dir.path().join("inpaint.safetensors");
    rewrite(&inpaint, as_inpaint);
    assert_eq!(detected(&inpaint).family, Family::SdxlInpaint);

    let refiner = dir.path().join("refiner.safetensors");
    rewrite(&refiner, as_refiner);
    assert_eq!(detected(&refiner).family, Family::SdxlRefiner);
}

#[test]
fn v_pred_and_ztsnr_markers() {
    let dir = tempfile::tempdir().unwrap();
    let marker = |name: &str| Entry {
        name: name.to_string(),
        shape: vec![0],
        dtype: StDtype::F32,
    };
    let vpred = dir.path().join("vpred.safetensors");
    rewrite(&vpred, |e| e.push(marker("v_pred")));
    let a = detected(&vpred);
    assert_eq!(
        (a.family, a.prediction, a.zero_terminal_snr),
        (Family::SdxlBase, Prediction::V, false)
    );

    let zsnr = dir.path().join("zsnr.safetensors");
    rewrite(&zsnr, |e| {
        e.push(marker("v_pred"));
        e.push(marker("ztsnr"));
    });
    let a = detected(&zsnr);
    assert_eq!((a.prediction, a.zero_terminal_snr), (Prediction::V, true));
    assert_eq!(a.to_string(), "SDXL base (v-prediction, zero terminal SNR)");
}

#[test]
fn ema_and_unknown_keys_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ema.safetensors");
    rewrite(&p, |e| {
        e.push(Entry {
            name: "model_ema.diffusion_modelinput_blocks00weight".into(),
            shape: vec![32, 4, 3, 3],
            dtype: StDtype::F16,
        });
        e.push(Entry {
            name: "model_ema.num_updates".into(),
            shape: vec![],
            dtype: StDtype::I64,
        });
    });
    assert_eq!(detected(&p).family, Family::SdxlBase);
}

fn load_error(path: &Path) -> String {
    use sdxl_worker::pipeline::{PipelineConfig, SdxlPipeline};
    match SdxlPipeline::load(&PipelineConfig::cpu_f32(path)) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_tensor_is_named_at_load() {
    let dir = tempfile::tempdir().unwrap();
    for victim in [
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.output_blocks.2.2.conv.weight",
        "conditioner.embedders.1.model.text_projection",
        "conditioner.embedders.0.transformer.text_model.encoder.layers.1.mlp.fc2.bias",
        "first_stage_model.decoder.up.2.block.0.nin_shortcut.weight",
    ] {
        let p = dir.path().join("missing.safetensors");
        rewrite(&p, |e| e.retain(|e| e.name != victim));
        eprintln!("removed {victim}");
        let msg = load_error(&p);
        assert!(msg.contains("missing.safetensors"), "{msg}");
        // The message names the tensor, or (when the structure is read from the tensor's
        // presence, like an upsampler) the structural inconsistency it causes.
        let module = victim.rsplit_once('.').map(|(a, _)| a).unwrap();
        let leaf = module.rsplit('.').next().unwrap();
        assert!(
            msg.contains(leaf) || msg.contains("unsupported model structure"),
            "{victim}: {msg}"
        );
    }
}

#[test]
fn reshaped_tensor_is_named_at_load() {
    let dir = tempfile::tempdir().unwrap();
    for (victim, shape) in [
        // Same byte size, different shape: only the model code can notice.
        (
            "model.diffusion_model.input_blocks.4.1.proj_in.weight",
            vec![32, 128],
        ),
        ("conditioner.embedders.1.model.text_projection", vec![96, 128]),
        (
            "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
            vec![16, 256],
        ),
        (
            "first_stage_model.decoder.up.1.block.1.conv1.weight",
            vec![64, 16, 3, 3],
        ),
        ("model.diffusion_model.label_emb.0.0.weight", vec![64, 3264]),
    ] {
        let p = dir.path().join("reshaped.safetensors");
        rewrite(&p, |e| {
            for e in e.iter_mut().filter(|e| e.name == victim) {
                e.shape = shape.clone();
            }
        });
        let msg = load_error(&p);
        eprintln!("{victim}: {msg}");
        assert!(msg.contains("reshaped.safetensors"), "{victim}: {msg}");
        let leaf = victim.rsplit('.').nth(1).unwrap();
        assert!(msg.contains(leaf), "{victim}: {msg}");
    }
}

#[test]
fn refiner_and_inpaint_are_refused_for_txt2img_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("inpaint.safetensors");
    rewrite(&p, as_inpaint);
    let msg = load_error(&p);
    assert!(
        msg.contains("SDXL inpainting") && msg.contains("inpaint.safetensors"),
        "{msg}"
    );

    let p = dir.path().join("refiner.safetensors");
    rewrite(&p, as_refiner);
    let msg = load_error(&p);
    assert!(msg.contains("SDXL refiner"), "{msg}");
}
