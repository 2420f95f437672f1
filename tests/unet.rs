//! The SDXL UNet against diffusers: structure inferred from the mini-m fixture checkpoint,
//! the first UNet call of every no-LoRA reference case (CPU, f32), and load errors for
//! damaged weight sets.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use sdxl_worker::model::unet::{
    time_ids_embedding, timestep_embedding, UNet, UNetConfig, UNetKind, TIME_ID_DIM,
};
use sdxl_worker::model::{ModelError, ShapeMap};

const PREFIX: &str = "model.diffusion_model.";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn checkpoint() -> PathBuf {
    fixtures().join("mini-m.fp16.safetensors")
}

fn shapes() -> ShapeMap {
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(checkpoint()) }.unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec()))
        .collect()
}

/// Reads an `.npy` file as a tensor (f32, or i64 for integer arrays).
fn npy(path: &Path) -> Tensor {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape: Vec<usize> = file.shape().iter().map(|&d| d as usize).collect();
    let type_str = match file.dtype() {
        npyz::DType::Plain(t) => t.to_string(),
        other => panic!("{}: unexpected dtype {other:?}", path.display()),
    };
    match type_str.as_str() {
        "<f4" => Tensor::from_vec(file.into_vec::<f32>().unwrap(), shape, &Device::Cpu).unwrap(),
        "<i8" => Tensor::from_vec(file.into_vec::<i64>().unwrap(), shape, &Device::Cpu).unwrap(),
        other => panic!("{}: unexpected dtype {other}", path.display()),
    }
}

fn load_unet(dtype: DType) -> (UNet, std::time::Duration) {
    let started = std::time::Instant::now();
    let cfg = UNetConfig::infer(&shapes(), PREFIX).unwrap();
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[checkpoint()], dtype, &Device::Cpu) }
        .unwrap()
        .pp("model.diffusion_model");
    let unet = UNet::new(vb, &cfg).unwrap();
    (unet, started.elapsed())
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn config_is_read_from_the_fixture_shapes() {
    let cfg = UNetConfig::infer(&shapes(), PREFIX).unwrap();
    assert_eq!(cfg.in_channels, 4);
    assert_eq!(cfg.out_channels, 4);
    assert_eq!(cfg.model_channels, 32);
    assert_eq!(cfg.timestep_dim, 32);
    assert_eq!(cfg.time_embed_dim, 128);
    assert_eq!(cfg.adm_in_channels, 1632);
    assert_eq!(cfg.adm_in_channels, 96 + 6 * TIME_ID_DIM);
    assert_eq!(cfg.context_dim, 192);
    assert_eq!(cfg.head_dim, 64);
    assert_eq!(cfg.ff_mult, 4);
    assert_eq!(cfg.channel_mult(), vec![1, 2, 4]);
    assert_eq!(cfg.num_res_blocks(), vec![2, 2, 2]);
    assert_eq!(cfg.attention_levels(), vec![false, true, true]);
    let channels: Vec<usize> = cfg.down.iter().map(|l| l.channels).collect();
    assert_eq!(channels, vec![32, 64, 128]);
    let depths: Vec<Vec<usize>> = cfg
        .down
        .iter()
        .map(|l| l.transformer_depth.clone())
        .collect();
    assert_eq!(depths, vec![vec![0, 0], vec![1, 1], vec![1, 1]]);
    let downs: Vec<bool> = cfg.down.iter().map(|l| l.downsample).collect();
    assert_eq!(downs, vec![true, true, false]);
    assert_eq!(cfg.middle_transformer_depth, 1);
    let up: Vec<(usize, Vec<usize>, bool)> = cfg
        .up
        .iter()
        .map(|l| (l.channels, l.transformer_depth.clone(), l.upsample))
        .collect();
    assert_eq!(
        up,
        vec![
            (128, vec![1, 1, 1], true),
            (64, vec![1, 1, 1], true),
            (32, vec![0, 0, 0], false)
        ]
    );
    assert_eq!(cfg.heads(64), 1);
    assert_eq!(cfg.heads(128), 2);
    assert_eq!(cfg.downsampling_factor(), 4);
    assert_eq!(cfg.kind(), UNetKind::Base);
    // The prefix may be given without its trailing dot.
    assert_eq!(
        UNetConfig::infer(&shapes(), "model.diffusion_model").unwrap(),
        cfg
    );
}

