//! Writes a single-file SDXL checkpoint with random weights in the real layout, for load-time
//! and memory measurements without downloading a model:
//!
//! ```text
//! cargo run --release --example make_synthetic_checkpoint -- OUT.safetensors [sdxl|mini] [f16|bf16|f32]
//! ```
//!
//! `sdxl` (default) is SDXL base 1.0's shapes (about 6.9 GB in f16). The file is written one
//! tensor at a time, so memory use stays small.

use sdxl_worker::weights::layout::{fill_random, sdxl_layout, write_safetensors, SdxlDims};
use sdxl_worker::weights::StDtype;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let out = args.next().ok_or_else(|| {
        anyhow::anyhow!(
            "usage: make_synthetic_checkpoint OUT.safetensors [sdxl|mini] [f16|bf16|f32]"
        )
    })?;
    let dims = match args.next().as_deref() {
        None | Some("sdxl") => SdxlDims::sdxl_base(),
        Some("mini") => SdxlDims::mini_m(),
        Some(other) => anyhow::bail!("unknown layout `{other}`; use sdxl or mini"),
    };
    let dtype = match args.next().as_deref() {
        None | Some("f16") => StDtype::F16,
        Some("bf16") => StDtype::BF16,
        Some("f32") => StDtype::F32,
        Some(other) => anyhow::bail!("unknown dtype `{other}`; use f16, bf16 or f32"),
    };
    let entries = sdxl_layout(&dims, dtype);
    let t = Instant::now();
    let bytes = write_safetensors(
        std::path::Path::new(&out),
        &entries,
        &[("format", "pt")],
        fill_random(1),
    )?;
    println!(
        "{out}: {} tensors, {:.2} GB, written in {:.1} s",
        entries.len(),
        bytes as f64 / 1e9,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
