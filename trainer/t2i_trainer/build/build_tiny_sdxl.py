"""Build models/tiny-sdxl: a tiny random-weight Stable Diffusion XL exported with optimum (issue #27).

It has SDXL's real architecture at toy size, so that the service's SDXL path is tested against optimum's
`ORTStableDiffusionXLPipeline` without downloading a 7 GB model:

* two CLIP text encoders and tokenizers (the second with a projection, giving the pooled `text_embeds`), whose
  penultimate hidden states are concatenated into the UNet's `encoder_hidden_states`;
* a UNet with `addition_embed_type = "text_time"`, taking `text_embeds` and `time_ids` (original size, crop
  corner, target size: 6 numbers per row);
* a VAE with SDXL's scaling factor (0.13025) and a factor of 4 here (SDXL's is 8; fewer blocks keep it small);
* `EulerDiscreteScheduler` with SDXL's betas, and `force_zeros_for_empty_prompt`.

The real CLIP vocabulary is used for both tokenizers (SDXL's second tokenizer pads with `!`, id 0).

With `--refiner-output`, it also writes a tiny SDXL refiner (`StableDiffusionXLImg2ImgPipeline`): only the
second text encoder and tokenizer, a UNet whose `time_ids` are 5 numbers per row (original size, crop corner,
aesthetic score: `requires_aesthetics_score`), `force_zeros_for_empty_prompt` off, as
stabilityai/stable-diffusion-xl-refiner-1.0 ships them. It shares the base's second text encoder and VAE
(copied from the base's export, so git stores them once) and refines images only (optimum's image-to-image
task; it has no text-to-image pipeline).

With `--turbo-output`, it also writes the same weights as an SDXL-Turbo export. Turbo is SDXL's architecture
distilled for one to four steps without guidance. Its export differs only in the scheduler
(`EulerAncestralDiscreteScheduler` with `timestep_spacing = "trailing"`, as stabilityai/sdxl-turbo ships it)
and in the request defaults it needs, written to `t2i-align.json` (1 step, guidance 0). The ONNX files are
copies, which git stores once.

Usage:
    python -m t2i_trainer.build.build_tiny_sdxl --out models/tiny-sdxl --turbo-output models/tiny-sdxl-turbo \
        --refiner-output models/tiny-sdxl-refiner
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from t2i_trainer.build.build_test_model import (
    CLIP_CONTEXT_LENGTH,
    build_tokenizer,
    clip_text_config,
    copy_parts,
    drop_scratch_paths,
    export_pipeline,
    model_parser,
)
from t2i_trainer.build.onnx_contract import describe_exports
from t2i_trainer.common.clip_vocab import BOS_TOKEN, EOS_TOKEN

# SDXL base 1.0's scheduler/scheduler_config.json.
SDXL_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}
# stabilityai/sdxl-turbo's scheduler/scheduler_config.json: SDXL's, with Euler ancestral and trailing spacing.
TURBO_SCHEDULER_CONFIG = {
    **SDXL_SCHEDULER_CONFIG,
    "_class_name": "EulerAncestralDiscreteScheduler",
    "timestep_spacing": "trailing",
}
# What Turbo's model card prescribes: one step, no classifier-free guidance.
TURBO_DEFAULTS = {"default_steps": 1, "default_guidance_scale": 0.0}
TEXT_HIDDEN = (32, 32)
TIME_EMBED_DIM = 8


def build_unet(seed: int, cross_attention_dim: int, time_ids: int) -> UNet2DConditionModel:
    """SDXL's UNet at toy size: `time_ids` numbers per row feed the added time embedding (6 for the base,
    5 for the refiner)."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 2),
        norm_num_groups=16,
        cross_attention_dim=cross_attention_dim,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=TEXT_HIDDEN[1] + time_ids * TIME_EMBED_DIM,
    ).eval()


