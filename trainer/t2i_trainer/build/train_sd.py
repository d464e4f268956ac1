"""Pretrain a tiny Stable Diffusion pipeline on the shapes world, with imperfect captions (issue #3).

This is the paper's "pretrained model": the Stable Diffusion 1.5 architecture of build_test_model.py, but
trained, on shapes_world renders whose captions get the count wrong or leave it out (`--count-noise`), as web
captions do. It should learn shapes, colours and backgrounds, and stay bad at counting, so that human (here:
rater.py) feedback has something to fix.

Three stages, each resumable: a stage whose folder exists is skipped unless --force is given, and each stage
writes into `<name>.partial` and renames it when done, so an interrupted run never leaves a half-written
folder that a re-run would trust.

1. vae: AutoencoderKL (64x64 RGB, VAE factor 4, 4 latent channels; see build_vae), reconstruction loss
   plus a small KL term. Its `scaling_factor` is measured afterwards: 1 / std of the latents, as SD's
   0.18215 was.
2. unet: UNet2DConditionModel on 16x16 latents with the epsilon-prediction DDPM loss (SD 1.5's noise
   schedule), 10% empty captions so that classifier-free guidance works. The CLIP text encoder is trained
   jointly: a random encoder maps every prompt to nearly the same vectors, and the UNet cannot read shape or
   colour out of those.
3. pipeline: StableDiffusionPipeline (PNDM scheduler, no safety checker) saved with safetensors to --out,
   then 4 samples for each of 2 prompts as PNGs in `<out>-samples/`.

Progress goes to stdout as JSON lines ({"event": "step", "stage": "unet", "step": 10, "loss": ...}).

Time on 2 quiet CPU cores with the defaults, measured in the committed build (models/REPORT.md): 7.2 min for
the VAE (1500 steps of 16; its loss was flat from step 1250 on) and 30.6 min for the UNet and text encoder
(7000 steps of 32 at 0.25 s, after encoding a pool of 32768 renders once in 60 s). Shared cores are much
slower. `--smoke` runs a few steps of each stage in seconds, for tests.

Usage:
    python -m t2i_trainer.build.train_sd --out build/shapes-sd-diffusers
    python -m t2i_trainer.build.train_sd --smoke --out /tmp/smoke-sd
"""

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# Nothing here needs the model hub; huggingface_hub reads this variable when it is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.training_utils import EMAModel
from transformers import CLIPTextModel, CLIPTokenizer

from t2i_trainer.build.build_test_model import SD15_SCHEDULER_CONFIG, build_text_encoder, build_tokenizer
from t2i_trainer.build.shapes_world import IMAGE_SIZE, noisy_caption, render, train_prompts
from t2i_trainer.common.stage_cli import check_output_parent, emit

STAGES = ("vae", "unet", "pipeline")
# Written into each finished stage's folder: {"seconds": ..., "finished": ...}.
STAGE_RECORD = "stage.json"
SAMPLE_PROMPTS = ("a red circle", "two blue squares on a yellow background")
SAMPLES_PER_PROMPT = 4