#[test]
fn config_marks_inpainting_and_refuses_non_sdxl_unets() {
    let mut s = shapes();
    s.insert(
        format!("{PREFIX}input_blocks.0.0.weight"),
        vec![32, 9, 3, 3],
    );
    let cfg = UNetConfig::infer(&s, PREFIX).unwrap();
    assert_eq!((cfg.in_channels, cfg.kind()), (9, UNetKind::Inpaint));

    let mut s = shapes();
    s.insert(
        format!("{PREFIX}input_blocks.4.1.proj_in.weight"),
        vec![64, 64, 1, 1],
    );
    let err = UNetConfig::infer(&s, PREFIX).unwrap_err().to_string();
    assert!(err.contains("input_blocks.4.1.proj_in.weight"), "{err}");
    assert!(err.contains("1x1 conv"), "{err}");

    let mut s = shapes();
    s.retain(|k, _| !k.contains("label_emb"));
    let err = UNetConfig::infer(&s, PREFIX).unwrap_err().to_string();
    assert!(err.contains("label_emb.0.0.weight"), "{err}");

    // An output resnet whose input does not equal previous channels + skip channels.
    let mut s = shapes();
    s.insert(
        format!("{PREFIX}output_blocks.3.0.in_layers.2.weight"),
        vec![64, 100, 3, 3],
    );
    let err = UNetConfig::infer(&s, PREFIX).unwrap_err().to_string();
    assert!(
        err.contains("output_blocks.3.0.in_layers.2.weight"),
        "{err}"
    );
}

#[test]
fn timestep_sinusoid_is_cos_then_sin_in_f32() {
    let t = Tensor::new(&[0f32, 999.0], &Device::Cpu).unwrap();
    let e = timestep_embedding(&t, 8).unwrap();
    assert_eq!(e.dtype(), DType::F32);
    let rows = e.to_vec2::<f32>().unwrap();
    assert_eq!(rows[0], vec![1., 1., 1., 1., 0., 0., 0., 0.]);
    for i in 0..4 {
        let f = (-(10000f64.ln()) * i as f64 / 4.0).exp();
        assert!((rows[1][i] as f64 - (999.0 * f).cos()).abs() < 1e-4);
        assert!((rows[1][4 + i] as f64 - (999.0 * f).sin()).abs() < 1e-4);
    }
    // Integer timesteps give the same values.
    let ti = Tensor::new(&[0i64, 999], &Device::Cpu).unwrap();
    let ei = timestep_embedding(&ti, 8).unwrap();
    assert_eq!(ei.to_vec2::<f32>().unwrap(), rows);
    // Time ids: each id's sinusoid, concatenated.
    let ids = Tensor::new(&[[0f32, 999.0]], &Device::Cpu).unwrap();
    let te = time_ids_embedding(&ids, 8).unwrap();
    assert_eq!(te.dims(), &[1, 16]);
    assert_eq!(
        te.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        rows.concat()
    );
}

/// A reference case's text conditioning (`which` = `""` or `"negative_"`): the context
/// `{which}prompt_embeds` and the UNet's `y`, its pooled embedding followed by the sinusoid
/// of its time ids.
fn conditioning(dir: &Path, which: &str) -> (Tensor, Tensor) {
    let ctx = npy(&dir.join(format!("{which}prompt_embeds.npy")));
    let pooled = npy(&dir.join(format!("{which}pooled_prompt_embeds.npy")));
    let ids = npy(&dir.join(format!("{which}add_time_ids.npy")));
    let y = Tensor::cat(&[pooled, time_ids_embedding(&ids, TIME_ID_DIM).unwrap()], 1).unwrap();
    (ctx, y)
}