def build_pipeline(scratch: Path, seed: int) -> StableDiffusionXLPipeline:
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModel(clip_text_config(TEXT_HIDDEN[0], 3, "gelu")).eval()
    torch.manual_seed(seed + 2)
    text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(TEXT_HIDDEN[1], 3, "gelu")).eval()
    tokenizer = build_tokenizer(scratch / "bpe")
    tokenizer_2 = CLIPTokenizer(
        vocab_file=str(scratch / "bpe" / "vocab.json"),
        merges_file=str(scratch / "bpe" / "merges.txt"),
        model_max_length=CLIP_CONTEXT_LENGTH,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token="!",
    )
    unet = build_unet(seed + 3, sum(TEXT_HIDDEN), 6)
    torch.manual_seed(seed + 4)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=4,
        sample_size=32,
        scaling_factor=0.13025,
    ).eval()
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG),
        force_zeros_for_empty_prompt=True,
    )


def build_refiner(base: StableDiffusionXLPipeline, seed: int) -> StableDiffusionXLImg2ImgPipeline:
    """The refiner's layout around the base's second text encoder and VAE, with a UNet of its own."""
    return StableDiffusionXLImg2ImgPipeline(
        vae=base.vae,
        text_encoder=None,
        text_encoder_2=base.text_encoder_2,
        tokenizer=None,
        tokenizer_2=base.tokenizer_2,
        unet=build_unet(seed + 5, TEXT_HIDDEN[1], 5),
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )


# The refiner's parts that are the base's, copied from its export.
REFINER_SHARED_PARTS = ("text_encoder_2", "tokenizer_2", "vae_decoder", "vae_encoder")


def write_turbo(base: Path, turbo: Path) -> None:
    """The base export with Turbo's scheduler and request defaults."""
    if turbo.exists():
        shutil.rmtree(turbo)
    shutil.copytree(base, turbo)
    config = dict(TURBO_SCHEDULER_CONFIG)
    config["_diffusers_version"] = json.loads((base / "scheduler" / "scheduler_config.json").read_text())[
        "_diffusers_version"
    ]
    scheduler_json = json.dumps(config, indent=2, sort_keys=True) + "\n"
    (turbo / "scheduler" / "scheduler_config.json").write_text(scheduler_json)
    (turbo / "t2i-align.json").write_text(json.dumps(TURBO_DEFAULTS, indent=2) + "\n")
    index = json.loads((turbo / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", TURBO_SCHEDULER_CONFIG["_class_name"]]
    index["_name_or_path"] = "tiny-sdxl-turbo"
    (turbo / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def main() -> None:
    parser = model_parser(__doc__, "models/tiny-sdxl")
    parser.add_argument(
        "--turbo-output",
        type=Path,
        default=None,
        help="Also write the SDXL-Turbo variant here (default: none).",
    )
    parser.add_argument(
        "--refiner-output",
        type=Path,
        default=None,
        help="Also write a tiny SDXL refiner here (default: none).",
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as scratch:
        pipeline = build_pipeline(Path(scratch), args.seed)
        export_pipeline(pipeline, Path(scratch) / "base", args.output)
        if args.refiner_output is not None:
            refiner = build_refiner(pipeline, args.seed)
            export_pipeline(refiner, Path(scratch) / "refiner", args.refiner_output, task="image-to-image")
    drop_scratch_paths(args.output)
    if args.refiner_output is not None:
        copy_parts(args.output, args.refiner_output, REFINER_SHARED_PARTS)
        drop_scratch_paths(args.refiner_output)
        parts = ("text_encoder_2", "unet", "vae_decoder", "vae_encoder")
        models = describe_exports(args.refiner_output, parts)
        print(json.dumps({"event": "exported", "folder": str(args.refiner_output), "models": models}))
    parts = ("text_encoder", "text_encoder_2", "unet", "vae_decoder", "vae_encoder")
    models = describe_exports(args.output, parts)
    print(json.dumps({"event": "exported", "folder": str(args.output), "models": models}))
    if args.turbo_output is not None:
        write_turbo(args.output, args.turbo_output)
        print(json.dumps({"event": "exported", "folder": str(args.turbo_output), "variant": "turbo"}))


if __name__ == "__main__":
    main()