# Full run and --smoke: steps and batch size of each trained stage, and the samples' denoising steps.
DEFAULTS = {
    "vae_steps": 1500,
    "vae_batch": 16,
    "unet_steps": 7000,
    "unet_batch": 32,
    "unet_pool": 32768,
    "sample_steps": 30,
}
SMOKE = {"vae_steps": 3, "vae_batch": 4, "unet_steps": 3, "unet_batch": 4, "unet_pool": 16, "sample_steps": 3}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("build/shapes-sd-diffusers"),
        help="Folder for the diffusers pipeline; stages go to <out>-stages/, samples to <out>-samples/ "
        "(default: %(default)s). Its parent folder must exist.",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed for weights, data and noise (default: 0).")
    parser.add_argument(
        "--count-noise",
        type=float,
        default=0.5,
        help="Share of captions whose count is wrong or missing (shapes_world.noisy_caption; default: 0.5).",
    )
    parser.add_argument(
        "--caption-dropout",
        type=float,
        default=0.1,
        help="Share of empty captions, which classifier-free guidance needs (default: 0.1).",
    )
    parser.add_argument("--vae-steps", type=int, help=f"VAE steps (default: {DEFAULTS['vae_steps']}).")
    parser.add_argument("--vae-batch", type=int, help=f"VAE batch size (default: {DEFAULTS['vae_batch']}).")
    parser.add_argument("--vae-lr", type=float, default=1e-3, help="VAE learning rate (default: 1e-3).")
    parser.add_argument(
        "--kl-weight", type=float, default=1e-6, help="Weight of the VAE's KL term (default: 1e-6)."
    )
    parser.add_argument("--unet-steps", type=int, help=f"UNet steps (default: {DEFAULTS['unet_steps']}).")
    parser.add_argument(
        "--unet-batch", type=int, help=f"UNet batch size (default: {DEFAULTS['unet_batch']})."
    )
    parser.add_argument(
        "--unet-pool",
        type=int,
        help=f"Renders the VAE encodes once for the UNet to draw from (default: {DEFAULTS['unet_pool']}).",
    )
    parser.add_argument(
        "--unet-lr",
        type=float,
        default=1e-3,
        help="Peak UNet and text encoder learning rate, cosine-decayed to a tenth (default: %(default)s).",
    )
    parser.add_argument(
        "--ema-decay",
        type=float,
        default=0.999,
        help="Decay of the saved weights' average (%(default)s).",
    )
    parser.add_argument(
        "--min-snr-gamma",
        type=float,
        default=5.0,
        help="Min-SNR loss weights' gamma (%(default)s).",
    )
    parser.add_argument(
        "--text-hidden-size",
        type=int,
        default=32,
        help="Width of the CLIP text encoder; also the UNet's cross_attention_dim (default: 32).",
    )
    parser.add_argument(
        "--sample-steps",
        type=int,
        help=f"Denoising steps for the samples (default: {DEFAULTS['sample_steps']}).",
    )
    parser.add_argument(
        "--guidance-scale", type=float, default=4.0, help="Guidance for the final samples (default: 4.0)."
    )
    parser.add_argument(
        "--log-every", type=int, default=50, help="Steps between progress lines (default: 50)."
    )
    parser.add_argument(
        "--device", default=None, help="torch device (default: cuda when available, else cpu)."
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="CPU threads for torch (default: 2, this machine's cores)."
    )
    parser.add_argument("--force", action="store_true", help="Redo every stage even if its folder exists.")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"A few steps per stage at a tiny batch ({SMOKE}), for tests: under a minute.",
    )
    args = parser.parse_args(argv)

    for name, value in (SMOKE if args.smoke else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in (
        "vae_steps",
        "vae_batch",
        "unet_steps",
        "unet_batch",
        "unet_pool",
        "sample_steps",
        "log_every",
        "threads",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1. Given: {getattr(args, name)}")
    if not 0 <= args.ema_decay < 1:
        parser.error(f"--ema-decay must be at least 0 and below 1. Given: {args.ema_decay}")
    if not args.min_snr_gamma > 0:
        parser.error(f"--min-snr-gamma must be above 0. Given: {args.min_snr_gamma}")
    for name in ("count_noise", "caption_dropout"):
        if not 0 <= getattr(args, name) <= 1:
            parser.error(f"--{name.replace('_', '-')} must be between 0 and 1. Given: {getattr(args, name)}")
    check_output_parent(parser, args.out)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


# ----------------------------------------------------------------------------------------------------
# Networks
# ----------------------------------------------------------------------------------------------------

# The latents are 4 x 16 x 16: a VAE factor of 4, not Stable Diffusion's 8. Measured here after 600 steps
# (batch 16), a (16, 32, 64) VAE of factor 4 reconstructed the shapes (MSE 0.033 on [-1, 1] pixels), while
# SD's factor 8 at this width, (8, 16, 16, 16), gave grey blobs (MSE 0.13): a 14 px star is 2 latent cells
# across at factor 8. The UNet then works at 16x16, which costs 0.19 s per step of 32 (against 0.17 s for
# the (32, 64) UNet at the same size) with cross-attention only at 8x8 and 4x4.
LATENT_SIZE = IMAGE_SIZE // 4


def build_vae(seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=4,
        sample_size=IMAGE_SIZE,
    )


def build_unet(cross_attention_dim: int, seed: int) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        attention_head_dim=4,
        norm_num_groups=16,
        cross_attention_dim=cross_attention_dim,
    )


# ----------------------------------------------------------------------------------------------------
# Data: the VAE sees new renders every step; the UNet draws from a pool of encoded renders
# ----------------------------------------------------------------------------------------------------


class ShapesBatches:
    """Batches of (image, caption) from the training prompts, each image a correct render of its prompt."""

    def __init__(self, seed: int, count_noise: float, caption_dropout: float):
        self.prompts = train_prompts()
        self.rng = np.random.default_rng(seed)
        self.count_noise = count_noise
        self.caption_dropout = caption_dropout

    def next(self, batch_size: int) -> tuple[torch.Tensor, list[str]]:
        images, captions = [], []
        for _ in range(batch_size):
            prompt = self.prompts[self.rng.integers(len(self.prompts))]
            images.append(np.asarray(render(prompt, self.rng), dtype=np.float32))
            caption = noisy_caption(prompt, self.rng, self.count_noise)
            captions.append("" if self.rng.random() < self.caption_dropout else caption)
        # [batch, 3, 64, 64] in [-1, 1], as diffusers' VAE expects.
        pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) / 127.5 - 1
        return pixels, captions


