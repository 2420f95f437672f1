//! VAE against the diffusers references: `image_float = decode(final_latents / 0.13025)` and
//! the PNG bytes; the encoder's shapes, determinism and round trip; error naming. CPU, f32.

mod te_vae_common;

use candle_core::{DType, Device, Tensor};
use sdxl_worker::model::vae::{Vae, VaeConfig, SDXL_VAE_SCALING_FACTOR};
use sdxl_worker::model::ModelError;
use sdxl_worker::pipeline::img2img::image_to_tensor;
use te_vae_common::*;

const VAE: &str = "first_stage_model";

fn load_vae(dtype: DType) -> Vae {
    let shapes = shape_map(&checkpoint());
    let cfg = VaeConfig::infer(&shapes, VAE).unwrap();
    Vae::load(var_builder(dtype).pp(VAE), &cfg).unwrap()
}

#[test]
fn config_is_read_from_shapes() {
    let shapes = shape_map(&checkpoint());
    let cfg = VaeConfig::infer(&shapes, "first_stage_model.").unwrap();
    // fixtures/README.md: block_out_channels 32, 32, 32, 64; resnets 2 / 3; latent 4.
    assert_eq!(cfg.block_out_channels, vec![32, 32, 32, 64]);
    assert_eq!(
        (cfg.encoder_layers_per_block, cfg.decoder_layers_per_block),
        (2, 3)
    );
    assert_eq!(
        (cfg.in_channels, cfg.out_channels, cfg.latent_channels),
        (3, 3, 4)
    );
    assert!(cfg.has_quant_conv && cfg.has_post_quant_conv);
    assert_eq!(cfg.scaling_factor, 0.13025);
}

