//! LoRA switching time and memory on a full-size SDXL-shaped checkpoint (random weights).
//!
//! Writes (once, then reuses) a synthetic `sd_xl_base_1.0`-shaped checkpoint in f16 and four
//! rank-32 kohya LoRAs covering what sd-scripts trains on SDXL (every UNet transformer
//! linear, both text encoders' attention and MLP), then measures switching between
//! set A = {1 @ 0.8, 2 @ 0.6} and set B = {3 @ 1.0, 4 @ 0.5} on the CPU.
//!
//! ```text
//! cargo bench --profile dev --bench lora_switch
//! LORA_BENCH_DIMS=mini LORA_BENCH_DTYPE=f32 cargo bench --profile dev --bench lora_switch
//! ```
//! Env: `LORA_BENCH_DIR` (files; default `target/lora-bench`), `LORA_BENCH_DIMS`
//! (`full` | `mini`), `LORA_BENCH_DTYPE` (resident model dtype `f16` | `f32`),
//! `LORA_BENCH_RANK` (32), `LORA_BENCH_SWITCHES` (4), `LORA_BENCH_KEEP_ORIGINALS` (`1`: keep
//! the original weights resident instead of re-reading them from the file).

use candle_core::{DType, Device};
use sdxl_worker::lora::{ActiveLora, LoraEntry, LoraLibrary, LoraState, WeightStore};
use sdxl_worker::weights::layout::{fill_random, sdxl_layout, write_safetensors, Entry, SdxlDims};
use sdxl_worker::weights::{Checkpoint, StDtype};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// Peak and current resident set size in MiB, from /proc (Linux).
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(f64::NAN)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// The modules sd-scripts trains on SDXL (networks/lora.py defaults, no conv_dim): every
/// linear of the UNet's transformer blocks plus proj_in/proj_out, and the text encoders'
/// attention and MLP, with their kohya names and (out, in) shapes.
fn lora_modules(layout: &[Entry]) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    for e in layout {
        let Some(m) = e.name.strip_suffix(".weight") else {
            continue;
        };
        if e.shape.len() != 2 {
            continue;
        }
        let (o, i) = (e.shape[0], e.shape[1]);
        if let Some(k) = m.strip_prefix("model.diffusion_model.") {
            let attn =
                k.contains(".transformer_blocks.") && (k.contains(".attn") || k.contains(".ff."));
            let proj = k.ends_with(".proj_in") || k.ends_with(".proj_out");
            if attn || proj {
                out.push((format!("lora_unet_{}", k.replace('.', "_")), o, i));
            }
        } else if let Some(h) = m.strip_prefix("conditioner.embedders.0.transformer.") {
            if h.contains(".self_attn.") || h.contains(".mlp.") {
                out.push((format!("lora_te1_{}", h.replace('.', "_")), o, i));
            }
        } else if let Some(r) =
            m.strip_prefix("conditioner.embedders.1.model.transformer.resblocks.")
        {
            let (n, part) = r.split_once('.').unwrap_or((r, ""));
            let hf: &[&str] = match part {
                "attn.out_proj" => &["self_attn_out_proj"],
                "mlp.c_fc" => &["mlp_fc1"],
                "mlp.c_proj" => &["mlp_fc2"],
                _ => &[],
            };
            for p in hf {
                out.push((format!("lora_te2_text_model_encoder_layers_{n}_{p}"), o, i));
            }
        }
    }
    // q/k/v of te2 live in the fused in_proj_weight [3W, W].
    for e in layout {
        if let Some(r) = e
            .name
            .strip_prefix("conditioner.embedders.1.model.transformer.resblocks.")
            .and_then(|r| r.strip_suffix(".attn.in_proj_weight"))
        {
            let w = e.shape[1];
            for p in ["q_proj", "k_proj", "v_proj"] {
                out.push((
                    format!("lora_te2_text_model_encoder_layers_{r}_self_attn_{p}"),
                    w,
                    w,
                ));
            }
        }
    }
    out
}