class LatentPool:
    """The UNet's data: `size` renders encoded once by the frozen VAE, drawn with fresh captions and noise.

    Encoding a batch of 32 renders took 0.07 s of the UNet's 0.26 s step here, so encoding every step
    anew cost about 8 of its 31 minutes. A pool keeps the posterior's mean and standard deviation, so each
    draw still samples a new latent, and each draw's caption gets its own count noise and dropout.
    """

    def __init__(self, vae: AutoencoderKL, size: int, seed: int, count_noise: float, caption_dropout: float):
        renders = ShapesBatches(seed, count_noise, 0.0)
        self.rng = np.random.default_rng(seed + 1)
        self.count_noise = count_noise
        self.caption_dropout = caption_dropout
        self.scaling_factor = vae.config.scaling_factor
        device = next(vae.parameters()).device
        self.prompts, means, stds = [], [], []
        for start in range(0, size, 64):
            count = min(64, size - start)
            prompts = [renders.prompts[renders.rng.integers(len(renders.prompts))] for _ in range(count)]
            images = [np.asarray(render(prompt, renders.rng), dtype=np.float32) for prompt in prompts]
            pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) / 127.5 - 1
            with torch.no_grad():
                posterior = vae.encode(pixels.to(device)).latent_dist
            self.prompts.extend(prompts)
            means.append(posterior.mean)
            stds.append(posterior.std)
        self.means = torch.cat(means)
        self.stds = torch.cat(stds)

    def next(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        indices = self.rng.integers(len(self.prompts), size=batch_size)
        index_tensor = torch.from_numpy(indices).to(self.means.device)
        means, stds = self.means[index_tensor], self.stds[index_tensor]
        noise = torch.randn(means.shape, generator=generator, device=means.device)
        latents = (means + stds * noise) * self.scaling_factor
        captions = []
        for index in indices:
            caption = noisy_caption(self.prompts[index], self.rng, self.count_noise)
            captions.append("" if self.rng.random() < self.caption_dropout else caption)
        return latents, captions


# ----------------------------------------------------------------------------------------------------
# Stages: each writes <name>.partial, then renames it
# ----------------------------------------------------------------------------------------------------


def padded_ids(tokenizer: CLIPTokenizer, captions: list[str], device: str) -> torch.Tensor:
    """Token ids padded to 77 as the pipeline pads at inference: the UNet attends to the padding too."""
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)