/// Builds the first UNet call of a reference case and compares the output with diffusers'.
/// Returns (relative max abs diff, forward time).
fn check_case(unet: &UNet, dir: &Path) -> (f32, std::time::Duration) {
    let sample = npy(&dir.join("unet_step0_sample.npy"));
    let timestep = npy(&dir.join("unet_step0_timestep.npy"));
    let expected = npy(&dir.join("unet_step0_output.npy"));
    let batch = sample.dim(0).unwrap();
    let (cond_ctx, cond_y) = conditioning(dir, "");
    let repeat = |t: &Tensor, n: usize| Tensor::cat(&vec![t; n], 0).unwrap();
    let (context, y) = if dir.join("negative_prompt_embeds.npy").exists() {
        // CFG batch: [uncond × n, cond × n].
        let half = batch / 2;
        let (neg_ctx, neg_y) = conditioning(dir, "negative_");
        (
            Tensor::cat(&[repeat(&neg_ctx, half), repeat(&cond_ctx, half)], 0).unwrap(),
            Tensor::cat(&[repeat(&neg_y, half), repeat(&cond_y, half)], 0).unwrap(),
        )
    } else {
        (repeat(&cond_ctx, batch), repeat(&cond_y, batch))
    };
    let started = std::time::Instant::now();
    let out = unet.forward(&sample, &timestep, &context, &y).unwrap();
    let elapsed = started.elapsed();
    assert_eq!(out.dims(), expected.dims());
    assert_eq!(out.dtype(), unet.dtype());
    let out = out.to_dtype(DType::F32).unwrap();
    let diff = max_abs(&(out - &expected).unwrap());
    (diff / max_abs(&expected), elapsed)
}

/// Every no-LoRA reference case (square, 192x128, 128x192 with 20 steps, zero negative,
/// no CFG, empty and long prompts, the 2-image batch): raw UNet output of the first step
/// within 1e-5 of the reference's max abs value (measured: 1.3e-6 … 2.4e-6).
#[test]
fn first_unet_call_matches_diffusers_on_every_nolora_case() {
    let (unet, load_time) = load_unet(DType::F32);
    eprintln!("UNet load (f32, CPU): {load_time:?}");
    let root = fixtures().join("reference/cases");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .contains("_nolora_")
        })
        .collect();
    cases.sort();
    let names: Vec<String> = cases
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for required in [
        "m_euler_128x128_nolora_s0_n8",
        "m_euler_192x128_nolora_s0_n8",
        "m_euler_a_128x128_nolora_s1234_n8",
        "m_dpmpp_2m_karras_192x128_nolora_s0_n8",
        "m_ddim_128x128_nolora_s1234_n8",
        "steps20_m_dpmpp_2m_karras_128x192_nolora_s11_n20",
        "steps20_m_euler_a_128x192_nolora_s12_n20",
        "noneg_m_euler_128x128_nolora_s3_n8",
        "nocfg_m_euler_128x128_nolora_s3_n8",
    ] {
        assert!(
            names.iter().any(|n| n == required),
            "missing case {required}"
        );
    }
    let mut worst = 0f32;
    for (dir, name) in cases.iter().zip(&names) {
        let (rel, time) = check_case(&unet, dir);
        eprintln!("{name}: relative max abs diff {rel:.3e}, forward {time:?}");
        // 10x stricter than the 1e-4: a tanh-approximated GELU or an f16 norm shows here.
        assert!(rel <= 1e-5, "{name}: relative max abs diff {rel:e} > 1e-5");
        worst = worst.max(rel);
    }
    eprintln!("{} cases, worst relative diff {worst:.3e}", cases.len());
}

fn tensors_with(edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> VarBuilder<'static> {
    let mut ts = candle_core::safetensors::load(checkpoint(), &Device::Cpu).unwrap();
    edit(&mut ts);
    VarBuilder::from_tensors(ts, DType::F32, &Device::Cpu).pp("model.diffusion_model")
}