/// diffusers' PNG conversion: `uint8(round_half_even(clamp(x / 2 + 0.5, 0, 1) * 255))`, HWC.
fn to_png_bytes(image: &Tensor) -> Vec<u8> {
    let (c, h, w) = image.dims3().unwrap();
    let v = image.to_vec3::<f32>().unwrap();
    let mut out = Vec::with_capacity(c * h * w);
    for y in 0..h {
        for x in 0..w {
            for ch in v.iter() {
                let s = (ch[y][x] / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0;
                out.push(s.round_ties_even() as u8);
            }
        }
    }
    out
}

#[test]
fn decode_matches_diffusers_images() {
    let vae = load_vae(DType::F32);
    let cases = [
        "m_euler_128x128_nolora_s0_n8",
        "m_euler_192x128_nolora_s0_n8",
        "m_dpmpp_2m_karras_192x128_lora1_s1_n8",
        "steps20_m_euler_a_128x192_nolora_s12_n20",
        "batch2_m_euler_a_128x128_nolora_s42_n8",
        "m_ddim_128x128_nolora_s1234_n8",
        "noneg_m_euler_128x128_nolora_s3_n8",
    ];
    let (mut worst_rel, mut worst_px) = (0f32, 0f64);
    for id in cases {
        let dir = cases_dir().join(id);
        let latents = npy_tensor(&dir.join("final_latents.npy"));
        let image = vae
            .decode(&(latents / SDXL_VAE_SCALING_FACTOR).unwrap())
            .unwrap();
        let want = npy_tensor(&dir.join("image_float.npy"));
        let rel = rel_max_diff(&image, &want);
        assert!(rel <= 1e-3, "{id}: image_float rel diff {rel}");
        worst_rel = worst_rel.max(rel);
        for i in 0..image.dim(0).unwrap() {
            let png = if i == 0 {
                "image.png".to_string()
            } else {
                format!("image_{i}.png")
            };
            let want_png = image::open(dir.join(&png)).unwrap().to_rgb8();
            let (_, _, h, w) = image.dims4().unwrap();
            assert_eq!(
                (want_png.width() as usize, want_png.height() as usize),
                (w, h)
            );
            let ours = to_png_bytes(&image.get(i).unwrap());
            let theirs = want_png.into_raw();
            let far = ours
                .iter()
                .zip(&theirs)
                .filter(|(a, b)| a.abs_diff(**b) > 1)
                .count();
            let differ = ours.iter().zip(&theirs).filter(|(a, b)| a != b).count();
            let frac = differ as f64 / ours.len() as f64;
            assert_eq!(far, 0, "{id} {png}: values off by more than 1/255");
            assert!(frac <= 1e-3, "{id} {png}: {frac} of values differ");
            worst_px = worst_px.max(frac);
        }
    }
    eprintln!("decode: worst image_float rel diff {worst_rel:.3e}, worst PNG bytes differing {worst_px:.3e}");
}

#[test]
fn encoder_shapes_determinism_and_round_trip() {
    let vae = load_vae(DType::F32);
    let dir = cases_dir().join("m_euler_192x128_nolora_s0_n8");
    let latents = npy_tensor(&dir.join("final_latents.npy"));
    let image = npy_tensor(&dir.join("image_float.npy"))
        .clamp(-1f32, 1f32)
        .unwrap();
    let d1 = vae.encode(&image).unwrap();
    let d2 = vae.encode(&image).unwrap();
    assert_eq!(d1.mean.dims(), latents.dims());
    assert_eq!(d1.logvar.dims(), latents.dims());
    assert_eq!(rel_max_diff(&d1.mean, &d2.mean), 0.0);
    assert_eq!(rel_max_diff(&d1.logvar, &d2.logvar), 0.0);
    let noise = Tensor::randn(0f32, 1f32, latents.dims(), &Device::Cpu).unwrap();
    let z = d1.sample(&noise).unwrap();
    let back = vae.decode(&z).unwrap();
    assert_eq!(back.dims(), image.dims());
    assert!(all_finite(&z) && all_finite(&back) && all_finite(&d1.logvar));
    let lv = d1.logvar.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(lv.iter().all(|v| (-30.0..=20.0).contains(v)));
    // Batches are independent per image.
    let other = (&image * -0.5).unwrap();
    let two = Tensor::cat(&[&image, &other], 0).unwrap();
    let db = vae.encode(&two).unwrap();
    assert!(rel_max_diff(&db.mean.narrow(0, 0, 1).unwrap(), &d1.mean) < 1e-5);
    // Bad inputs are errors, not panics.
    assert!(vae.encode(&image.narrow(3, 0, 100).unwrap()).is_err());
    assert!(vae.decode(&image).is_err());
}

/// The encoder against diffusers' `vae.encode(image).latent_dist` (reference-samplers
/// `vae_encode*`): the PNG → [-1, 1] tensor is bit-identical to diffusers' image processor, and
/// mean / logvar agree within 1e-4 of their largest magnitude (f32 convolutions summed in a
/// different order; the decoder test allows 1e-3 for a deeper network).
#[test]
fn encode_matches_diffusers_latent_dist() {
    let vae = load_vae(DType::F32);
    let root = fixtures().join("reference-samplers");
    let (mut worst_mean, mut worst_logvar) = (0f32, 0f32);
    for dir in ["vae_encode", "vae_encode_192x128"] {
        let dir = root.join(dir);
        let png = image::open(dir.join("input.png")).unwrap().to_rgb8();
        let x = image_to_tensor(&png, &Device::Cpu).unwrap();
        let want_x = npy_tensor(&dir.join("image_input.npy"));
        assert_eq!(
            rel_max_diff(&x, &want_x),
            0.0,
            "{}: image tensor",
            dir.display()
        );
        let d = vae.encode(&x).unwrap();
        let rm = rel_max_diff(&d.mean, &npy_tensor(&dir.join("mean.npy")));
        let rl = rel_max_diff(&d.logvar, &npy_tensor(&dir.join("logvar.npy")));
        assert!(rm <= 1e-4, "{}: mean rel diff {rm}", dir.display());
        assert!(rl <= 1e-4, "{}: logvar rel diff {rl}", dir.display());
        worst_mean = worst_mean.max(rm);
        worst_logvar = worst_logvar.max(rl);
    }
    eprintln!("encode: worst mean rel diff {worst_mean:.3e}, logvar {worst_logvar:.3e}");
}

#[test]
fn own_dtype_half_precision_decode_is_close() {
    let dir = cases_dir().join("m_euler_128x128_nolora_s0_n8");
    let z = (npy_tensor(&dir.join("final_latents.npy")) / SDXL_VAE_SCALING_FACTOR).unwrap();
    let want = npy_tensor(&dir.join("image_float.npy"));
    // F16 only on CPU: candle 0.11's CPU backend has no BF16 conv2d (BF16 runs on CUDA/cuDNN).
    let vae = load_vae(DType::F16);
    assert_eq!(vae.dtype(), DType::F16);
    let img = vae.decode(&z).unwrap();
    assert_eq!(img.dtype(), DType::F32);
    let rel = rel_max_diff(&img, &want);
    eprintln!("F16 decode rel diff {rel:.3e}");
    assert!(rel < 1e-2, "F16: {rel}");
}

fn load_from_tensors(
    tensors: std::collections::HashMap<String, Tensor>,
) -> Result<Vae, ModelError> {
    let shapes = tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    let cfg = VaeConfig::infer(&shapes, VAE)?;
    let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    Vae::load(vb.pp(VAE), &cfg)
}

fn vae_tensors() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(checkpoint(), &Device::Cpu)
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k.starts_with("first_stage_model."))
        .collect()
}

