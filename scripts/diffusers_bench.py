#!/usr/bin/env python3
"""Reference timing: diffusers' StableDiffusionXLPipeline with random weights in the real SDXL
base 1.0 shapes, on the GPU, fp16, PyTorch SDPA attention.

Used by scripts/gpu-check.sh next to `sdxl-worker bench --synthetic sdxl` so both run the same
work (text encoders, 30 CFG steps of the UNet, VAE decode at 1024x1024) on the same card. Random
weights make the images noise, which does not change the amount of work. Nothing is downloaded:
the models are built from their configs and the CLIP tokenizers come from the repository's
assets/tokenizers. Prints one JSON object on stdout.
"""
import argparse
import json
import os
import sys
import time

T_START = time.perf_counter()
import torch  # noqa: E402

T_TORCH = time.perf_counter()
import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.models.attention_processor import AttnProcessor2_0  # noqa: E402
from transformers import (  # noqa: E402
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
)

try:  # transformers 4.x; 5.x may only keep the generic fast tokenizer
    from transformers import CLIPTokenizerFast as Tokenizer
except ImportError:  # pragma: no cover
    from transformers import PreTrainedTokenizerFast as Tokenizer

T_IMPORTS = time.perf_counter()

# Public SDXL base 1.0 configs (stabilityai/stable-diffusion-xl-base-1.0), the fields that differ
# from the library defaults.
UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    sample_size=1024,
    scaling_factor=0.13025,
    force_upcast=True,
)
TE1 = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
)
TE2 = dict(
    vocab_size=49408,
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=1280,
)
SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    timestep_spacing="leading",
    steps_offset=1,
    prediction_type="epsilon",
)


def tokenizer(path, pad):
    return Tokenizer(
        tokenizer_file=path,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token=pad,
        model_max_length=77,
    )


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--images", type=int, default=3, help="timed images after one warm-up image")
    p.add_argument("--tokenizers", default="assets/tokenizers")
    p.add_argument(
        "--prompt",
        default="a photo of an astronaut riding a horse on the moon, highly detailed",
    )
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("diffusers_bench: no CUDA device")
    dev = torch.device("cuda")
    dtype = torch.float16
    torch.manual_seed(0)

    t0 = time.perf_counter()
    # Build directly on the GPU (random init), then cast: no 7 GB checkpoint needed.
    with dev:
        unet = UNet2DConditionModel(**UNET).to(dtype)
        vae = AutoencoderKL(**VAE).to(dtype)
        te1 = CLIPTextModel(CLIPTextConfig(**TE1)).to(dtype)
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**TE2)).to(dtype)
    scheduler = DPMSolverMultistepScheduler(
        **SCHEDULER, algorithm_type="dpmsolver++", use_karras_sigmas=True
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=tokenizer(os.path.join(args.tokenizers, "tokenizer/tokenizer.json"), "<|endoftext|>"),
        tokenizer_2=tokenizer(os.path.join(args.tokenizers, "tokenizer_2/tokenizer.json"), "!"),
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,  # ours adds none; keep the work identical
    )
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    pipe.set_progress_bar_config(disable=True)
    torch.cuda.synchronize()
    build_s = time.perf_counter() - t0

    def run(seed, output_type):
        g = torch.Generator(device="cpu").manual_seed(seed)
        torch.cuda.synchronize()
        t = time.perf_counter()
        pipe(
            prompt=args.prompt,
            negative_prompt="",
            width=args.width,
            height=args.height,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            generator=g,
            output_type=output_type,
        )
        torch.cuda.synchronize()
        return time.perf_counter() - t

    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        first_image_s = run(0, "pil")  # warm-up: cuDNN/cuBLAS autotuning, allocator growth
        per_image = [run(1 + i, "pil") for i in range(args.images)]
        latent_only = [run(100 + i, "latent") for i in range(max(1, args.images // 2))]
    spi = sum(per_image) / len(per_image)
    denoise = sum(latent_only) / len(latent_only)
    print(
        json.dumps(
            {
                "stack": "diffusers",
                "diffusers": diffusers.__version__,
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "cuda": torch.version.cuda,
                "gpu": torch.cuda.get_device_name(0),
                "dtype": "f16",
                "vae": "f32 (force_upcast, the SDXL default)",
                "attention": "SDPA (AttnProcessor2_0)",
                "sampler": "DPMSolverMultistepScheduler dpmsolver++ karras (DPM++ 2M Karras)",
                "width": args.width,
                "height": args.height,
                "steps": args.steps,
                "guidance": args.guidance,
                "images": len(per_image),
                "import_torch_s": T_TORCH - T_START,
                "import_diffusers_transformers_s": T_IMPORTS - T_TORCH,
                "build_random_models_s": build_s,
                "first_image_s": first_image_s,
                "seconds_per_image": spi,
                "per_image_s": per_image,
                "encode_and_denoise_s": denoise,
                "unet_it_per_s": args.steps / denoise,
                "vae_decode_and_postprocess_s": spi - denoise,
                "peak_vram_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
                "peak_vram_reserved_mib": torch.cuda.max_memory_reserved() / 2**20,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