#[test]
fn missing_or_reshaped_tensors_are_named() {
    let cfg = UNetConfig::infer(&shapes(), PREFIX).unwrap();

    let name = format!("{PREFIX}input_blocks.5.1.transformer_blocks.0.attn2.to_v.weight");
    let vb = tensors_with(|ts| {
        ts.remove(&name);
    });
    match UNet::new(vb, &cfg) {
        Err(ModelError::MissingTensor { name: got }) => assert_eq!(got, name),
        other => panic!("expected MissingTensor, got {other:?}"),
    }

    let name = format!("{PREFIX}output_blocks.5.2.conv.weight");
    let vb = tensors_with(|ts| {
        let t = ts[&name].reshape((64, 64, 9)).unwrap();
        ts.insert(name.clone(), t);
    });
    let err = UNet::new(vb, &cfg).unwrap_err();
    match &err {
        ModelError::BadShape {
            name: got, found, ..
        } => {
            assert_eq!(got, &name);
            assert_eq!(found, &vec![64, 64, 9]);
        }
        other => panic!("expected BadShape, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("[64, 64, 3, 3]") && msg.contains(&name),
        "{msg}"
    );

    // A bias, which `infer` never looks at, is still checked at load.
    let name = format!("{PREFIX}middle_block.1.proj_out.bias");
    let vb = tensors_with(|ts| {
        let t = ts[&name].narrow(0, 0, 100).unwrap();
        ts.insert(name.clone(), t);
    });
    match UNet::new(vb, &cfg) {
        Err(ModelError::BadShape { name: got, .. }) => assert_eq!(got, name),
        other => panic!("expected BadShape, got {other:?}"),
    }
}

#[test]
fn forward_rejects_inputs_of_the_wrong_width() {
    let (unet, _) = load_unet(DType::F32);
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 4, 16, 16), DType::F32, &dev).unwrap();
    let t = Tensor::new(&[500f32], &dev).unwrap();
    let ctx = Tensor::zeros((1, 77, 192), DType::F32, &dev).unwrap();
    let y = Tensor::zeros((1, 1632), DType::F32, &dev).unwrap();
    let bad_ctx = Tensor::zeros((1, 77, 768), DType::F32, &dev).unwrap();
    let err = unet.forward(&x, &t, &bad_ctx, &y).unwrap_err().to_string();
    assert!(err.contains("context") && err.contains("192"), "{err}");
    let bad_y = Tensor::zeros((1, 2816), DType::F32, &dev).unwrap();
    let err = unet.forward(&x, &t, &ctx, &bad_y).unwrap_err().to_string();
    assert!(err.contains("1632"), "{err}");
    // A latent size that is not a multiple of 4 still runs (upsampled to the skip's size).
    let odd = Tensor::zeros((1, 4, 15, 13), DType::F32, &dev).unwrap();
    let out = unet.forward(&odd, &t, &ctx, &y).unwrap();
    assert_eq!(out.dims(), &[1, 4, 15, 13]);
}

/// Half precision runs end to end (weights cast from the file's f16, norms and softmax in
/// f32, the timestep sinusoid in f32) and stays close to the f32 reference (measured 3.0e-3;
/// f16 keeps 11 mantissa bits). BF16 is GPU-only: candle's CPU backend has no bf16 matmul,
/// which must surface as an error, not a panic.
#[test]
fn half_precision_forward_stays_close_to_the_reference() {
    let dir = fixtures().join("reference/cases/m_euler_128x128_nolora_s0_n8");
    let (unet, _) = load_unet(DType::F16);
    assert_eq!(unet.dtype(), DType::F16);
    let (rel, time) = check_case(&unet, &dir);
    eprintln!("F16 (CPU): relative max abs diff {rel:.3e}, forward {time:?}");
    assert!(rel <= 1e-2, "F16: relative max abs diff {rel:e} > 1e-2");

    let (unet, _) = load_unet(DType::BF16);
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 4, 16, 16), DType::F32, &dev).unwrap();
    let t = Tensor::new(&[500f32], &dev).unwrap();
    let ctx = Tensor::zeros((1, 77, 192), DType::F32, &dev).unwrap();
    let y = Tensor::zeros((1, 1632), DType::F32, &dev).unwrap();
    match unet.forward(&x, &t, &ctx, &y) {
        Ok(out) => assert_eq!(out.dtype(), DType::BF16),
        Err(e) => assert!(e.to_string().contains("BF16"), "{e}"),
    }
}