#[test]
fn missing_or_misshapen_tensors_are_named() {
    for name in [
        "first_stage_model.decoder.up.1.block.2.conv2.weight",
        "first_stage_model.encoder.mid.attn_1.q.bias",
        "first_stage_model.post_quant_conv.bias",
        "first_stage_model.decoder.up.2.block.0.nin_shortcut.weight",
    ] {
        let mut t = vae_tensors();
        assert!(t.remove(name).is_some(), "{name} not in fixture");
        match load_from_tensors(t) {
            Err(ModelError::MissingTensor { name: n }) => assert_eq!(n, name),
            other => panic!("{name}: expected MissingTensor, got {other:?}"),
        }
    }
    let name = "first_stage_model.decoder.mid.attn_1.k.weight";
    let mut t = vae_tensors();
    let w = t[name].narrow(0, 0, 32).unwrap();
    t.insert(name.to_string(), w);
    match load_from_tensors(t) {
        Err(ModelError::BadShape { name: n, found, .. }) => {
            assert_eq!(n, name);
            assert_eq!(found, vec![32, 64, 1, 1]);
        }
        other => panic!("expected BadShape, got {other:?}"),
    }
    // A decoder level whose width disagrees with the encoder's is caught while inferring.
    let name = "first_stage_model.decoder.up.3.block.0.conv1.weight";
    let mut t = vae_tensors();
    let w = t[name].narrow(0, 0, 32).unwrap();
    t.insert(name.to_string(), w);
    let err = load_from_tensors(t).unwrap_err();
    assert!(err.to_string().contains(name), "{err}");
}

/// The test's own LDM → diffusers renaming (the inverse of the library's table, written
/// independently from diffusers' `vae_conversion_map`), applied to the fixture's VAE.
fn ldm_to_diffusers(ldm: &str, levels: usize) -> String {
    let mut s = ldm.to_string();
    let subs = [
        ("mid.block_1.", "mid_block.resnets.0."),
        ("mid.block_2.", "mid_block.resnets.1."),
        ("mid.attn_1.norm.", "mid_block.attentions.0.group_norm."),
        ("mid.attn_1.q.", "mid_block.attentions.0.to_q."),
        ("mid.attn_1.k.", "mid_block.attentions.0.to_k."),
        ("mid.attn_1.v.", "mid_block.attentions.0.to_v."),
        ("mid.attn_1.proj_out.", "mid_block.attentions.0.to_out.0."),
        ("nin_shortcut", "conv_shortcut"),
        ("norm_out", "conv_norm_out"),
        (".downsample.conv", ".downsamplers.0.conv"),
        (".upsample.conv", ".upsamplers.0.conv"),
        (".block.", ".resnets."),
        ("encoder.down.", "encoder.down_blocks."),
    ];
    for (a, b) in subs {
        s = s.replace(a, b);
    }
    if let Some(rest) = s.strip_prefix("decoder.up.") {
        let (i, tail) = rest.split_once('.').unwrap();
        let i: usize = i.parse().unwrap();
        s = format!("decoder.up_blocks.{}.{tail}", levels - 1 - i);
    }
    s
}

