"""Fine-tune a diffusers pipeline by reward-weighted likelihood, and export it to ONNX (issue #5; paper §3.3).

The service's fine-tune job runs this as a child process with one JSON spec (`--spec job.json`, or `-` for
stdin) and reads its progress from stdout as JSON lines. The objective is the paper's:

    J = E_(x,z)~D_model[ r(x, z) * L(x, z) ] + beta * E_(x,z)~D_pre[ L(x, z) ]

where L is the per-sample denoising loss ||eps - eps_theta(x_t, t, z)||^2 with the Min-SNR weights the
pretraining used (train_sd.py), and `pretrain_fraction` of every batch comes from D_pre. D_model is the job's
samples: images with a reward in [0, 1], either a rater's label (good 1, bad 0) or the reward model's score.

E_model[r * L] is estimated by importance sampling: samples are drawn in proportion to r and their loss is
scaled by the mean reward, which has the same expectation as uniform draws weighted by r but spends no batch
rows on images whose reward is 0. The UNet is trained; the text encoder stays frozen (as in the paper) unless
`train_text_encoder` is set.

`objective` replaces the reward-weighted term E_model[r * L] (issue #26; objectives.py has the formulas, the
pairing and labelling rules and their sources): `dpo` is Diffusion-DPO on pairs of a preferred and a
dispreferred image of one prompt, `kto` Diffusion-KTO on images labelled desirable or undesirable, both
against a frozen copy of the base UNet. The pre-training term stays with every objective.

Spec (JSON; unknown keys are refused):
    base              diffusers pipeline folder to start from (required)
    out               folder to write; must not exist; written as <out>.partial and renamed (required)
    samples           JSON-lines file: {"image": path relative to the file, "prompt", "reward"} (required),
                      and optionally "latent": a .npy of the latent the image was decoded from ([4, h, w],
                      the UNet's scaled space), which is trained on as it is instead of encoding the image
                      again (a VAE round trip of the model's own samples costs accuracy; see EncodedSet).
                      A latent is used only if it is readable and the base's VAE decodes it back to the
                      image (checked_latents); any other is left out, and its image encoded
    pretrain          {"kind": "shapes_world", "images": 8192, "count_noise": 0.5}
                      or {"kind": "folder", "path": ...}: image files each with a same-named .txt caption,
                      or a metadata.jsonl of {"file_name", "text"} (the Hugging Face imagefolder layout)
    beta              weight of the pre-training term (default 1.0)
    pretrain_target   what the pre-training term regresses the UNet's prediction on: `data` (default), the
                      noise that was added to the render, as the paper's term does; or `base`, the frozen
                      base UNet's own prediction for the same noisy render, caption and timestep
                      (objectives.Denoising.anchored_losses). `data`'s optimum is the best fit to the
                      pre-training set, which goes on moving the weights wherever the base had not converged;
                      `base`'s optimum is the base itself, and its target carries no sampling noise
    learning_rate     AdamW learning rate, reached after a 5% linear warm-up (default 1e-4)
    lr_schedule       after the warm-up: `constant` (default), or `cosine`, decayed to a tenth by the last
                      step as the pretraining's was (train_sd.py)
    steps             optimiser steps (default 1000)
    batch_size        rows per step and process, model and pre-training together (default 32)
    pretrain_fraction share of each batch from D_pre, in [0, 1) (default 0.5); rounded to rows, each term
                      keeps at least one whenever the batch has two
    ema_decay         save an exponential moving average of the trained weights, with this decay (warmed up
                      as diffusers' EMAModel does); 0 (default) saves the last step's weights
    caption_dropout   share of rows trained with the empty caption, as in pretraining (default 0.1): the
                      unconditional prediction that classifier-free guidance subtracts is shared with the
                      conditional one, so a fine-tune that never trains it lets it drift, and guidance
                      amplifies the drift
    unet_layers       `all` (default) trains the whole UNet; `cross_attention` trains only its cross-attention
                      layers (attn2: the text-to-image binding, about 5% of shapes-sd's UNet), as Custom
                      Diffusion does, leaving the layers that draw the objects untouched
    lora_rank         0 (default) trains the weights themselves; above 0, a LoRA adapter of this rank
                      (lora.py) on the UNet's attention projections (to_q, to_k, to_v, to_out.0 of self- and
                      cross-attention; of cross-attention alone with `unet_layers` cross_attention) and, with
                      `train_text_encoder`, on the text encoder's (q_proj, k_proj, v_proj, out_proj); every
                      other weight stays frozen. B starts at zero, so training starts at the base. At the end
                      the adapter is merged into the weights (W <- W + lora_alpha / lora_rank * B A), which
                      export as any fine-tune's do, and it is also saved in <out>/adapter/ (layout: lora.py)
    lora_alpha        the LoRA update's scale is lora_alpha / lora_rank (default: null, the rank: scale 1)
    objective         `rwr` (default): reward-weighted regression as above; `dpo` or `kto` (objectives.py)
    objective_beta    β of dpo or kto, in [1, 1e6]; null (default) takes the objective's default, 500 for dpo
                      and 100 for kto (objectives.DEFAULT_BETA); rwr ignores it
    train_text_encoder, seed, device (default cuda when available), threads, log_every, export (default true)

Output: <out>/diffusers (safetensors), and unless "export" is false the ONNX layout of `optimum-cli export
onnx --task text-to-image` beside it (with export_sd.py's UNet, whose timestep is [batch]), checked against
PyTorch like export_sd.py, plus <out>/finetune.json with the spec, the losses and the time. With `lora_rank`,
the merged weights are what <out>/diffusers and the ONNX files hold, and <out>/adapter/ holds the adapter
(adapter.safetensors in diffusers' LoRA key naming, adapter.json with its rank, alpha, modules and base).

Progress lines: {"event": "start"}, {"event": "data", ..., "latents": {"given", "used", "wrong_shape",
"mismatched", "unreadable"}, "objective": {"name", and for dpo "beta", "pairs", "prompts", "min_margin", for
kto "beta", "desirable", "undesirable", "threshold"}}, {"event": "warning", "message"}, {"event": "lora",
"rank", "alpha", "layers", "parameters", "share"} (with lora_rank; share: of the adapted models' parameters),
{"event": "step",
"step", "steps", "loss", "model_loss", "pretrain_loss", "seconds", and for dpo and kto "implicit_accuracy",
for kto "reference_point"}, {"event": "export", ...}, {"event": "done", "out", "seconds"}.
An error prints {"event": "error", "message"} and exits with status 1 (2 for a bad spec, or samples that give
the objective nothing to train on).

Several GPUs: under torchrun (or accelerate launch) each process trains on its own draws,
DistributedDataParallel averages the gradients, and the main process alone prints progress, saves and exports:

    torchrun --nproc_per_node 4 -m t2i_trainer.jobs.finetune --spec job.json

Usage:
    python -m t2i_trainer.jobs.finetune --spec job.json
"""