/// Sizes of an SDXL-family UNet, for [`ldm_unet_shapes`].
struct UNetSizes {
    in_channels: usize,
    model_channels: usize,
    mult: &'static [usize],
    num_res_blocks: usize,
    /// Transformer depth per level (0 = no attention).
    depth: &'static [usize],
    middle_depth: usize,
    context_dim: usize,
    adm_in_channels: usize,
}

/// The tensor names and shapes of a UNet in the LDM/sgm single-file layout, written from the
/// layout description (fixtures README; docs/formats.md, *UNet names: single-file and
/// diffusers*), independently of the inference code.
fn ldm_unet_shapes(z: &UNetSizes) -> ShapeMap {
    let mut s = ShapeMap::new();
    let mc = z.model_channels;
    let temb = 4 * mc;
    let mut put = |k: String, v: Vec<usize>| {
        s.insert(format!("{PREFIX}{k}"), v);
    };
    let lin = |put: &mut dyn FnMut(String, Vec<usize>), k: &str, i: usize, o: usize, bias: bool| {
        put(format!("{k}.weight"), vec![o, i]);
        if bias {
            put(format!("{k}.bias"), vec![o]);
        }
    };
    let conv = |put: &mut dyn FnMut(String, Vec<usize>), k: &str, i: usize, o: usize, ks: usize| {
        put(format!("{k}.weight"), vec![o, i, ks, ks]);
        put(format!("{k}.bias"), vec![o]);
    };
    let norm = |put: &mut dyn FnMut(String, Vec<usize>), k: &str, c: usize| {
        put(format!("{k}.weight"), vec![c]);
        put(format!("{k}.bias"), vec![c]);
    };
    let res = |put: &mut dyn FnMut(String, Vec<usize>), k: &str, i: usize, o: usize| {
        norm(put, &format!("{k}.in_layers.0"), i);
        conv(put, &format!("{k}.in_layers.2"), i, o, 3);
        lin(put, &format!("{k}.emb_layers.1"), temb, o, true);
        norm(put, &format!("{k}.out_layers.0"), o);
        conv(put, &format!("{k}.out_layers.3"), o, o, 3);
        if i != o {
            conv(put, &format!("{k}.skip_connection"), i, o, 1);
        }
    };
    let ctx = z.context_dim;
    let attn = |put: &mut dyn FnMut(String, Vec<usize>), k: &str, c: usize, depth: usize| {
        norm(put, &format!("{k}.norm"), c);
        lin(put, &format!("{k}.proj_in"), c, c, true);
        lin(put, &format!("{k}.proj_out"), c, c, true);
        for t in 0..depth {
            let b = format!("{k}.transformer_blocks.{t}");
            for n in ["norm1", "norm2", "norm3"] {
                norm(put, &format!("{b}.{n}"), c);
            }
            for (a, kv) in [("attn1", c), ("attn2", ctx)] {
                lin(put, &format!("{b}.{a}.to_q"), c, c, false);
                lin(put, &format!("{b}.{a}.to_k"), kv, c, false);
                lin(put, &format!("{b}.{a}.to_v"), kv, c, false);
                lin(put, &format!("{b}.{a}.to_out.0"), c, c, true);
            }
            lin(put, &format!("{b}.ff.net.0.proj"), c, 8 * c, true);
            lin(put, &format!("{b}.ff.net.2"), 4 * c, c, true);
        }
    };
    lin(&mut put, "time_embed.0", mc, temb, true);
    lin(&mut put, "time_embed.2", temb, temb, true);
    lin(&mut put, "label_emb.0.0", z.adm_in_channels, temb, true);
    lin(&mut put, "label_emb.0.2", temb, temb, true);
    conv(&mut put, "input_blocks.0.0", z.in_channels, mc, 3);
    let levels = z.mult.len();
    let (mut n, mut ch, mut skips) = (1, mc, vec![mc]);
    for l in 0..levels {
        let out = mc * z.mult[l];
        for _ in 0..z.num_res_blocks {
            res(&mut put, &format!("input_blocks.{n}.0"), ch, out);
            ch = out;
            if z.depth[l] > 0 {
                attn(&mut put, &format!("input_blocks.{n}.1"), ch, z.depth[l]);
            }
            skips.push(ch);
            n += 1;
        }
        if l + 1 < levels {
            conv(&mut put, &format!("input_blocks.{n}.0.op"), ch, ch, 3);
            skips.push(ch);
            n += 1;
        }
    }
    res(&mut put, "middle_block.0", ch, ch);
    if z.middle_depth > 0 {
        attn(&mut put, "middle_block.1", ch, z.middle_depth);
        res(&mut put, "middle_block.2", ch, ch);
    } else {
        res(&mut put, "middle_block.1", ch, ch);
    }
    let mut n = 0;
    for l in (0..levels).rev() {
        let out = mc * z.mult[l];
        for r in 0..=z.num_res_blocks {
            let skip = skips.pop().unwrap();
            res(&mut put, &format!("output_blocks.{n}.0"), ch + skip, out);
            ch = out;
            if z.depth[l] > 0 {
                attn(&mut put, &format!("output_blocks.{n}.1"), ch, z.depth[l]);
            }
            if l > 0 && r == z.num_res_blocks {
                let idx = if z.depth[l] > 0 { 2 } else { 1 };
                conv(
                    &mut put,
                    &format!("output_blocks.{n}.{idx}.conv"),
                    ch,
                    ch,
                    3,
                );
            }
            n += 1;
        }
    }
    norm(&mut put, "out.0", ch);
    conv(&mut put, "out.2", ch, 4, 3);
    s
}

