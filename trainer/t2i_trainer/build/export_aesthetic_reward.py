"""Export the LAION aesthetic predictor (or a tiny random one for tests) for the service (issue #27).

The predictor (christophschuhmann/improved-aesthetic-predictor) scores an image alone, from 1 to 10: CLIP
ViT-L/14's image embedding, scaled to unit length, through an MLP (768 -> 1024 -> 128 -> 64 -> 16 -> 1, with
dropout between the first layers, which does nothing at inference). This script puts the CLIP image tower, the
normalisation and the MLP in one ONNX graph (`pixel_values` in, `score` out) and writes the `image_head`
manifest, with the image preprocessing from the CLIP folder's `preprocessor_config.json`. The prompt plays no
part in the score.

Nothing is downloaded. Fetch the two parts yourself on a machine with internet, e.g.
`huggingface-cli download openai/clip-vit-large-patch14 --local-dir clip-l14` and the head,
`sac+logos+ava1-l14-linearMSE.pth`, from the predictor's repository, then:

    python -m t2i_trainer.build.export_aesthetic_reward --clip clip-l14 \
        --head sac+logos+ava1-l14-linearMSE.pth --out models/laion-aesthetic

`--tiny-random` instead builds a random CLIP image tower (32 px) and a random MLP of the same shape from its
embedding, exports them to --out and, with `--goldens`, writes golden scores for the Rust parity test:

    python -m t2i_trainer.build.export_aesthetic_reward --tiny-random --out models/tiny-aesthetic-reward \
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
    ScoreMlp,
    export_parser,
    image_section,
    parse_export_args,
    partial_folder,
    publish,
)
from t2i_trainer.common.stage_cli import emit


class AestheticScore(torch.nn.Module):
    """The graph the service runs: CLIP's image embedding, scaled to unit length, through the MLP."""

    def __init__(self, vision: torch.nn.Module, head: ScoreMlp):
        super().__init__()
        self.vision = vision
        self.head = head

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        embedding = self.vision(pixel_values=pixel_values).image_embeds
        embedding = embedding / embedding.norm(p=2, dim=-1, keepdim=True)
        return self.head(embedding).squeeze(-1)


def build_tiny_random(folder: Path, seed: int) -> Path:
    """A random CLIP image tower with its processor in `folder`, and a random head; returns the head's
    path."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from t2i_trainer.build.export_clip_reward import TINY_VISION

    torch.manual_seed(seed)
    config = CLIPVisionConfig(**TINY_VISION, projection_dim=16)
    CLIPVisionModelWithProjection(config).eval().save_pretrained(folder, safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder
    )
    head = ScoreMlp(config.projection_dim)
    # Random weights give scores near zero that barely differ between images; a larger last layer spreads them
    # (so that the parity test tells images apart) and a bias like the trained head's centres them near 5.
    with torch.no_grad():
        head.layers[-1].weight.mul_(200.0)
        head.layers[-1].bias.fill_(5.0)
    path = folder / "head.pth"
    torch.save(head.state_dict(), path)
    return path


def load(clip: Path, head_path: Path) -> AestheticScore:
    from transformers import CLIPVisionModelWithProjection

    vision = CLIPVisionModelWithProjection.from_pretrained(clip).eval()
    head = ScoreMlp(vision.config.projection_dim)
    head.load_state_dict(torch.load(head_path, map_location="cpu", weights_only=True))
    return AestheticScore(vision, head.eval()).eval()


def manifest_for(name: str, processor_config: dict) -> dict:
    image = image_section(processor_config)
    crop = image["center_crop"]
    return {
        "schema_version": 1,
        "name": name,
        "kind": "image_head",
        "model": "model.onnx",
        "inputs": {
            "pixel_values": {"dtype": "float32", "shape": ["batch", 3, crop["height"], crop["width"]]}
        },
        "output": {"name": "score"},
        "image": image,
        "score": {"meaning": "the LAION aesthetic predictor's rating of the image alone, about 1 to 10"},
    }


def export(model: AestheticScore, clip: Path, out: Path, name: str) -> dict:
    processor_config = json.loads((clip / "preprocessor_config.json").read_text())
    manifest = manifest_for(name, processor_config)
    crop = manifest["image"]["center_crop"]
    partial = partial_folder(out)
    torch.onnx.export(
        model,
        (torch.zeros(2, 3, crop["height"], crop["width"]),),
        str(partial / "model.onnx"),
        input_names=["pixel_values"],
        output_names=["score"],
        dynamic_axes={"pixel_values": {0: "batch"}, "score": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    publish(partial, out, manifest)
    emit("exported", out=str(out), crop=[crop["height"], crop["width"]])
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser, source = export_parser(__doc__)
    source.add_argument(
        "--clip", type=Path, help="a transformers CLIP folder (openai/clip-vit-large-patch14)"
    )
    source.add_argument("--tiny-random", action="store_true", help="build a tiny random predictor (tests)")
    parser.add_argument("--head", type=Path, help="the MLP's state dict (sac+logos+ava1-l14-linearMSE.pth)")
    args = parse_export_args(parser, argv)
    if args.clip is not None:
        if (
            not (args.clip / "config.json").is_file()
            or not (args.clip / "preprocessor_config.json").is_file()
        ):
            parser.error(
                f"--clip {args.clip} is not a transformers CLIP folder with its preprocessor_config.json"
            )
        if args.head is None or not args.head.is_file():
            parser.error("--clip needs --head, the predictor's .pth state dict")
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as scratch:
        clip, head = args.clip, args.head
        if args.tiny_random:
            clip = Path(scratch) / "tiny-clip-vision"
            head = build_tiny_random(clip, args.seed)
        model = load(clip, head)
        manifest = export(model, clip, args.out, args.name)
    if args.goldens:
        from t2i_trainer.goldens.reward_goldens import image_processor, write_goldens

        processor = image_processor(manifest)

        @torch.no_grad()
        def score(images, prompts) -> np.ndarray:
            pixels = torch.from_numpy(processor(images=images, return_tensors="np")["pixel_values"])
            return model(pixels).numpy()

        write_goldens(args.goldens, manifest, score)
    return 0


if __name__ == "__main__":
    sys.exit(main())
