"""Build a tiny random-weight Stable Diffusion pipeline and export it to ONNX.

The pipeline has the real Stable Diffusion 1.5 architecture (CLIP text encoder, conditional UNet, KL
autoencoder with a VAE factor of 8, PNDM scheduler) and the real CLIP BPE vocabulary, but every network is a
few layers wide and its weights are random. It exists so that the Rust service can be tested end to end
without downloading a real model.

Two folders come out:

* `models/tiny-sd`: exactly what `optimum` exports (timestep is a float32 scalar, input_ids are int64), plus
  the diffusers weights (safetensors) in `models/tiny-sd/diffusers/`, the layout `export_sd.py` gives
  `models/shapes-sd`, so that a fine-tune job (jobs/finetune.py) can start from the tiny model.
* `models/tiny-sd-legacy`: the same graphs after surgery to the older exporter contract (timestep is int64 of
  shape [batch], input_ids are int32), so the service can be tested against both. It has no `diffusers/`.

Usage:
    python -m t2i_trainer.build.build_test_model --seed 0 --output models/tiny-sd \
        --legacy-output models/tiny-sd-legacy
"""

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

# Nothing here needs the model hub; huggingface_hub reads this variable when it is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import open_clip
import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from optimum.exporters.onnx import main_export
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from t2i_trainer.build.onnx_contract import build_legacy_copy, check_legacy_matches, describe_exports
from t2i_trainer.common.clip_vocab import BOS_TOKEN, CLIP_VOCAB_SIZE, EOS_TOKEN, write_clip_vocab_files

CLIP_CONTEXT_LENGTH = 77

# Stable Diffusion 1.5's scheduler/scheduler_config.json.
SD15_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}


def model_parser(description: str, output: str) -> argparse.ArgumentParser:
    """The flags every tiny-model builder takes: the weights' seed and the export's folder."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed for every random weight (default: 0).")
    parser.add_argument(
        "--output",
        "--out",
        type=Path,
        default=Path(output),
        help="Folder for the optimum export (default: %(default)s).",
    )
    return parser


def parse_args() -> argparse.Namespace:
    parser = model_parser(__doc__, "models/tiny-sd")
    parser.add_argument(
        "--legacy-output",
        type=Path,
        default=Path("models/tiny-sd-legacy"),
        help="Folder for the legacy-contract copy, with an int64 [batch] timestep and int32 input_ids "
        "(default: %(default)s).",
    )
    parser.add_argument(
        "--text-hidden-size",
        type=int,
        default=32,
        help="Width of the CLIP text encoder; also the UNet's cross_attention_dim (default: 32).",
    )
    parser.add_argument(
        "--opset",
        type=int,
        default=None,
        help="ONNX opset for the export (default: optimum's choice for each model).",
    )
    return parser.parse_args()


# ----------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------


def build_tokenizer(folder: Path) -> CLIPTokenizer:
    """The slow CLIPTokenizer, as Stable Diffusion 1.5's model_index.json names it."""
    vocab_path, merges_path = write_clip_vocab_files(folder, Path(open_clip.tokenizer.default_bpe()))
    return CLIPTokenizer(
        vocab_file=str(vocab_path),
        merges_file=str(merges_path),
        model_max_length=CLIP_CONTEXT_LENGTH,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
    )


# ----------------------------------------------------------------------------------------------------
# Networks
# ----------------------------------------------------------------------------------------------------


def clip_text_config(hidden_size: int, layers: int = 2, activation: str = "quick_gelu") -> CLIPTextConfig:
    """A tiny CLIP text encoder's config with the real vocabulary and context length (SD 1.5's encoder uses
    quick_gelu; SDXL's use gelu)."""
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        max_position_embeddings=CLIP_CONTEXT_LENGTH,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        hidden_act=activation,
        projection_dim=hidden_size,
        layer_norm_eps=1e-5,
        # SD 1.5's legacy ids. With eos_token_id == 2, CLIP pools at argmax(input_ids): the first EOS.
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )


def build_text_encoder(hidden_size: int, seed: int) -> CLIPTextModel:
    torch.manual_seed(seed)
    return CLIPTextModel(clip_text_config(hidden_size)).eval()


def build_unet(
    cross_attention_dim: int,
    seed: int,
    sample_size: int | list[int] = 8,
    time_cond_proj_dim: int | None = None,
) -> UNet2DConditionModel:
    """`time_cond_proj_dim`: a latent consistency model's guidance-embedding width (build_tiny_lcm.py)."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        attention_head_dim=4,
        norm_num_groups=16,
        cross_attention_dim=cross_attention_dim,
        time_cond_proj_dim=time_cond_proj_dim,
    ).eval()


def build_vae(seed: int) -> AutoencoderKL:
    # Four blocks, so three 2x downsamplings: the VAE factor of 8 that SD uses.
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=4,
        sample_size=64,
        scaling_factor=0.18215,
    ).eval()


def build_pipeline(
    tokenizer_dir: Path, text_hidden_size: int, seed: int, sample_size: int | list[int] = 8
) -> StableDiffusionPipeline:
    """`sample_size` is the UNet's latent size: an int, or [height, width] for a non-square model."""
    # Each network gets its own seed so that changing one leaves the others' weights alone.
    return StableDiffusionPipeline(
        vae=build_vae(seed + 3),
        text_encoder=build_text_encoder(text_hidden_size, seed + 1),
        tokenizer=build_tokenizer(tokenizer_dir),
        unet=build_unet(text_hidden_size, seed + 2, sample_size),
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


# ----------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------


def drop_scratch_paths(root: Path, name: str | None = None) -> None:
    """The export records the temporary folder it read from; a fixed name (default: the folder's) keeps
    re-runs byte-identical."""
    for config_path in sorted(root.rglob("*.json")):
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if isinstance(config, dict) and "_name_or_path" in config:
            config["_name_or_path"] = name or root.name
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def copy_parts(source: Path, target: Path, parts: tuple[str, ...]) -> None:
    """Replaces `target`'s export folders `parts` with `source`'s, byte for byte (so git stores them once)."""
    for part in parts:
        shutil.rmtree(target / part)
        shutil.copytree(source / part, target / part)


def export_pipeline(
    pipeline: StableDiffusionPipeline,
    scratch: Path,
    output: Path,
    opset: int | None = None,
    task: str = "text-to-image",
):
    """Exports `pipeline` with optimum into `output` (replacing it), through a save in `scratch`. `task` is
    optimum's: "image-to-image" for a pipeline that only refines images (SDXL's refiner)."""
    pipeline.save_pretrained(scratch / "pipeline")
    if output.exists():
        shutil.rmtree(output)
    main_export(
        str(scratch / "pipeline"),
        output=output,
        task=task,
        library_name="diffusers",
        opset=opset,
        device="cpu",
        local_files_only=True,
    )


def main() -> None:
    args = parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        pipeline = build_pipeline(scratch / "bpe", args.text_hidden_size, args.seed)
        export_pipeline(pipeline, scratch, args.output, args.opset)
        # The weights the export came from, for fine-tune jobs (as export_sd.py saves them for shapes-sd).
        pipeline.save_pretrained(args.output / "diffusers", safe_serialization=True)
    drop_scratch_paths(args.output)
    build_legacy_copy(args.output, args.legacy_output)
    check_legacy_matches(args.output, args.legacy_output, args.seed)
    for root in (args.output, args.legacy_output):
        print(json.dumps({"event": "exported", "folder": str(root), "models": describe_exports(root)}))


if __name__ == "__main__":
    main()