const SDXL_BASE: UNetSizes = UNetSizes {
    in_channels: 4,
    model_channels: 320,
    mult: &[1, 2, 4],
    num_res_blocks: 2,
    depth: &[0, 2, 10],
    middle_depth: 10,
    context_dim: 2048,
    adm_in_channels: 2816,
};

#[test]
fn layout_generator_reproduces_the_fixture_unet() {
    // SDXL base's topology at mini-m's widths and depths.
    let mini = ldm_unet_shapes(&UNetSizes {
        model_channels: 32,
        depth: &[0, 1, 1],
        middle_depth: 1,
        context_dim: 192,
        adm_in_channels: 1632,
        ..SDXL_BASE
    });
    let mut fixture = shapes();
    fixture.retain(|k, _| k.starts_with(PREFIX));
    assert_eq!(mini, fixture);
}

#[test]
fn config_of_full_size_sdxl_base_and_refiner_shapes() {
    let base = ldm_unet_shapes(&SDXL_BASE);
    let params: usize = base.values().map(|s| s.iter().product::<usize>()).sum();
    assert_eq!(params, 2_567_463_684, "SDXL base 1.0 UNet parameter count");
    let cfg = UNetConfig::infer(&base, PREFIX).unwrap();
    assert_eq!(cfg.channel_mult(), vec![1, 2, 4]);
    assert_eq!(
        cfg.down.iter().map(|l| l.channels).collect::<Vec<_>>(),
        vec![320, 640, 1280]
    );
    assert_eq!(cfg.down[1].transformer_depth, vec![2, 2]);
    assert_eq!(cfg.down[2].transformer_depth, vec![10, 10]);
    assert_eq!(cfg.up[0].transformer_depth, vec![10, 10, 10]);
    assert_eq!(cfg.up[1].transformer_depth, vec![2, 2, 2]);
    assert_eq!(cfg.middle_transformer_depth, 10);
    assert_eq!((cfg.heads(640), cfg.heads(1280)), (10, 20));
    assert_eq!((cfg.context_dim, cfg.adm_in_channels), (2048, 2816));
    assert_eq!((cfg.timestep_dim, cfg.time_embed_dim), (320, 1280));
    assert_eq!(cfg.kind(), UNetKind::Base);

    let mut inpaint = SDXL_BASE;
    inpaint.in_channels = 9;
    let cfg = UNetConfig::infer(&ldm_unet_shapes(&inpaint), PREFIX).unwrap();
    assert_eq!(cfg.kind(), UNetKind::Inpaint);

    let refiner = ldm_unet_shapes(&UNetSizes {
        in_channels: 4,
        model_channels: 384,
        mult: &[1, 2, 4, 4],
        num_res_blocks: 2,
        depth: &[0, 4, 4, 0],
        middle_depth: 4,
        context_dim: 1280,
        adm_in_channels: 2560,
    });
    let cfg = UNetConfig::infer(&refiner, PREFIX).unwrap();
    assert_eq!(cfg.channel_mult(), vec![1, 2, 4, 4]);
    assert_eq!(cfg.attention_levels(), vec![false, true, true, false]);
    assert_eq!(cfg.up.len(), 4);
    assert_eq!(cfg.heads(768), 12);
    assert_eq!(cfg.downsampling_factor(), 8);
    assert_eq!(cfg.kind(), UNetKind::RefinerLike);

    // SSD-1B-style: middle block without attention.
    let mut ssd = SDXL_BASE;
    ssd.middle_depth = 0;
    let cfg = UNetConfig::infer(&ldm_unet_shapes(&ssd), PREFIX).unwrap();
    assert_eq!(cfg.middle_transformer_depth, 0);
}