import argparse
import copy
import json
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image

from t2i_trainer.common.stage_cli import emit
from t2i_trainer.jobs import lora, objectives

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MIN_SNR_GAMMA = 5.0
UNET_LAYERS = ("all", "cross_attention")
LR_SCHEDULES = ("constant", "cosine")
PRETRAIN_TARGETS = ("data", "base")
MAX_LORA_RANK = 1024
# How far (mean absolute difference, 0-255) the base's VAE may decode a sample's latent from its 8-bit image
# and still be trusted as that image's latent: rounding to 8 bits costs about 0.25, and ONNX Runtime's
# decoder against PyTorch's a little more; a latent from another VAE is tens away.
LATENT_TOLERANCE = 2.0


@dataclass
class World:
    """This process's place in a data-parallel run (torchrun sets RANK, LOCAL_RANK and WORLD_SIZE)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


WORLD = World()


def say(event: str, **fields) -> None:
    """A progress line, from the main process only: under torchrun every worker shares stdout."""
    if WORLD.main:
        emit(event, **fields)


def init_world(spec: "Spec") -> World:
    """Joins the process group when started by torchrun (or accelerate launch); a single process otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if spec.device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        spec.device = f"cuda:{local_rank}"
    dist.init_process_group("nccl" if spec.device.startswith("cuda") else "gloo")
    return World(rank=int(os.environ.get("RANK", "0")), size=size, local_rank=local_rank)


class SpecError(ValueError):
    """A spec field that is missing, of the wrong type or out of range; the message names it."""


@dataclass
class Spec:
    base: Path
    out: Path
    samples: Path
    pretrain: dict = field(default_factory=lambda: {"kind": "shapes_world"})
    beta: float = 1.0
    pretrain_target: str = "data"
    learning_rate: float = 1e-4
    steps: int = 1000
    batch_size: int = 32
    pretrain_fraction: float = 0.5
    train_text_encoder: bool = False
    ema_decay: float = 0.0
    caption_dropout: float = 0.1
    unet_layers: str = "all"
    lr_schedule: str = "constant"
    seed: int = 0
    device: str | None = None
    threads: int = 2
    log_every: int = 10
    export: bool = True
    checkpoint: str | None = None
    checkpoint_every: int = 0
    resume: str | None = None
    lora_rank: int = 0
    lora_alpha: float | None = None
    objective: str = "rwr"
    objective_beta: float | None = None

    @property
    def model_rows(self) -> int:
        return self.batch_size - self.pretrain_rows

    @property
    def pretrain_rows(self) -> int:
        """`batch_size × pretrain_fraction` rounded, then at least 1 when the fraction is above 0 and at most
        `batch_size − 1`, so each term keeps a row whenever the batch has two (the service's
        `Hyperparameters::pretrain_rows` computes the same)."""
        rows = round(self.batch_size * self.pretrain_fraction)
        if self.pretrain_fraction > 0:
            rows = max(rows, 1)
        return max(min(rows, self.batch_size - 1), 0)


