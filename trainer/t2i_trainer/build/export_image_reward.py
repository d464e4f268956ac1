"""Export ImageReward (or a tiny random one for tests) for the service (issue #27).

ImageReward (Xu et al., 2023; THUDM/ImageReward) is BLIP: a ViT-L/16 image encoder, and a BERT text encoder
whose every layer cross-attends to the image's tokens. The text encoder reads the prompt (BERT's WordPiece,
padded to 35 tokens), its first token's final state goes through an MLP (768 -> 1024 -> 128 -> 64 -> 16 -> 1),
and the raw output is normalised: (raw - 0.16717362830052426) / 1.0333394966054072.

This script builds the two encoders as transformers' BLIP modules (BlipVisionModel, and BlipTextModel without
a pooling layer: ports of BLIP's own vit.py and med.py, with the same parameter names for the text side),
puts them and the MLP in one ONNX graph (`pixel_values`, `input_ids`, `attention_mask` in; the raw `reward`
out), and writes the `reward_head` manifest. The manifest states the rest: ImageReward's preprocessing
(torchvision's bicubic resize of the shortest edge to 224, centre crop, CLIP's mean and std), the tokenizer
(BERT's, with BLIP's added `[DEC]` and `[ENC]` tokens, as `tokenizer.json`) and maximum length 35, and the
normalisation as the score's output transform (`score.normalize`), which the service applies.

Nothing is downloaded. Fetch the two parts yourself on a machine with internet: the checkpoint
`ImageReward.pt` (huggingface.co/THUDM/ImageReward) and BERT's tokenizer
(`huggingface-cli download bert-base-uncased vocab.txt --local-dir bert-base-uncased`), then:

    python -m t2i_trainer.build.export_image_reward --checkpoint ImageReward.pt --bert bert-base-uncased \
        --out models/image-reward

The checkpoint's keys (`blip.visual_encoder.*` in BLIP's ViT naming, `blip.text_encoder.*`, `mlp.layers.*`)
are renamed to the modules' and loaded strictly, so a checkpoint of another shape fails here, by key.

`--tiny-random` instead builds a random BLIP (32 px, two layers each side, a small WordPiece vocabulary),
saves it as an ImageReward-layout checkpoint, and exports it through the same conversion; with `--goldens` it
writes golden scores for the Rust parity test, computed as ImageReward's `score` does it (torchvision
transforms, the slow BertTokenizer, the PyTorch modules, the normalisation):

    python -m t2i_trainer.build.export_image_reward --tiny-random --out models/tiny-image-reward \
        --goldens tests/golden/reward
"""

import json
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from t2i_trainer.build.export_clip_reward import TINY_VISION as CLIP_TINY_VISION
from t2i_trainer.build.reward_export import (
    ScoreMlp,
    export_parser,
    parse_export_args,
    partial_folder,
    publish,
)
from t2i_trainer.common.stage_cli import emit

# ImageReward's normalisation of the MLP's output (ImageReward.py: self.mean, self.std).
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
MAX_LENGTH = 35
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# BLIP's ViT-L/16 (vit='large': timm's ViT with LayerNorm eps 1e-6) and med_config's BERT-base with
# cross-attention to the 1024-wide image tokens; the vocabulary is BERT's 30522 plus [DEC] and [ENC].
VISION = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 16,
    "layer_norm_eps": 1e-6,
}
TEXT = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 512,
    "encoder_hidden_size": 1024,
    "layer_norm_eps": 1e-12,
}
# export_clip_reward's tiny tower (32 px, 16 patches, two layers of width 32), with BLIP's LayerNorm eps.
TINY_VISION = {
    **CLIP_TINY_VISION,
    "layer_norm_eps": 1e-6,
    # BlipVisionConfig's default (1e-10) leaves a random tower's image tokens all alike.
    "initializer_range": 0.1,
}
TINY_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 64,
    "encoder_hidden_size": 32,
    "layer_norm_eps": 1e-12,
    "initializer_range": 0.1,
}
# The tiny vocabulary: BERT's special tokens, the shapes world's words, and single characters (whole and as
# word pieces) so that any lowercase ASCII word tokenizes without [UNK].
TINY_WORDS = (
    "a an on of the and with background two three four one red green blue yellow purple orange pink white "
    "black gray circle circles square squares star stars triangle triangles"
).split()