def run_stage(folder: Path, force: bool, build) -> bool:
    """Call build(partial_folder) unless `folder` is already done; an old .partial is always discarded.

    Returns whether the stage ran, so that the stages after it run again too.
    """
    partial = folder.with_name(folder.name + ".partial")
    if partial.exists():
        emit("discard_partial", stage=folder.name, folder=str(partial))
        shutil.rmtree(partial)
    if folder.exists() and not force:
        emit("skip", stage=folder.name, folder=str(folder))
        return False
    started = time.monotonic()
    partial.mkdir(parents=True)
    build(partial)
    # How long the stage took, kept with it: a resumed build still knows what each stage cost.
    seconds = round(time.monotonic() - started, 1)
    finished = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (partial / STAGE_RECORD).write_text(json.dumps({"seconds": seconds, "finished": finished}) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    partial.rename(folder)
    emit("stage_done", stage=folder.name, folder=str(folder), seconds=seconds)
    return True


def train_vae(args: argparse.Namespace, out: Path) -> None:
    vae = build_vae(args.seed + 3).to(args.device).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    data = ShapesBatches(args.seed + 10, args.count_noise, 0.0)
    started = time.monotonic()
    for step in range(1, args.vae_steps + 1):
        pixels, _ = data.next(args.vae_batch)
        pixels = pixels.to(args.device)
        posterior = vae.encode(pixels).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        reconstruction_loss = F.mse_loss(reconstruction, pixels)
        kl_loss = posterior.kl().mean() / pixels[0].numel()
        loss = reconstruction_loss + args.kl_weight * kl_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % args.log_every == 0 or step == args.vae_steps:
            emit(
                "step",
                stage="vae",
                step=step,
                loss=round(loss.item(), 6),
                kl=round(kl_loss.item(), 4),
                seconds=round(time.monotonic() - started, 1),
            )

    # SD scales latents to unit variance so the noise schedule fits them; measure this VAE's factor.
    vae.eval()
    with torch.no_grad():
        pixels, _ = data.next(max(args.vae_batch, 64))
        latents = vae.encode(pixels.to(args.device)).latent_dist.sample()
    scaling_factor = float(1 / latents.std())
    vae.register_to_config(scaling_factor=scaling_factor)
    emit("vae_scaling_factor", value=round(scaling_factor, 5))
    vae.to("cpu").save_pretrained(out, safe_serialization=True)


def train_unet(args: argparse.Namespace, vae_folder: Path, tokenizer_folder: Path, out: Path) -> None:
    device = args.device
    vae = AutoencoderKL.from_pretrained(vae_folder).to(device).eval().requires_grad_(False)
    tokenizer = build_tokenizer(tokenizer_folder)
    text_encoder = build_text_encoder(args.text_hidden_size, args.seed + 1).to(device).train()
    unet = build_unet(args.text_hidden_size, args.seed + 2).to(device).train()
    noise_scheduler = DDPMScheduler(
        num_train_timesteps=SD15_SCHEDULER_CONFIG["num_train_timesteps"],
        beta_start=SD15_SCHEDULER_CONFIG["beta_start"],
        beta_end=SD15_SCHEDULER_CONFIG["beta_end"],
        beta_schedule=SD15_SCHEDULER_CONFIG["beta_schedule"],
        clip_sample=False,
    )
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=args.unet_lr, weight_decay=1e-2)
    warmup_steps = min(200, args.unet_steps // 10 + 1)

    def learning_rate_factor(step: int) -> float:
        # Linear warm-up, then cosine decay to a tenth.
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, args.unet_steps - warmup_steps)
        return 0.1 + 0.45 * (1 + np.cos(np.pi * min(1.0, progress)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_factor)
    # An exponential moving average of the weights is what gets saved: it samples cleaner than the last step.
    ema = EMAModel(parameters, decay=args.ema_decay, use_ema_warmup=True)
    # Min-SNR-gamma loss weights (Hang et al. 2023): easy low-noise timesteps stop dominating the gradient.
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(device)
    snr = alphas_cumprod / (1 - alphas_cumprod)
    snr_weight = torch.clamp(snr, max=args.min_snr_gamma) / snr
    started = time.monotonic()
    data = LatentPool(vae, args.unet_pool, args.seed + 20, args.count_noise, args.caption_dropout)
    emit("latent_pool", images=args.unet_pool, seconds=round(time.monotonic() - started, 1))
    generator = torch.Generator(device).manual_seed(args.seed + 30)
    started = time.monotonic()
    for step in range(1, args.unet_steps + 1):
        latents, captions = data.next(args.unet_batch, generator)
        input_ids = padded_ids(tokenizer, captions, device)
        encoder_hidden_states = text_encoder(input_ids)[0]
        noise = torch.randn(latents.shape, generator=generator, device=device)
        timesteps = torch.randint(
            0,
            noise_scheduler.config.num_train_timesteps,
            (latents.shape[0],),
            generator=generator,
            device=device,
        )
        noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
        predicted_noise = unet(noisy_latents, timesteps, encoder_hidden_states).sample
        per_sample = F.mse_loss(predicted_noise, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * snr_weight[timesteps]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        ema.step(parameters)
        if step % args.log_every == 0 or step == args.unet_steps:
            emit(
                "step",
                stage="unet",
                step=step,
                loss=round(loss.item(), 6),
                seconds=round(time.monotonic() - started, 1),
            )
    ema.copy_to(parameters)
    unet.to("cpu").save_pretrained(out / "unet", safe_serialization=True)
    text_encoder.to("cpu").save_pretrained(out / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(out / "tokenizer")


def assemble_pipeline(vae_folder: Path, unet_folder: Path, out: Path) -> None:
    pipeline = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(vae_folder),
        text_encoder=CLIPTextModel.from_pretrained(unet_folder / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(unet_folder / "tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(unet_folder / "unet"),
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(out, safe_serialization=True)


def write_samples(args: argparse.Namespace, pipeline_folder: Path, out: Path) -> None:
    """Sample with the saved folder, not the objects in memory, so a broken save shows up here."""
    pipeline = StableDiffusionPipeline.from_pretrained(pipeline_folder).to(args.device)
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator(args.device).manual_seed(args.seed + 40)
    records = []
    for prompt_index, prompt in enumerate(SAMPLE_PROMPTS):
        images = pipeline(
            prompt,
            height=IMAGE_SIZE,
            width=IMAGE_SIZE,
            num_images_per_prompt=SAMPLES_PER_PROMPT,
            num_inference_steps=args.sample_steps,
            guidance_scale=args.guidance_scale,
            generator=generator,
        ).images
        for image_index, image in enumerate(images):
            name = f"prompt{prompt_index}-{image_index}.png"
            image.save(out / name)
            records.append({"image": name, "prompt": prompt})
    (out / "prompts.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = args.out.resolve()
    stages = out.with_name(out.name + "-stages")
    samples = out.with_name(out.name + "-samples")
    emit("start", out=str(out), device=args.device, **{k: getattr(args, k) for k in DEFAULTS})
    started = time.monotonic()

    # A stage that ran makes every later one stale, so they run again too.
    ran = run_stage(stages / "vae", args.force, lambda partial: train_vae(args, partial))
    ran = run_stage(
        stages / "unet",
        args.force or ran,
        lambda partial: train_unet(args, stages / "vae", partial / "tokenizer", partial),
    )
    ran = run_stage(
        out, args.force or ran, lambda partial: assemble_pipeline(stages / "vae", stages / "unet", partial)
    )
    run_stage(samples, args.force or ran, lambda partial: write_samples(args, out, partial))
    emit("done", out=str(out), samples=str(samples), seconds=round(time.monotonic() - started, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