def parse_spec(raw: dict) -> Spec:
    if not isinstance(raw, dict):
        raise SpecError("the spec must be a JSON object")
    known = set(Spec.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SpecError(f"unknown field `{unknown[0]}`; known fields: {', '.join(sorted(known))}")
    for name in ("base", "out", "samples"):
        if not isinstance(raw.get(name), str) or not raw[name]:
            raise SpecError(f"`{name}` is required: a path")
    values = dict(raw)
    for name in ("base", "out", "samples"):
        values[name] = Path(raw[name])
    spec = Spec(**values)

    def number(name: str, low: float, high: float, integer: bool = False) -> None:
        value = getattr(spec, name)
        kind = int if integer else (int, float)
        # math.isfinite only for floats: it overflows on integers beyond a float's range.
        if (
            isinstance(value, bool)
            or not isinstance(value, kind)
            or (isinstance(value, float) and not math.isfinite(value))
        ):
            raise SpecError(
                f"`{name}` must be a finite {'integer' if integer else 'number'}. Given: {value!r}"
            )
        if not low <= value <= high:
            raise SpecError(f"`{name}` must be between {low} and {high}. Given: {value}")

    number("beta", 0.0, 1e6)
    number("learning_rate", 1e-12, 1.0)
    number("steps", 1, 10_000_000, integer=True)
    number("batch_size", 1, 65536, integer=True)
    number("pretrain_fraction", 0.0, 0.999999)
    number("seed", 0, 2**63 - 1, integer=True)
    number("threads", 1, 1024, integer=True)
    number("log_every", 1, 10_000_000, integer=True)
    number("checkpoint_every", 0, 10_000_000, integer=True)
    number("lora_rank", 0, MAX_LORA_RANK, integer=True)
    if spec.lora_alpha is not None:
        number("lora_alpha", 0.001, 100_000)
    for name in ("checkpoint", "resume"):
        value = getattr(spec, name)
        if value is not None and (not isinstance(value, str) or not value):
            raise SpecError(f"`{name}` must be a file path or null. Given: {value!r}")

    number("ema_decay", 0.0, 0.999999)
    number("caption_dropout", 0.0, 1.0)
    for name in ("train_text_encoder", "export"):
        if not isinstance(getattr(spec, name), bool):
            raise SpecError(f"`{name}` must be true or false. Given: {getattr(spec, name)!r}")
    if spec.lr_schedule not in LR_SCHEDULES:
        raise SpecError(
            f"`lr_schedule` must be one of {', '.join(LR_SCHEDULES)}. Given: {spec.lr_schedule!r}"
        )
    if spec.pretrain_target not in PRETRAIN_TARGETS:
        raise SpecError(
            f"`pretrain_target` must be one of {', '.join(PRETRAIN_TARGETS)}. Given: {spec.pretrain_target!r}"
        )
    if spec.objective not in objectives.OBJECTIVES:
        raise SpecError(
            f"`objective` must be one of {', '.join(objectives.OBJECTIVES)}. Given: {spec.objective!r}"
        )
    if spec.objective_beta is not None:
        number("objective_beta", *objectives.BETA_RANGE)
    if spec.unet_layers not in UNET_LAYERS:
        raise SpecError(f"`unet_layers` must be one of {', '.join(UNET_LAYERS)}. Given: {spec.unet_layers!r}")
    if spec.device is not None and (not isinstance(spec.device, str) or not spec.device):
        raise SpecError(f"`device` must be a torch device name such as cpu or cuda. Given: {spec.device!r}")
    if spec.model_rows < 1:
        raise SpecError(
            f"`batch_size` {spec.batch_size} leaves no row for the model's samples at pretrain_fraction "
            f"{spec.pretrain_fraction}"
        )
    if spec.pretrain_fraction > 0 and spec.pretrain_rows < 1:
        raise SpecError(
            f"`batch_size` {spec.batch_size} leaves no row for pre-training data at pretrain_fraction "
            f"{spec.pretrain_fraction}"
        )
    if not (spec.base / "model_index.json").is_file():
        raise SpecError(f"`base` is not a diffusers pipeline folder (no model_index.json): {spec.base}")
    if not spec.samples.is_file():
        raise SpecError(f"`samples` is not a file: {spec.samples}")
    if spec.out.exists():
        raise SpecError(f"`out` exists already: {spec.out}")
    if not spec.out.resolve().parent.is_dir():
        raise SpecError(f"the parent folder of `out` does not exist: {spec.out.resolve().parent}")
    kind = spec.pretrain.get("kind") if isinstance(spec.pretrain, dict) else None
    if kind == "shapes_world":
        allowed = {"kind", "images", "count_noise"}
        images = spec.pretrain.get("images", 8192)
        if isinstance(images, bool) or not isinstance(images, int) or not 1 <= images <= 10_000_000:
            raise SpecError(f"`pretrain.images` must be an integer from 1 to 10000000. Given: {images!r}")
        count_noise = spec.pretrain.get("count_noise", 0.5)
        if (
            isinstance(count_noise, bool)
            or not isinstance(count_noise, (int, float))
            or not 0 <= count_noise <= 1  # false for NaN too
        ):
            raise SpecError(f"`pretrain.count_noise` must be a number from 0 to 1. Given: {count_noise!r}")
    elif kind == "folder":
        allowed = {"kind", "path"}
        path = spec.pretrain.get("path")
        if not isinstance(path, str) or not Path(path).is_dir():
            raise SpecError(f"`pretrain.path` is not a readable folder: {path!r}")
    else:
        raise SpecError(f"`pretrain.kind` must be shapes_world or folder. Given: {kind!r}")
    extra = sorted(set(spec.pretrain) - allowed)
    if extra:
        raise SpecError(f"unknown field `pretrain.{extra[0]}` for kind {kind}")
    return spec


# ----------------------------------------------------------------------------------------------------
# Data: both sets are encoded once by the frozen VAE; each draw samples a new latent from the posterior
# ----------------------------------------------------------------------------------------------------


class EncodedSet:
    """Images encoded once: the posterior's mean and std, with a caption and a weight per image.

    An image that comes with the latent the model drew it from (`latents[i]`, in the UNet's scaled space)
    keeps that latent exactly (std 0) instead of being encoded again: a VAE round trip of the model's own
    samples is lossy, and training on the re-encoded latents teaches the UNet the loss.
    """

    def __init__(
        self,
        vae,
        images: list[np.ndarray],
        captions: list[str],
        weights: np.ndarray,
        size: int,
        latents: list[np.ndarray | None] | None = None,
    ):
        device = next(vae.parameters()).device
        self.scaling_factor = vae.config.scaling_factor
        latents = latents if latents is not None else [None] * len(images)
        to_encode = [index for index, latent in enumerate(latents) if latent is None]
        means: list[torch.Tensor | None] = [None] * len(images)
        stds: list[torch.Tensor | None] = [None] * len(images)
        for start in range(0, len(to_encode), 64):
            chunk_indices = to_encode[start : start + 64]
            chunk = [resize(images[index], size) for index in chunk_indices]
            pixels = torch.from_numpy(np.stack(chunk)).permute(0, 3, 1, 2).float() / 127.5 - 1
            with torch.no_grad():
                posterior = vae.encode(pixels.to(device)).latent_dist
            for offset, index in enumerate(chunk_indices):
                means[index] = posterior.mean[offset]
                stds[index] = posterior.std[offset]
        for index, latent in enumerate(latents):
            if latent is not None:
                means[index] = torch.from_numpy(latent).to(device) / self.scaling_factor
                stds[index] = torch.zeros_like(means[index])
        self.means = torch.stack(means) if means else torch.zeros(0)
        self.stds = torch.stack(stds) if stds else torch.zeros(0)
        self.captions = captions
        self.weights = weights

    def draw(self, indices: np.ndarray, generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        index = torch.from_numpy(indices).to(self.means.device)
        means, stds = self.means[index], self.stds[index]
        noise = torch.randn(means.shape, generator=generator, device=means.device)
        return (means + stds * noise) * self.scaling_factor, [self.captions[i] for i in indices]


def decoded_pixels(vae, latents: torch.Tensor) -> torch.Tensor:
    """The VAE's images of latents in the UNet's scaled space: floats [N, H, W, 3] in 0..255, unrounded."""
    with torch.no_grad():
        decoded = vae.decode(latents / vae.config.scaling_factor).sample
    return ((decoded.clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1)


def checked_latents(
    vae, images: list[np.ndarray], latents: list[np.ndarray | None], unet, size: int
) -> tuple[list[np.ndarray | None], dict]:
    """The samples' latents that this base can use: shaped as its UNet's input, and decoded by its VAE back
    to the sample's image (mean absolute difference at most LATENT_TOLERANCE of 255). Any other latent is
    dropped and its image encoded instead: it came from another model's VAE, or does not belong to the image.
    Returns the latents and the counts {given, used, wrong_shape, mismatched} (the caller adds the unreadable
    ones, which load_samples left out)."""
    expected = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    kept = list(latents)
    given = [index for index, latent in enumerate(latents) if latent is not None]
    shaped = [index for index in given if latents[index].shape == expected]
    counts = {"given": len(given), "used": 0, "wrong_shape": len(given) - len(shaped), "mismatched": 0}
    for index in set(given) - set(shaped):
        kept[index] = None
    device = next(vae.parameters()).device
    for start in range(0, len(shaped), 64):
        chunk = shaped[start : start + 64]
        stacked = torch.from_numpy(np.stack([latents[index] for index in chunk])).to(device)
        pixels = decoded_pixels(vae, stacked).cpu().numpy()
        for offset, index in enumerate(chunk):
            target = resize(images[index], size).astype(np.float32)
            if (
                pixels[offset].shape != target.shape
                or np.abs(pixels[offset] - target).mean() > LATENT_TOLERANCE
            ):
                kept[index] = None
                counts["mismatched"] += 1
    counts["used"] = sum(latent is not None for latent in kept)
    return kept, counts


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 HxWx3 at size x size: a centre crop to square, then a bicubic resize, as SD's scripts do."""
    if image.shape[:2] == (size, size):
        return image
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    cropped = Image.fromarray(image[top : top + side, left : left + side])
    return np.asarray(cropped.resize((size, size), Image.Resampling.BICUBIC))


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def load_latent(path: Path, number: int) -> np.ndarray | None:
    """A .npy latent as the denoising loop ended it ([channels, height, width], the UNet's scaled space), or
    None, with a warning line, when the file is unreadable or holds something else: a latent is an aid (its
    image is encoded instead), so a damaged one never fails the job."""
    try:
        latent = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        say("warning", message=f"`samples` line {number}: `latent` is not a readable .npy file: {error}")
        return None
    if latent.ndim == 4 and latent.shape[0] == 1:
        latent = latent[0]
    if latent.ndim != 3 or not np.issubdtype(latent.dtype, np.floating) or not np.isfinite(latent).all():
        say(
            "warning",
            message=f"`samples` line {number}: `latent` must hold finite floats shaped [channels, height, "
            f"width]. Given: {latent.dtype} {list(latent.shape)}",
        )
        return None
    return latent.astype(np.float32)


@dataclass
class Samples:
    """A samples file: images, prompts, rewards and, where a record names a readable one (`latent`), the
    latent the image was decoded from; `unreadable_latents` counts those named but unusable."""

    images: list[np.ndarray]
    prompts: list[str]
    rewards: np.ndarray
    latents: list[np.ndarray | None]
    unreadable_latents: int


def load_samples(path: Path) -> Samples:
    images, prompts, rewards, latents = [], [], [], []
    unreadable = 0
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                reward = float(record["reward"])
                prompt = record["prompt"]
                image = load_rgb(path.parent / record["image"])
                latent_name = record.get("latent")
            except (ValueError, KeyError, TypeError, OSError, AttributeError) as error:
                raise SpecError(f"`samples` line {number} is not a readable sample: {error}") from error
            if not math.isfinite(reward):
                raise SpecError(f"`samples` line {number}: reward must be finite. Given: {reward}")
            if latent_name is not None and not isinstance(latent_name, str):
                raise SpecError(f"`samples` line {number}: `latent` must be a path. Given: {latent_name!r}")
            images.append(image)
            prompts.append(str(prompt))
            latent = None if latent_name is None else load_latent(path.parent / latent_name, number)
            unreadable += latent_name is not None and latent is None
            latents.append(latent)
            # The paper's weights are "roughly in [0, 1]": a score outside is clipped, never negated.
            rewards.append(min(max(reward, 0.0), 1.0))
    if not images:
        raise SpecError(f"`samples` has no samples: {path}")
    weights = np.asarray(rewards, dtype=np.float64)
    if weights.sum() <= 0:
        raise SpecError("`samples` has no sample with a reward above 0, so the reward term would be empty")
    return Samples(images, prompts, weights, latents, unreadable)


def load_caption_folder(folder: Path) -> tuple[list[np.ndarray], list[str]]:
    images, captions = [], []
    metadata = folder / "metadata.jsonl"
    if metadata.is_file():
        with open(metadata, encoding="utf-8") as lines:
            pairs = [json.loads(line) for line in lines if line.strip()]
        entries = [(folder / pair["file_name"], pair["text"]) for pair in pairs]
    else:
        entries = []
        for path in sorted(folder.iterdir()):
            caption = path.with_suffix(".txt")
            if path.suffix.lower() in IMAGE_SUFFIXES and caption.is_file():
                entries.append((path, caption.read_text(encoding="utf-8").strip()))
    for path, caption in entries:
        images.append(load_rgb(path))
        captions.append(caption)
    if not images:
        raise SpecError(
            f"`pretrain.path` has no image+caption pairs (image files with a .txt beside them, or a "
            f"metadata.jsonl): {folder}"
        )
    return images, captions


def shapes_world_pretrain(settings: dict, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """Renders of the training prompts with the pretraining's noisy captions (train_sd.py's data)."""
    from t2i_trainer.build.shapes_world import pretrain_renders

    drawn = pretrain_renders(int(settings.get("images", 8192)), seed, float(settings.get("count_noise", 0.5)))
    return [np.asarray(image) for _, image, _ in drawn], [caption for _, _, caption in drawn]


# ----------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------


def trainable_unet_parameters(unet, layers: str) -> list:
    """The UNet parameters `layers` names, with requires_grad set on them alone."""
    chosen = []
    for name, parameter in unet.named_parameters():
        train = layers == "all" or ".attn2." in name
        parameter.requires_grad_(train)
        if train:
            chosen.append(parameter)
    if not chosen:
        raise SpecError(f"`unet_layers` {layers} matches no parameter of this UNet")
    return chosen


def learning_rate_factor(step: int, steps: int, schedule: str) -> float:
    """The learning rate at optimiser step `step` (0-based) as a share of the peak: a linear warm-up over the
    first 5% of the steps, then constant, or a cosine decay to a tenth at the last step."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step + 1 - warmup) / max(1, steps - warmup))
    return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))


def train(spec: Spec, stop) -> dict:
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    device = spec.device
    pipeline = StableDiffusionPipeline.from_pretrained(spec.base, safety_checker=None)
    vae = pipeline.vae.to(device).eval().requires_grad_(False)
    unet = pipeline.unet.to(device).train()
    text_encoder = pipeline.text_encoder.to(device)
    text_encoder.train(spec.train_text_encoder).requires_grad_(spec.train_text_encoder)
    tokenizer = pipeline.tokenizer
    size = unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)
    started = time.monotonic()

    samples = load_samples(spec.samples)
    images, prompts, rewards = samples.images, samples.prompts, samples.rewards
    try:
        term = objectives.model_term(spec.objective, spec.objective_beta, prompts, rewards)
    except objectives.NothingToTrain as error:
        raise SpecError(str(error)) from None
    # dpo and kto measure the trained UNet against the base's, frozen (and its text encoder, if that trains),
    # and so does the pre-training term whose target is the base's prediction.
    anchored = spec.pretrain_target == "base" and spec.pretrain_rows > 0
    needs_reference = term.name != "rwr" or anchored
    reference = copy.deepcopy(unet).eval().requires_grad_(False) if needs_reference else None
    reference_text_encoder = None
    if reference is not None and spec.train_text_encoder:
        reference_text_encoder = copy.deepcopy(text_encoder).eval().requires_grad_(False)
    latents, latent_counts = checked_latents(vae, images, samples.latents, unet, size)
    latent_counts["given"] += samples.unreadable_latents
    latent_counts["unreadable"] = samples.unreadable_latents
    model_set = EncodedSet(vae, images, prompts, rewards, size, latents)
    del samples
    del latents
    del images
    pretrain_set = None
    if spec.pretrain_rows:
        if spec.pretrain["kind"] == "shapes_world":
            pre_images, captions = shapes_world_pretrain(spec.pretrain, spec.seed + 1)
        else:
            pre_images, captions = load_caption_folder(Path(spec.pretrain["path"]))
        pretrain_set = EncodedSet(vae, pre_images, captions, np.ones(len(captions)), size)
        del pre_images
    say(
        "data",
        samples=len(prompts),
        mean_reward=round(float(rewards.mean()), 4),
        rewarded=int((rewards > 0).sum()),
        latents=latent_counts,
        pretrain=0 if pretrain_set is None else len(pretrain_set.captions),
        objective=term.summary(),
        seconds=round(time.monotonic() - started, 1),
    )

    scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    alphas_cumprod = scheduler.alphas_cumprod.to(device)
    snr = alphas_cumprod / (1 - alphas_cumprod)
    snr_weight = torch.clamp(snr, max=MIN_SNR_GAMMA) / snr
    adapter = None
    if spec.lora_rank:
        adapter = lora.pipeline_adapter(
            unet,
            text_encoder if spec.train_text_encoder else None,
            spec.lora_rank,
            spec.lora_alpha,
            spec.seed,
            cross_attention_only=spec.unet_layers == "cross_attention",
        )
        say("lora", **adapter.summary())
        parameters = adapter.parameters()
    else:
        parameters = trainable_unet_parameters(unet, spec.unet_layers)
        if spec.train_text_encoder:
            parameters += list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=spec.learning_rate, weight_decay=1e-2)
    ema = None
    if spec.ema_decay > 0:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(parameters, decay=spec.ema_decay, use_ema_warmup=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, spec.steps, spec.lr_schedule)
    )
    # Each worker of a data-parallel run draws its own rows and noise; DDP averages their gradients.
    rng = np.random.default_rng([spec.seed, WORLD.rank])
    generator = torch.Generator(device).manual_seed(spec.seed + 7919 * WORLD.rank)
    denoiser = unet
    if WORLD.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [WORLD.local_rank] if device.startswith("cuda") else None
        denoiser = DistributedDataParallel(unet, device_ids=device_ids)
    denoising = objectives.Denoising(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        scheduler=scheduler,
        snr_weight=snr_weight,
        rng=rng,
        generator=generator,
        caption_dropout=spec.caption_dropout,
        train_text_encoder=spec.train_text_encoder,
        device=device,
        reference_text_encoder=reference_text_encoder,
    )
    context = objectives.Context(model_set, denoising, denoiser, reference)

    history = []
    started = time.monotonic()
    first_step = 1
    resumable = Resumable(parameters, optimizer, schedule, ema, rng, generator)
    if spec.resume is not None:
        first_step, history = load_checkpoint(Path(spec.resume), spec, resumable)
        say("resume", step=first_step - 1, steps=spec.steps, checkpoint=spec.resume)
    for step in range(first_step, spec.steps + 1):
        if stop():
            raise InterruptedError("stopped by a signal")
        model_loss, figures = term.loss(context, spec.model_rows)
        loss = model_loss
        pretrain_loss = torch.zeros(())
        if pretrain_set is not None:
            indices = rng.integers(len(pretrain_set.captions), size=spec.pretrain_rows)
            latents, captions = pretrain_set.draw(indices, generator)
            if anchored:
                pretrain_loss = denoising.anchored_losses(denoiser, reference, latents, captions).mean()
            else:
                pretrain_loss = denoising.weighted_losses(denoiser, latents, captions).mean()
            loss = loss + spec.beta * pretrain_loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss is not finite at step {step}: {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        if ema is not None:
            ema.step(parameters)
        if step % spec.log_every == 0 or step == spec.steps:
            record = {
                "step": step,
                "steps": spec.steps,
                "loss": round(loss.item(), 6),
                "model_loss": round(model_loss.item(), 6),
                "pretrain_loss": round(pretrain_loss.item(), 6),
                "seconds": round(time.monotonic() - started, 1),
                **figures,
            }
            history.append(record)
            say("step", **record)
        due = spec.checkpoint_every and step % spec.checkpoint_every == 0 and step < spec.steps
        if due and spec.checkpoint and WORLD.main:
            save_checkpoint(Path(spec.checkpoint), step, spec, resumable, history)

    if ema is not None:
        ema.copy_to(parameters)
    if adapter is not None:
        lora.merge(adapter)
    unet.eval()
    text_encoder.eval()
    pipeline.to("cpu")
    return {
        "pipeline": pipeline,
        "adapter": adapter,
        "history": history,
        "train_seconds": round(time.monotonic() - started, 1),
    }


@dataclass
class Resumable:
    """What a checkpoint holds of a training run, besides its step and loss history."""

    parameters: list
    optimizer: object
    schedule: object
    ema: object
    rng: np.random.Generator
    generator: torch.Generator


def save_checkpoint(path: Path, step: int, spec: Spec, run: Resumable, history: list) -> None:
    """Everything training needs to go on after `step` exactly as it would have: the trained weights, the
    optimiser and schedule, the EMA, this process's random state and the loss history. Written to a staging
    file and renamed, so `path` always holds a whole checkpoint."""
    state = {
        "step": step,
        "steps": spec.steps,
        "seed": spec.seed,
        "parameters": [parameter.detach().cpu().clone() for parameter in run.parameters],
        "optimizer": run.optimizer.state_dict(),
        "schedule": run.schedule.state_dict(),
        "ema": None if run.ema is None else run.ema.state_dict(),
        "numpy_rng": run.rng.bit_generator.state,
        "torch_generator": run.generator.get_state(),
        "history": history,
    }
    staging = path.with_name(path.name + ".partial")
    torch.save(state, staging)
    os.replace(staging, path)
    say("checkpoint", step=step, steps=spec.steps, path=str(path), bytes=path.stat().st_size)


def load_checkpoint(path: Path, spec: Spec, run: Resumable) -> tuple[int, list]:
    """Restores what `save_checkpoint` wrote; returns the step to go on from and the loss history so far. A
    checkpoint of another run (other steps, seed or trained weights) is refused."""
    if not path.is_file():
        raise SpecError(f"`resume` is not a file: {path}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state["steps"] != spec.steps or state["seed"] != spec.seed:
        raise SpecError(
            f"`resume` {path} is a checkpoint of another run (steps {state['steps']}, seed {state['seed']}; "
            f"this run: steps {spec.steps}, seed {spec.seed})"
        )
    saved = state["parameters"]
    if [tensor.shape for tensor in saved] != [parameter.shape for parameter in run.parameters]:
        raise SpecError(f"`resume` {path} trained other weights than this run does")
    with torch.no_grad():
        for parameter, tensor in zip(run.parameters, saved, strict=True):
            parameter.copy_(tensor.to(parameter.device))
    run.optimizer.load_state_dict(state["optimizer"])
    run.schedule.load_state_dict(state["schedule"])
    if run.ema is not None and state["ema"] is not None:
        run.ema.load_state_dict(state["ema"])
    if WORLD.main:
        # The other processes of a data-parallel run keep their own draws.
        run.rng.bit_generator.state = state["numpy_rng"]
        run.generator.set_state(state["torch_generator"])
    return state["step"] + 1, list(state["history"])


def export(pipeline, partial: Path, base: Path) -> dict:
    """Optimum's text-to-image export into `partial` with export_sd.py's UNet config (a [batch] timestep),
    checked against PyTorch as export_sd.py checks it."""
    from t2i_trainer.build.export_sd import TOLERANCE, export_onnx, parity_report
    from t2i_trainer.build.onnx_contract import describe_exports

    export_onnx(partial / "diffusers", partial, pipeline.unet.config)
    differences, unet_rows = parity_report(pipeline, partial)
    failed = {part: value for part, value in differences.items() if not value <= TOLERANCE}
    if failed:
        raise RuntimeError(f"ONNX and PyTorch differ by more than {TOLERANCE}: {failed}")
    record = {
        "max_abs_difference": differences,
        "unet_rows": unet_rows,
        "tolerance": TOLERANCE,
        "graphs": describe_exports(partial),
    }
    (partial / "export.json").write_text(json.dumps(record, indent=2) + "\n")
    # The served defaults (steps, guidance) carry over from the base version when it has them.
    defaults = base.parent / "t2i-align.json"
    if defaults.is_file():
        shutil.copyfile(defaults, partial / "t2i-align.json")
    return differences


def run(spec: Spec, stop) -> Path:
    if not WORLD.main:
        # Workers other than the main one only train; the main one saves and exports.
        train(spec, stop)
        return spec.out
    partial = spec.out.with_name(spec.out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir()
    started = time.monotonic()
    try:
        trained = train(spec, stop)
        trained["pipeline"].save_pretrained(partial / "diffusers", safe_serialization=True)
        if trained["adapter"] is not None:
            lora.save_adapter(trained["adapter"], partial / "adapter", spec.base)
        differences = None
        if spec.export:
            say("export", stage="onnx")
            differences = export(trained["pipeline"], partial, spec.base)
            say("export", stage="done", max_abs_difference=differences)
        # The configs record the folders they were read from (the base, the .partial folder); the final
        # folder's name replaces them, as export_sd.py does.
        from t2i_trainer.build.build_test_model import drop_scratch_paths

        drop_scratch_paths(partial, spec.out.name)
        spec_json = {
            name: str(value) if isinstance(value, Path) else value for name, value in vars(spec).items()
        }
        record = {
            "spec": spec_json,
            "history": trained["history"],
            "train_seconds": trained["train_seconds"],
            "seconds": round(time.monotonic() - started, 1),
        }
        (partial / "finetune.json").write_text(json.dumps(record, indent=2) + "\n")
        partial.rename(spec.out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return spec.out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spec", required=True, help="JSON spec file, or - for stdin")
    args = parser.parse_args(argv)
    try:
        text = sys.stdin.read() if args.spec == "-" else Path(args.spec).read_text(encoding="utf-8")
        spec = parse_spec(json.loads(text))
    except (OSError, ValueError, TypeError) as error:  # ValueError: SpecError, JSON and UTF-8 errors
        emit("error", message=f"bad spec: {error}")
        return 2
    if spec.device is None:
        spec.device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    global WORLD
    WORLD = init_world(spec)
    stopped = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
    say(
        "start",
        spec={k: str(v) if isinstance(v, Path) else v for k, v in vars(spec).items()},
        processes=WORLD.size,
    )
    started = time.monotonic()
    try:
        out = run(spec, lambda: bool(stopped))
    except SpecError as error:
        emit("error", message=f"bad spec: {error}")
        return 2
    except Exception as error:  # noqa: BLE001 - the job records any failure as its error
        emit("error", message=f"{type(error).__name__}: {error}")
        return 1
    finally:
        if WORLD.size > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    say("done", out=str(out), seconds=round(time.monotonic() - started, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