TOKEN_PROMPTS = (
    "A Red CIRCLE, on white!",
    "  three   zebra-striped\tsquares [ENC] ",
    "one blue star " * 12,
)


class ImageRewardGraph(torch.nn.Module):
    """What the service runs: the image's tokens, the text encoder cross-attending to them, the first
    token's state through the MLP. Returns the raw reward, `[batch]`; the manifest's `score.normalize` does
    the rest."""

    def __init__(self, vision: torch.nn.Module, text: torch.nn.Module, mlp: ScoreMlp):
        super().__init__()
        self.vision = vision
        self.text = text
        self.mlp = mlp

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        image_embeds = self.vision(pixel_values=pixel_values).last_hidden_state
        image_mask = torch.ones_like(image_embeds[..., 0], dtype=torch.long)
        text = self.text(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
            return_dict=True,
        )
        return self.mlp(text.last_hidden_state[:, 0, :]).squeeze(-1)


def build_modules(vision_config: dict, text_config: dict, vocab_size: int) -> ImageRewardGraph:
    from transformers import BlipTextConfig, BlipVisionConfig, BlipVisionModel
    from transformers.models.blip.modeling_blip_text import BlipTextModel

    vision = BlipVisionModel(BlipVisionConfig(**vision_config))
    text = BlipTextModel(
        BlipTextConfig(vocab_size=vocab_size, pad_token_id=0, **text_config), add_pooling_layer=False
    )
    return ImageRewardGraph(vision, text, ScoreMlp(text_config["hidden_size"])).eval()


# BLIP's ViT names (after `blip.visual_encoder.`) -> BlipVisionModel's; `{}` is a block's index.
VISION_KEYS = {
    "cls_token": "embeddings.class_embedding",
    "pos_embed": "embeddings.position_embedding",
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
    "norm.weight": "post_layernorm.weight",
    "norm.bias": "post_layernorm.bias",
}
VISION_BLOCK_KEYS = {
    "norm1": "layer_norm1",
    "norm2": "layer_norm2",
    "attn.qkv": "self_attn.qkv",
    "attn.proj": "self_attn.projection",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def vision_key(key: str) -> str:
    if key in VISION_KEYS:
        return VISION_KEYS[key]
    block = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", key)
    if block is None or block.group(2) not in VISION_BLOCK_KEYS:
        raise SystemExit(f"error: the checkpoint's visual encoder has an unknown key: {key!r}")
    index, part, kind = block.groups()
    return f"encoder.layers.{index}.{VISION_BLOCK_KEYS[part]}.{kind}"


def convert_checkpoint(state: dict) -> dict:
    """ImageReward's state dict -> ImageRewardGraph's. The text encoder's names are med.py's, which
    BlipTextModel keeps; BLIP's unused heads (vision_proj, text_proj, ...) and position-id buffers are
    dropped."""
    converted = {}
    for key, value in state.items():
        if key.startswith("blip.visual_encoder."):
            converted["vision." + vision_key(key.removeprefix("blip.visual_encoder."))] = value
        elif key.startswith("blip.text_encoder."):
            rest = key.removeprefix("blip.text_encoder.")
            if not rest.endswith("position_ids"):
                converted["text." + rest] = value
        elif key.startswith("mlp."):
            converted[key] = value
    return converted


def to_checkpoint(graph: ImageRewardGraph) -> dict:
    """The inverse, for the tiny model: its weights under ImageReward's names."""
    inverse_fixed = {value: key for key, value in VISION_KEYS.items()}
    inverse_block = {value: key for key, value in VISION_BLOCK_KEYS.items()}
    state = {}
    for key, value in graph.vision.state_dict().items():
        if key in inverse_fixed:
            name = inverse_fixed[key]
        else:
            index, part, kind = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key).groups()
            name = f"blocks.{index}.{inverse_block[part]}.{kind}"
        state["blip.visual_encoder." + name] = value
    for key, value in graph.text.state_dict().items():
        state["blip.text_encoder." + key] = value
    for key, value in graph.mlp.state_dict().items():
        state["mlp." + key] = value
    return state


