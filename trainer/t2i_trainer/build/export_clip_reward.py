"""Export a CLIP-style reward model (PickScore, or a tiny random CLIP for tests) for the service (issue #4).

PickScore (Kirstain et al., 2023) is a CLIP-H model fine-tuned on human preferences, used as
`score = logit_scale.exp() * cos(image_embeds, text_embeds)`. This script exports any such transformers
CLIPModel folder with Optimum (`zero-shot-image-classification`: inputs `input_ids`, `attention_mask` and
`pixel_values`, outputs `text_embeds` and `image_embeds` among others) and writes the `clip_similarity`
manifest the service reads: the learnt `logit_scale.exp()`, and the image processor's resize, crop and
normalisation from `preprocessor_config.json`.

Nothing is downloaded. For PickScore, fetch the two folders yourself on a machine with internet, e.g.
`huggingface-cli download yuvalkirstain/PickScore_v1 --local-dir PickScore_v1` and
`huggingface-cli download laion/CLIP-ViT-H-14-laion2B-s32B-b79K --local-dir CLIP-H` (PickScore's processor),
then:

    python -m t2i_trainer.build.export_clip_reward --model PickScore_v1 --processor CLIP-H \
        --out models/pickscore

`--tiny-random` instead builds a random CLIP with a 32 px image tower and the real CLIP vocabulary, exports it
to --out and writes golden scores for the Rust parity test (`--goldens`):

    python -m t2i_trainer.build.export_clip_reward --tiny-random --out models/tiny-clip-reward \
        --goldens tests/golden/reward
"""

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from t2i_trainer.build.reward_export import (
    export_parser,
    image_section,
    parse_export_args,
    partial_folder,
    publish,
)
from t2i_trainer.common.stage_cli import emit

TINY_NAME = "tiny-clip-reward"
# The tiny random image tower: 32 px images in 16 patches, two layers of width 32.
TINY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 8,
}


def build_tiny_random(folder: Path, seed: int) -> None:
    """A random CLIPModel and a CLIPProcessor (real CLIP vocabulary, 40 px resize, 32 px crop) in `folder`."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTextConfig,
        CLIPVisionConfig,
    )

    from t2i_trainer.build.build_test_model import build_tokenizer

    torch.manual_seed(seed)
    text = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    vision = CLIPVisionConfig(**TINY_VISION)
    model = CLIPModel(
        CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)
    )
    model.eval().save_pretrained(folder, safe_serialization=True)
    # build_tokenizer writes vocab.json and merges.txt; the processor saves its own copy below.
    tokenizer_folder = folder / "tokenizer-files"
    tokenizer = build_tokenizer(tokenizer_folder)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    processor.save_pretrained(folder)


def clip_manifest(name: str, processor_config: dict, tokenizer_config: dict, logit_scale: float) -> dict:
    image = image_section(processor_config)
    crop = image["center_crop"]
    return {
        "schema_version": 1,
        "name": name,
        "kind": "clip_similarity",
        "model": "model.onnx",
        "inputs": {
            "input_ids": {"dtype": "int64", "shape": ["text_batch", "sequence"]},
            "attention_mask": {"dtype": "int64", "shape": ["text_batch", "sequence"]},
            "pixel_values": {"dtype": "float32", "shape": ["batch", 3, crop["height"], crop["width"]]},
        },
        "output": {"image_embeds": "image_embeds", "text_embeds": "text_embeds"},
        "image": image,
        "text": {
            "tokenizer": ".",
            "max_length": int(tokenizer_config.get("model_max_length", 77)),
            "padding": "max_length",
            "truncation": True,
            "attention_mask": True,
        },
        "score": {
            "formula": "logit_scale_cos",
            "logit_scale": logit_scale,
            "meaning": "logit_scale times the cosine of the image and prompt embeddings; higher is preferred",
        },
    }


def export(model_folder: Path, processor_folder: Path, out: Path, name: str) -> tuple[dict, object, object]:
    from optimum.exporters.onnx import main_export
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(model_folder).eval()
    processor = CLIPProcessor.from_pretrained(processor_folder)
    partial = partial_folder(out, create=False)
    with tempfile.TemporaryDirectory() as staging:
        # Optimum exports the model folder; the processor may come from elsewhere (PickScore uses CLIP-H's).
        staged = Path(staging) / "model"
        model.save_pretrained(staged, safe_serialization=True)
        processor.save_pretrained(staged)
        main_export(
            str(staged), output=partial, task="zero-shot-image-classification", opset=17, device="cpu"
        )
    processor.save_pretrained(partial)
    processor_config = json.loads((partial / "preprocessor_config.json").read_text())
    tokenizer_config = json.loads((partial / "tokenizer_config.json").read_text())
    logit_scale = model.logit_scale.exp().item()
    manifest = clip_manifest(name, processor_config, tokenizer_config, logit_scale)
    publish(partial, out, manifest)
    emit("exported", out=str(out), logit_scale=round(logit_scale, 4))
    return manifest, model, processor


def main(argv: Sequence[str] | None = None) -> int:
    parser, source = export_parser(__doc__)
    source.add_argument("--model", type=Path, help="a transformers CLIPModel folder, e.g. PickScore_v1")
    source.add_argument("--tiny-random", action="store_true", help="build a tiny random CLIP instead (tests)")
    parser.add_argument("--processor", type=Path, help="CLIPProcessor folder (default: --model's folder)")
    args = parse_export_args(parser, argv)
    for flag in ("model", "processor"):
        folder = getattr(args, flag)
        if folder is not None and not (folder / "config.json" if flag == "model" else folder).exists():
            parser.error(f"--{flag} {folder} is not a transformers model folder")
    torch.set_num_threads(2)
    name = args.name
    with tempfile.TemporaryDirectory() as scratch:
        model_folder = args.model
        if args.tiny_random:
            model_folder = Path(scratch) / "tiny-clip"
            build_tiny_random(model_folder, args.seed)
        manifest, model, processor = export(model_folder, args.processor or model_folder, args.out, name)
    if args.goldens:
        from t2i_trainer.goldens.reward_goldens import write_goldens

        @torch.no_grad()
        def score(images, prompts) -> np.ndarray:
            # The reference preprocessing is the manifest's, as for every reward model.
            from t2i_trainer.goldens.reward_goldens import image_processor

            pixels = torch.from_numpy(
                image_processor(manifest)(images=images, return_tensors="np")["pixel_values"]
            )
            text = processor.tokenizer(
                prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
            )
            output = model(input_ids=text.input_ids, attention_mask=text.attention_mask, pixel_values=pixels)
            cosine = torch.nn.functional.cosine_similarity(output.image_embeds, output.text_embeds, dim=-1)
            return (model.logit_scale.exp() * cosine).numpy()

        write_goldens(args.goldens, manifest, score)
    return 0


if __name__ == "__main__":
    sys.exit(main())