#[test]
fn diffusers_layout_vae_decodes_identically() {
    use sdxl_worker::model::vae_names::{vae_name_map, VaeLayout};

    let shapes_ckpt = shape_map(&checkpoint());
    let ldm_map = vae_name_map(&shapes_ckpt).unwrap();
    assert_eq!(ldm_map.layout, VaeLayout::Ldm);
    assert_eq!(ldm_map.source_prefix, "first_stage_model.");
    assert_eq!(ldm_map.len(), 244);

    let cfg_ldm = VaeConfig::infer(&shapes_ckpt, VAE).unwrap();
    let mut diff = std::collections::HashMap::new();
    for (k, v) in vae_tensors() {
        let rel = k.strip_prefix("first_stage_model.").unwrap();
        let name = ldm_to_diffusers(rel, cfg_ldm.block_out_channels.len());
        let v = if rel.starts_with("encoder.mid.attn_1.") || rel.starts_with("decoder.mid.attn_1.")
        {
            match v.dims() {
                [c, _, 1, 1] => v.reshape((*c, *c)).unwrap(),
                _ => v,
            }
        } else {
            v
        };
        assert!(diff.insert(name.clone(), v).is_none(), "duplicate {name}");
    }
    assert!(diff.contains_key("decoder.up_blocks.0.upsamplers.0.conv.weight"));
    assert!(diff.contains_key("decoder.up_blocks.1.resnets.0.conv_shortcut.weight"));
    assert!(!diff.contains_key("decoder.up_blocks.3.upsamplers.0.conv.weight"));
    let shapes: sdxl_worker::model::ShapeMap = diff
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();

    let map = vae_name_map(&shapes).unwrap();
    assert_eq!(map.layout, VaeLayout::Diffusers);
    assert_eq!(map.source_prefix, "");
    assert_eq!(map.len(), 244);
    assert_eq!(map.iter().filter(|(_, s)| s.reshape_to_conv1x1).count(), 8);
    let src = map.source_of("decoder.up.3.block.0.conv1.weight").unwrap();
    assert_eq!(src.source, "decoder.up_blocks.0.resnets.0.conv1.weight");
    let cfg = VaeConfig::infer(&map.ldm_shapes(&shapes), "").unwrap();
    assert_eq!(cfg, cfg_ldm);

    let vb = candle_nn::VarBuilder::from_tensors(diff.clone(), DType::F32, &Device::Cpu);
    let vae_diff = Vae::load(map.ldm_view(vb), &cfg).unwrap();
    let vae_ldm = load_vae(DType::F32);
    let dir = cases_dir().join("m_euler_192x128_nolora_s0_n8");
    let z = (npy_tensor(&dir.join("final_latents.npy")) / SDXL_VAE_SCALING_FACTOR).unwrap();
    let a = vae_ldm.decode(&z).unwrap();
    let b = vae_diff.decode(&z).unwrap();
    assert_eq!(rel_max_diff(&b, &a), 0.0, "decode differs");
    let want = npy_tensor(&dir.join("image_float.npy"));
    assert!(rel_max_diff(&b, &want) < 1e-3);
    let ea = vae_ldm.encode(&a.clamp(-1f32, 1f32).unwrap()).unwrap();
    let eb = vae_diff.encode(&a.clamp(-1f32, 1f32).unwrap()).unwrap();
    assert_eq!(rel_max_diff(&eb.mean, &ea.mean), 0.0, "encode differs");

    // A tensor missing from the diffusers file is reported under its LDM name.
    let mut holed = diff.clone();
    holed
        .remove("decoder.up_blocks.2.resnets.1.norm2.bias")
        .unwrap();
    let shapes_h: sdxl_worker::model::ShapeMap = holed
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    let map_h = vae_name_map(&shapes_h).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(holed, DType::F32, &Device::Cpu);
    match Vae::load(map_h.ldm_view(vb), &cfg) {
        Err(ModelError::MissingTensor { name }) => {
            assert_eq!(name, "decoder.up.1.block.1.norm2.bias")
        }
        other => panic!("expected MissingTensor, got {other:?}"),
    }
    // An unknown tensor inside the VAE is refused by name.
    let mut extra = shapes.clone();
    extra.insert(
        "decoder.up_blocks.0.attentions.0.to_q.weight".into(),
        vec![64, 64],
    );
    let err = vae_name_map(&extra).unwrap_err();
    assert!(
        err.to_string()
            .contains("decoder.up_blocks.0.attentions.0.to_q.weight"),
        "{err}"
    );
    // No VAE at all.
    let none: sdxl_worker::model::ShapeMap = [(
        "model.diffusion_model.out.2.weight".to_string(),
        vec![4, 32, 3, 3],
    )]
    .into();
    assert!(vae_name_map(&none).is_err());
}