def blip_tokenizer(vocab_folder: Path, fast: bool):
    """BERT's tokenizer with BLIP's additions (init_tokenizer in BLIP: bos [DEC], additional [ENC])."""
    from transformers import BertTokenizer, BertTokenizerFast

    cls = BertTokenizerFast if fast else BertTokenizer
    tokenizer = cls(vocab_file=str(vocab_folder / "vocab.txt"), do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tokenizer.model_max_length = MAX_LENGTH
    return tokenizer


def build_tiny_random(folder: Path, seed: int) -> Path:
    """A tiny vocabulary in `folder`, and a random tiny BLIP saved as an ImageReward checkpoint; returns the
    checkpoint's path."""
    letters = [chr(code) for code in range(ord("a"), ord("z") + 1)]
    pieces = ["##" + letter for letter in letters]
    words = [letter for letter in letters if letter not in TINY_WORDS]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_WORDS, *words, *pieces]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(seed)
    graph = build_modules(TINY_VISION, TINY_TEXT, len(blip_tokenizer(folder, fast=False)))
    # Random heads give rewards that barely differ; a larger last layer spreads them so that the parity test
    # tells the cases apart.
    with torch.no_grad():
        graph.mlp.layers[-1].weight.mul_(200.0)
    path = folder / "ImageReward.pt"
    torch.save(to_checkpoint(graph), path)
    return path


