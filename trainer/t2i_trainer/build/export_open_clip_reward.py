"""Export an open_clip reward model (HPSv2, or a tiny random open_clip CLIP for tests) for the service (#27).

HPSv2 (Wu et al., 2023) is open_clip's ViT-H-14 fine-tuned on human preference pairs, used as
`score = cos(image_embeds, text_embeds)` (its `score.py`: normalised features, their dot product). This script
builds the open_clip architecture, loads a local checkpoint into it, and exports one ONNX graph: inputs
`pixel_values` and `input_ids`, outputs `image_embeds` and `text_embeds` (open_clip's `encode_image` and
`encode_text`, normalised). It writes the `clip_similarity` manifest with the `cos` formula, the image
preprocessing from the model's own `preprocess_cfg` (shortest-edge resize, centre crop, mean and std), and a
tokenizer folder that tokenizes as open_clip's `SimpleTokenizer` does: CLIP's BPE, 77 tokens, padded with id 0
(`!`, which stays an ordinary token in prompts, as open_clip treats it).

Nothing is downloaded. For HPSv2, fetch the checkpoint yourself on a machine with internet (e.g.
`huggingface-cli download xswu/HPSv2 HPS_v2_compressed.pt --local-dir hpsv2`), then:

    python -m t2i_trainer.build.export_open_clip_reward --arch ViT-H-14 \
        --checkpoint hpsv2/HPS_v2_compressed.pt --out models/hpsv2

`--tiny-random` instead builds a random open_clip CLIP with a 32 px image tower and the real CLIP vocabulary,
exports it to --out and, with `--goldens`, writes golden scores from open_clip itself (its tokenizer, its
preprocessing transform, its model) for the Rust parity test:

    python -m t2i_trainer.build.export_open_clip_reward --tiny-random --out models/tiny-open-clip-reward \
        --goldens tests/golden/reward
"""

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import open_clip
import torch

from t2i_trainer.build.reward_export import export_parser, parse_export_args, partial_folder, publish
from t2i_trainer.common.clip_vocab import BOS_TOKEN, EOS_TOKEN
from t2i_trainer.common.stage_cli import emit

# open_clip pads with 0, which is `!` in CLIP's vocabulary.
PAD_TOKEN = "!"
# torchvision's InterpolationMode names, by the manifest's filter names (PIL's filters underneath).
FILTERS = {"bicubic": "bicubic", "bilinear": "bilinear", "lanczos": "lanczos", "box": "box"}
# Prompts whose ids the golden records: `!` (open_clip's pad id, an ordinary token in prompts), case, spacing
# and truncation.
TOKEN_PROMPTS = ("wow! a red circle!!", "  Two   BLUE stars ", "a cat" + " and a dog" * 30)
TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 8, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}


class Embeddings(torch.nn.Module):
    """The graph the service runs: both towers, normalised, as open_clip's `forward` computes them."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.model.encode_image(pixel_values, normalize=True)
        text = self.model.encode_text(input_ids, normalize=True)
        return image, text


def build(arch: str | None, checkpoint: Path | None, seed: int) -> torch.nn.Module:
    if arch is None:
        torch.manual_seed(seed)
        model = open_clip.CLIP(**TINY_CONFIG)
    else:
        model = open_clip.create_model(arch, pretrained=None, device="cpu")
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        # Checkpoints saved from DistributedDataParallel prefix every key with `module.`.
        state = {key.removeprefix("module."): value for key, value in state.items()}
        model.load_state_dict(state)
    return model.eval()


def preprocess_cfg(model: torch.nn.Module) -> dict:
    """The model's eval preprocessing (open_clip's `PreprocessCfg`), checked to be what the manifest can
    say."""
    cfg = dict(open_clip.get_model_preprocess_cfg(model))
    size = cfg.get("size", model.visual.image_size)
    size = size if isinstance(size, list | tuple) else (size, size)
    mode = cfg.get("resize_mode", "shortest")
    interpolation = cfg.get("interpolation", "bicubic")
    if mode != "shortest" or interpolation not in FILTERS or cfg.get("mode", "RGB") != "RGB":
        raise SystemExit(
            f"error: the model's preprocessing ({cfg}) is not a shortest-edge resize and centre crop of an "
            "RGB image, which is what the manifest describes"
        )
    return {
        "size": (int(size[0]), int(size[1])),
        "interpolation": interpolation,
        "mean": [float(v) for v in cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)],
        "std": [float(v) for v in cfg.get("std", open_clip.OPENAI_DATASET_STD)],
    }


def write_tokenizer(folder: Path, context_length: int) -> None:
    """CLIP's BPE files and a tokenizer_config that pads like open_clip: id 0, not matched in prompts."""
    from t2i_trainer.build.build_test_model import build_tokenizer

    build_tokenizer(folder)
    special = {
        "49406": {"content": BOS_TOKEN, "special": True, "normalized": True},
        "49407": {"content": EOS_TOKEN, "special": True, "normalized": True},
    }
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "model_max_length": context_length,
        "added_tokens_decoder": special,
    }
    for extra in ("special_tokens_map.json", "added_tokens.json"):
        (folder / extra).unlink(missing_ok=True)
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def manifest_for(name: str, cfg: dict, context_length: int) -> dict:
    height, width = cfg["size"]
    return {
        "schema_version": 1,
        "name": name,
        "kind": "clip_similarity",
        "model": "model.onnx",
        "inputs": {
            "input_ids": {"dtype": "int64", "shape": ["text_batch", context_length]},
            "pixel_values": {"dtype": "float32", "shape": ["batch", 3, height, width]},
        },
        "output": {"image_embeds": "image_embeds", "text_embeds": "text_embeds"},
        "image": {
            "resize": {"shortest_edge": min(height, width), "filter": FILTERS[cfg["interpolation"]]},
            # open_clip's transform crops with torchvision's CenterCrop.
            "center_crop": {"height": height, "width": width, "offset": "round_half_even"},
            "rescale": 1 / 255,
            "mean": cfg["mean"],
            "std": cfg["std"],
            "channel_order": "rgb",
        },
        "text": {"tokenizer": "tokenizer", "max_length": context_length, "attention_mask": False},
        "score": {
            "formula": "cos",
            "meaning": "the cosine of the image and prompt embeddings (HPSv2's score); higher is preferred",
        },
    }