/// Full-size SDXL base UNet with random weights (N(0, 1/fan_in), unit norms): load time and
/// one CFG forward at 512x512 (latents [2, 4, 64, 64]) on the CPU, f32. Needs ~11 GB of RAM
/// and minutes on a few cores, so it runs only on request:
/// `cargo test --test unet -- --ignored --nocapture full_size`.
#[test]
#[ignore = "full-size SDXL UNet: ~11 GB RAM, minutes of CPU; run with --ignored"]
fn full_size_sdxl_unet_forward_timing() {
    let dev = Device::Cpu;
    let shapes = ldm_unet_shapes(&SDXL_BASE);
    let started = std::time::Instant::now();
    let mut ts = HashMap::new();
    for (name, shape) in &shapes {
        let t = match (shape.len(), name.ends_with(".bias")) {
            (1, true) => Tensor::zeros(shape.as_slice(), DType::F32, &dev),
            (1, false) => Tensor::ones(shape.as_slice(), DType::F32, &dev),
            _ => {
                let fan_in: usize = shape[1..].iter().product();
                Tensor::randn(
                    0f32,
                    (1.0 / fan_in as f64).sqrt() as f32,
                    shape.as_slice(),
                    &dev,
                )
            }
        }
        .unwrap();
        ts.insert(name.clone(), t);
    }
    eprintln!("random weights: {:?}", started.elapsed());
    let started = std::time::Instant::now();
    let cfg = UNetConfig::infer(&shapes, PREFIX).unwrap();
    let vb = VarBuilder::from_tensors(ts, DType::F32, &dev).pp("model.diffusion_model");
    let unet = UNet::new(vb, &cfg).unwrap();
    eprintln!("config + build: {:?}", started.elapsed());
    let x = Tensor::randn(0f32, 1.0, (2, 4, 64, 64), &dev).unwrap();
    let t = Tensor::new(&[999f32], &dev).unwrap();
    let ctx = Tensor::randn(0f32, 1.0, (2, 77, 2048), &dev).unwrap();
    let ids = Tensor::new(&[[512f32, 512., 0., 0., 512., 512.]; 2], &dev).unwrap();
    let pooled = Tensor::randn(0f32, 1.0, (2, 1280), &dev).unwrap();
    let y = Tensor::cat(&[pooled, time_ids_embedding(&ids, TIME_ID_DIM).unwrap()], 1).unwrap();
    for run in 0..2 {
        let started = std::time::Instant::now();
        let out = unet.forward(&x, &t, &ctx, &y).unwrap();
        assert_eq!(out.dims(), &[2, 4, 64, 64]);
        assert!(max_abs(&out).is_finite());
        eprintln!(
            "forward {run} (batch 2, 64x64 latents): {:?}",
            started.elapsed()
        );
    }
}
