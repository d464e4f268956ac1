"""Golden scores of a reward model folder, for the Rust parity test (issue #4).

The reference is Python's own stack: transformers' CLIPImageProcessor, configured from the folder's
manifest (PIL resize of the shortest edge, centre crop, rescale, normalise), and the PyTorch model. The
Rust service must give the same scores within 1e-4 for the same image files, through its own preprocessing
and ONNX Runtime.

The test images are shapes-world renders at several sizes, so that the resize and the crop really run:
64x64 (no resize for shapes-reward), 96x80 and 50x70 (downscale and upscale with a crop), and a grey one.

Files written under --out:
- `<name>/<index>.png`: the images, exactly as scored.
- `<name>.json`: {"model", "kind", "cases": [{"image", "prompt", "score"}], "pixel_values": {"image", "shape",
  "values"}} with the preprocessed tensor of one resized image, so a failure says whether it is preprocessing.

Usage (shapes-reward; export_clip_reward.py writes the CLIP variant's goldens itself):
    python -m t2i_trainer.goldens.reward_goldens --model models/shapes-reward --out tests/golden/reward
"""

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from PIL import Image

from t2i_trainer.build.shapes_world import parse_prompt, render, sample_rng
from t2i_trainer.common.stage_cli import emit

# PIL's resampling filters, by the names the manifest uses.
PIL_FILTERS = {
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
FILTER_NAMES = {int(value): name for name, value in PIL_FILTERS.items()}

PROMPTS = ("two blue stars on a white background", "a red circle", "three green triangles")
# (prompt used to draw, width, height): sizes that exercise no resize, a downscale and an upscale with crops.
IMAGES = (
    ("two blue stars on a white background", 64, 64),
    ("a red circle", 64, 64),
    ("three green triangles", 96, 80),
    ("a red circle", 50, 70),
)


def image_processor(manifest: dict):
    """transformers' CLIPImageProcessor doing what the manifest's `image` section says."""
    from transformers import CLIPImageProcessor

    image = manifest["image"]
    return CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": image["resize"]["shortest_edge"]},
        resample=PIL_FILTERS[image["resize"]["filter"]],
        do_center_crop=True,
        crop_size={"height": image["center_crop"]["height"], "width": image["center_crop"]["width"]},
        do_rescale=True,
        rescale_factor=image["rescale"],
        do_normalize=True,
        image_mean=image["mean"],
        image_std=image["std"],
        do_convert_rgb=True,
    )


def golden_images() -> list[Image.Image]:
    images = []
    for index, (text, width, height) in enumerate(IMAGES):
        drawn = render(parse_prompt(text), sample_rng(4, index), size=max(width, height))
        images.append(drawn.crop((0, 0, width, height)) if (width, height) != drawn.size else drawn)
    images.append(Image.new("RGB", (40, 40), (128, 128, 128)))
    return images


def write_goldens(
    out: Path,
    manifest: dict,
    score: Callable[[list[Image.Image], list[str]], np.ndarray],
    pixel_values: Callable[[Image.Image], np.ndarray] | None = None,
    reference: str = "transformers CLIPImageProcessor from the manifest",
) -> dict:
    """Scores every golden image against every prompt with `score(images, prompts)` and writes the files.
    `pixel_values` is the reference preprocessing of one image (default: transformers' CLIPImageProcessor
    configured from the manifest), and `reference` names it in the record."""
    name = manifest["name"]
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    images = golden_images()
    paths = []
    for index, image in enumerate(images):
        path = folder / f"{index}.png"
        image.save(path)
        # Score what the Rust test will read: the file, not the in-memory image.
        paths.append(path)
    reloaded = [Image.open(path).convert("RGB") for path in paths]
    cases = []
    for prompt in PROMPTS:
        scores = score(reloaded, [prompt] * len(reloaded))
        for path, value in zip(paths, scores, strict=True):
            cases.append({"image": f"{name}/{path.name}", "prompt": prompt, "score": float(value)})
    if pixel_values is None:
        processor = image_processor(manifest)

        def pixel_values(image: Image.Image) -> np.ndarray:
            return processor(images=[image], return_tensors="np")["pixel_values"][0]

    preprocessed = pixel_values(reloaded[2])
    record = {
        "model": name,
        "kind": manifest["kind"],
        "reference": f"{reference}, then the PyTorch model",
        "cases": cases,
        "pixel_values": {
            "image": f"{name}/{paths[2].name}",
            "shape": list(preprocessed.shape),
            "values": [float(v) for v in preprocessed.astype(np.float32).ravel()],
        },
    }
    (out / f"{name}.json").write_text(json.dumps(record) + "\n")
    emit("goldens", model=name, cases=len(cases), out=str(out / f"{name}.json"))
    return record


def reward_head_scorer(folder: Path) -> tuple[dict, Callable]:
    import torch
    from transformers import CLIPTokenizer

    from t2i_trainer.build.train_reward import load_model, tokenize

    manifest = json.loads((folder / "manifest.json").read_text())
    model = load_model(folder)
    tokenizer = CLIPTokenizer.from_pretrained(folder / manifest["text"]["tokenizer"])
    processor = image_processor(manifest)

    @torch.no_grad()
    def score(images: list[Image.Image], prompts: list[str]) -> np.ndarray:
        pixels = torch.from_numpy(processor(images=images, return_tensors="np")["pixel_values"])
        return model(pixels, tokenize(tokenizer, prompts)).numpy()

    return manifest, score


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, required=True, help="a reward_head model folder (manifest.json)"
    )
    parser.add_argument("--out", type=Path, required=True, help="golden folder, e.g. tests/golden/reward")
    args = parser.parse_args(argv)
    if not (args.model / "manifest.json").is_file():
        parser.error(f"--model {args.model} has no manifest.json")
    manifest, score = reward_head_scorer(args.model)
    if manifest["kind"] != "reward_head":
        parser.error(
            f"--model {args.model} is a {manifest['kind']} model; this script scores reward_head models"
        )
    write_goldens(args.out, manifest, score)
    return 0


if __name__ == "__main__":
    sys.exit(main())