def export(model: torch.nn.Module, out: Path, name: str) -> dict:
    cfg = preprocess_cfg(model)
    context_length = int(model.context_length)
    partial = partial_folder(out)
    height, width = cfg["size"]
    example = (torch.zeros(2, 3, height, width), torch.zeros(1, context_length, dtype=torch.int64))
    torch.onnx.export(
        Embeddings(model),
        example,
        str(partial / "model.onnx"),
        input_names=["pixel_values", "input_ids"],
        output_names=["image_embeds", "text_embeds"],
        dynamic_axes={
            "pixel_values": {0: "batch"},
            "input_ids": {0: "text_batch"},
            "image_embeds": {0: "batch"},
            "text_embeds": {0: "text_batch"},
        },
        opset_version=17,
        dynamo=False,
    )
    write_tokenizer(partial / "tokenizer", context_length)
    manifest = manifest_for(name, cfg, context_length)
    publish(partial, out, manifest)
    emit("exported", out=str(out), context_length=context_length, image_size=list(cfg["size"]))
    return manifest


def reference_scorer(model: torch.nn.Module):
    """open_clip's own preprocessing, tokenizer and model: the scores the service must reproduce."""
    cfg = preprocess_cfg(model)
    transform = open_clip.image_transform(
        cfg["size"],
        is_train=False,
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        resize_mode="shortest",
        interpolation=cfg["interpolation"],
    )
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=int(model.context_length))

    def pixels(images) -> torch.Tensor:
        return torch.stack([transform(image) for image in images])

    @torch.no_grad()
    def score(images, prompts) -> np.ndarray:
        image = model.encode_image(pixels(images), normalize=True)
        text = model.encode_text(tokenizer(prompts), normalize=True)
        return (image * text).sum(dim=-1).numpy()

    return score, lambda image: pixels([image])[0].numpy()


def main(argv: Sequence[str] | None = None) -> int:
    parser, source = export_parser(__doc__)
    source.add_argument("--arch", help="the open_clip architecture, e.g. ViT-H-14 for HPSv2")
    source.add_argument(
        "--tiny-random", action="store_true", help="build a tiny random open_clip CLIP (tests)"
    )
    parser.add_argument("--checkpoint", type=Path, help="the weights for --arch (a state dict, .pt)")
    args = parse_export_args(parser, argv)
    if args.arch is not None:
        if args.arch not in open_clip.list_models():
            parser.error(f"--arch {args.arch} is not an open_clip architecture (open_clip.list_models())")
        if args.checkpoint is None or not args.checkpoint.is_file():
            parser.error("--arch needs --checkpoint, a local .pt file with the model's weights")
    torch.set_num_threads(2)
    model = build(args.arch, args.checkpoint, args.seed)
    manifest = export(model, args.out, args.name)
    if args.goldens:
        from t2i_trainer.goldens.reward_goldens import write_goldens

        score, pixel_values = reference_scorer(model)
        record = write_goldens(
            args.goldens,
            manifest,
            score,
            pixel_values=pixel_values,
            reference="open_clip's tokenizer and image transform",
        )
        # open_clip's own ids for prompts where its padding and cleaning could part from a CLIPTokenizer's.
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=int(model.context_length))
        record["tokens"] = [
            {"prompt": prompt, "input_ids": tokenizer([prompt])[0].tolist()} for prompt in TOKEN_PROMPTS
        ]
        (args.goldens / f"{manifest['name']}.json").write_text(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