fn write_lora(path: &Path, modules: &[(String, usize, usize)], rank: usize, seed: u64) {
    let mut entries = Vec::new();
    for (m, o, i) in modules {
        entries.push(Entry {
            name: format!("{m}.alpha"),
            shape: vec![],
            dtype: StDtype::F16,
        });
        entries.push(Entry {
            name: format!("{m}.lora_down.weight"),
            shape: vec![rank, *i],
            dtype: StDtype::F16,
        });
        entries.push(Entry {
            name: format!("{m}.lora_up.weight"),
            shape: vec![*o, rank],
            dtype: StDtype::F16,
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let mut fill = fill_random(seed);
    write_safetensors(
        path,
        &entries,
        &[
            ("ss_network_dim", &rank.to_string()),
            ("ss_base_model_version", "sdxl_base_v1-0"),
        ],
        |e, buf| {
            if e.name.ends_with(".alpha") {
                buf.copy_from_slice(&half::f16::from_f32(rank as f32 / 2.0).to_le_bytes());
            } else {
                fill(e, buf)
            }
        },
    )
    .expect("write LoRA");
}

fn main() {
    let dir = PathBuf::from(env(
        "LORA_BENCH_DIR",
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/lora-bench"),
    ));
    let dims_name = env("LORA_BENCH_DIMS", "full");
    let dims = match dims_name.as_str() {
        "mini" => SdxlDims::mini_m(),
        _ => SdxlDims::sdxl_base(),
    };
    let dtype = match env("LORA_BENCH_DTYPE", "f16").as_str() {
        "f32" => DType::F32,
        _ => DType::F16,
    };
    let rank: usize = env("LORA_BENCH_RANK", "32").parse().unwrap_or(32);
    let switches: usize = env("LORA_BENCH_SWITCHES", "4").parse().unwrap_or(4);
    std::fs::create_dir_all(&dir).expect("bench dir");

    let layout = sdxl_layout(&dims, StDtype::F16);
    let ckpt_path = dir.join(format!("sdxl-{dims_name}.f16.safetensors"));
    if !ckpt_path.exists() {
        let t = Instant::now();
        let tmp = ckpt_path.with_extension("part");
        write_safetensors(&tmp, &layout, &[], fill_random(7)).expect("write checkpoint");
        std::fs::rename(&tmp, &ckpt_path).expect("rename");
        println!(
            "wrote {} in {:.1} s",
            ckpt_path.display(),
            t.elapsed().as_secs_f64()
        );
    }
    let modules = lora_modules(&layout);
    let mut entries = Vec::new();
    for n in 1..=4u64 {
        let p = dir.join(format!("lora{n}-{dims_name}-r{rank}.safetensors"));
        if !p.exists() {
            write_lora(&p, &modules, rank, 100 + n);
        }
        entries.push(LoraEntry {
            name: format!("lora{n}"),
            path: p,
            default_weight: 1.0,
        });
    }

    let ckpt = Checkpoint::open(&ckpt_path).expect("open checkpoint");
    let t = Instant::now();
    let lib = LoraLibrary::load(&entries, ckpt.shapes()).expect("load LoRAs");
    let lora_bytes: usize = lib
        .loras()
        .iter()
        .flat_map(|l| l.patches.iter())
        .map(|p| match &p.adapter {
            sdxl_worker::lora::format::Adapter::Lora { up, down, .. } => {
                (up.elem_count() + down.elem_count()) * up.dtype().size_in_bytes()
            }
            _ => 0,
        })
        .sum();
    println!(
        "loaded 4 LoRAs ({} modules each, rank {rank}) in {:.2} s; host memory for their factors {:.1} MiB",
        modules.len(),
        t.elapsed().as_secs_f64(),
        lora_bytes as f64 / (1 << 20) as f64
    );

    // Resident: every key the LoRAs patch, as the models would hold them.
    let keep = env("LORA_BENCH_KEEP_ORIGINALS", "0") == "1";
    let store = if keep {
        WeightStore::keeping_originals(ckpt.var_builder(dtype, &Device::Cpu))
    } else {
        WeightStore::new(ckpt.var_builder(dtype, &Device::Cpu))
    };
    let keys: BTreeSet<&String> = lib.loras().iter().flat_map(|l| l.by_key.keys()).collect();
    let t = Instant::now();
    for k in &keys {
        store.load(k, &ckpt.shapes()[*k], dtype).expect("load key");
    }
    println!(
        "{} patched keys resident in {:?}: {:.1} MiB, loaded in {:.2} s; RSS {:.0} MiB",
        keys.len(),
        dtype,
        store.resident_bytes() as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64(),
        rss_mib().1
    );

    let a = [
        ActiveLora {
            index: 0,
            unet_weight: 0.8,
            clip_weight: 0.8,
        },
        ActiveLora {
            index: 1,
            unet_weight: 0.6,
            clip_weight: 0.6,
        },
    ];
    let b = [
        ActiveLora {
            index: 2,
            unet_weight: 1.0,
            clip_weight: 1.0,
        },
        ActiveLora {
            index: 3,
            unet_weight: 0.5,
            clip_weight: 0.5,
        },
    ];
    let mut state = LoraState::new();
    let (hwm_before, _) = rss_mib();
    let mut run = |label: &str, set: &[ActiveLora]| {
        let t = Instant::now();
        let s = state.switch(&lib, set, &store).expect("switch");
        println!(
            "switch {label}: {:.3} s ({} keys patched, {} restored); RSS peak {:.0} MiB",
            t.elapsed().as_secs_f64(),
            s.patched_keys,
            s.restored_keys,
            rss_mib().0
        );
        t.elapsed().as_secs_f64()
    };
    run("none -> A", &a);
    let mut times = Vec::new();
    for i in 0..switches {
        times.push(if i % 2 == 0 {
            run("A -> B", &b)
        } else {
            run("B -> A", &a)
        });
    }
    run("-> none", &[]);
    times.sort_by(|x, y| x.total_cmp(y));
    let (hwm, rss) = rss_mib();
    println!(
        "RESULT dims={dims_name} dtype={dtype:?} rank={rank} keep_originals={keep} device=cpu threads={} switch_A_B_median_s={:.3} peak_rss_mib={hwm:.0} (before switching {hwm_before:.0}) rss_mib={rss:.0} kept_originals_mib={:.0}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        times[times.len() / 2],
        store.kept_original_bytes() as f64 / (1 << 20) as f64,
    );
}