def load(checkpoint: Path, bert: Path, tiny: bool) -> tuple[ImageRewardGraph, object]:
    tokenizer = blip_tokenizer(bert, fast=False)
    graph = build_modules(TINY_VISION if tiny else VISION, TINY_TEXT if tiny else TEXT, len(tokenizer))
    state = convert_checkpoint(torch.load(checkpoint, map_location="cpu", weights_only=True))
    missing, unexpected = graph.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SystemExit(
            f"error: --checkpoint {checkpoint} does not fit ImageReward's shape: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return graph.eval(), tokenizer


def manifest_for(name: str, side: int) -> dict:
    return {
        "schema_version": 1,
        "name": name,
        "kind": "reward_head",
        "model": "model.onnx",
        "inputs": {
            "pixel_values": {"dtype": "float32", "shape": ["batch", 3, side, side]},
            "input_ids": {"dtype": "int64", "shape": ["batch", MAX_LENGTH]},
            "attention_mask": {"dtype": "int64", "shape": ["batch", MAX_LENGTH]},
        },
        "output": {"name": "reward"},
        # ImageReward's _transform: Resize(side, BICUBIC) on the PIL image, CenterCrop(side), ToTensor,
        # Normalize with CLIP's mean and std.
        "image": {
            "resize": {"shortest_edge": side, "filter": "bicubic"},
            "center_crop": {"height": side, "width": side, "offset": "round_half_even"},
            "rescale": 1 / 255,
            "mean": CLIP_MEAN,
            "std": CLIP_STD,
            "channel_order": "rgb",
        },
        "text": {"tokenizer": "tokenizer", "max_length": MAX_LENGTH, "attention_mask": True},
        "score": {
            "meaning": "ImageReward's human-preference reward, normalised: about -2 (poor) to 2 (preferred)",
            "normalize": {"mean": REWARD_MEAN, "std": REWARD_STD},
        },
    }


def export(graph: ImageRewardGraph, bert: Path, out: Path, name: str, side: int) -> dict:
    manifest = manifest_for(name, side)
    partial = partial_folder(out)
    blip_tokenizer(bert, fast=True).save_pretrained(partial / "tokenizer")
    ids = torch.zeros(2, MAX_LENGTH, dtype=torch.long)
    torch.onnx.export(
        graph,
        (torch.zeros(2, 3, side, side), ids, torch.ones_like(ids)),
        str(partial / "model.onnx"),
        input_names=["pixel_values", "input_ids", "attention_mask"],
        output_names=["reward"],
        dynamic_axes={
            "pixel_values": {0: "batch"},
            "input_ids": {0: "batch"},
            "attention_mask": {0: "batch"},
            "reward": {0: "batch"},
        },
        opset_version=17,
        dynamo=False,
    )
    publish(partial, out, manifest)
    emit("exported", out=str(out), side=side)
    return manifest


def reference_transform(side: int):
    """ImageReward's own preprocessing (ImageReward.py's _transform), with torchvision."""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    return Compose(
        [
            Resize(side, interpolation=InterpolationMode.BICUBIC),
            CenterCrop(side),
            lambda image: image.convert("RGB"),
            ToTensor(),
            Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser, source = export_parser(__doc__)
    source.add_argument("--checkpoint", type=Path, help="ImageReward's state dict (ImageReward.pt)")
    source.add_argument("--tiny-random", action="store_true", help="build a tiny random ImageReward (tests)")
    parser.add_argument("--bert", type=Path, help="a folder with BERT's vocab.txt (bert-base-uncased)")
    args = parse_export_args(parser, argv)
    if args.checkpoint is not None:
        if not args.checkpoint.is_file():
            parser.error(f"--checkpoint {args.checkpoint} is not a file")
        if args.bert is None or not (args.bert / "vocab.txt").is_file():
            parser.error("--checkpoint needs --bert, a folder with BERT's vocab.txt")
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint, bert = args.checkpoint, args.bert
        if args.tiny_random:
            bert = Path(scratch)
            checkpoint = build_tiny_random(bert, args.seed)
        graph, tokenizer = load(checkpoint, bert, args.tiny_random)
        side = graph.vision.config.image_size
        manifest = export(graph, bert, args.out, args.name, side)
    if args.goldens:
        from t2i_trainer.goldens.reward_goldens import write_goldens

        transform = reference_transform(side)

        @torch.no_grad()
        def score(images, prompts) -> np.ndarray:
            # ImageReward.score, batched: the slow tokenizer padded to 35, the modules, the normalisation.
            text = tokenizer(
                prompts, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
            )
            pixels = torch.stack([transform(image) for image in images])
            raw = graph(pixels, text.input_ids, text.attention_mask)
            return ((raw - REWARD_MEAN) / REWARD_STD).numpy()

        record = write_goldens(
            args.goldens,
            manifest,
            score,
            pixel_values=lambda image: transform(image).numpy(),
            reference="ImageReward's torchvision transform and BERT tokenizer",
        )
        # The slow BertTokenizer's ids where BERT's cleaning, punctuation splitting, word pieces and
        # truncation to 35 tokens come in.
        record["tokens"] = []
        for prompt in TOKEN_PROMPTS:
            text = tokenizer(prompt, padding="max_length", truncation=True, max_length=MAX_LENGTH)
            record["tokens"].append(
                {"prompt": prompt, "input_ids": text.input_ids, "attention_mask": text.attention_mask}
            )
        # An image 3 pixels wider than the crop: torchvision's CenterCrop starts at round(1.5) = 2, where
        # transformers' floor would start at 1.
        from PIL import Image

        ramp = np.fromfunction(lambda y, x, c: (x * 7 + y * 3 + c * 50) % 256, (side, side + 3, 3))
        crop_image = Image.fromarray(ramp.astype(np.uint8))
        crop_path = args.goldens / manifest["name"] / "crop.png"
        crop_image.save(crop_path)
        values = transform(Image.open(crop_path).convert("RGB")).numpy()
        record["crop"] = {
            "image": f"{manifest['name']}/crop.png",
            "shape": list(values.shape),
            "values": [float(value) for value in values.reshape(-1)],
        }
        (args.goldens / f"{manifest['name']}.json").write_text(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
