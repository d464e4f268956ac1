"""What the reward exporters share (export_clip_reward, export_open_clip_reward, export_aesthetic_reward and
export_image_reward): their command line's common flags and checks, the manifest's image section read from a
transformers `preprocessor_config.json`, and the MLP head that the LAION aesthetic predictor and ImageReward
both put on an embedding."""

import argparse
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch


def export_parser(description: str) -> tuple[argparse.ArgumentParser, argparse._MutuallyExclusiveGroup]:
    """A parser with --out, --name, --goldens and --seed, and the required group its caller fills with the
    sources (a real model's flag, or --tiny-random)."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    parser.add_argument("--out", type=Path, required=True, help="output folder; its parent must exist")
    parser.add_argument("--name", help="the manifest's name (default: --out's folder name)")
    parser.add_argument(
        "--goldens", type=Path, help="also write golden scores here (e.g. tests/golden/reward)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the tiny random weights (default: 0)")
    return parser, source


def parse_export_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses, and refuses an --out whose parent folder is missing (exit status 2, the flag named)."""
    args = parser.parse_args(argv)
    if not args.out.resolve().parent.is_dir():
        parser.error(f"--out {args.out}: its parent folder does not exist")
    args.name = args.name or args.out.resolve().name
    return args


def image_section(processor_config: dict) -> dict:
    """The manifest's `image` section from a CLIP image processor's config: shortest-edge resize with its PIL
    filter, centre crop, rescale, mean and std."""
    from t2i_trainer.goldens.reward_goldens import FILTER_NAMES

    size = processor_config["size"]
    edge = size["shortest_edge"] if isinstance(size, dict) else int(size)
    crop = processor_config["crop_size"]
    crop = crop if isinstance(crop, dict) else {"height": int(crop), "width": int(crop)}
    resample = int(processor_config.get("resample", 3))
    if resample not in FILTER_NAMES:
        raise SystemExit(
            f"error: preprocessor_config.json's resample {resample} is not a filter the service supports"
        )
    return {
        "resize": {"shortest_edge": edge, "filter": FILTER_NAMES[resample]},
        "center_crop": {"height": crop["height"], "width": crop["width"]},
        "rescale": processor_config.get("rescale_factor", 1 / 255),
        "mean": processor_config["image_mean"],
        "std": processor_config["image_std"],
        "channel_order": "rgb",
    }


def partial_folder(out: Path, create: bool = True) -> Path:
    """The folder an export is written into before it replaces `out` (`<out>.partial`), emptied; created
    unless the exporter's tool creates it."""
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    if create:
        partial.mkdir()
    return partial


def publish(partial: Path, out: Path, manifest: dict) -> None:
    """Writes the manifest last, then replaces `out` with the finished folder, so that `out` is never half
    written."""
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)


class ScoreMlp(torch.nn.Module):
    """The MLP head of the LAION aesthetic predictor and of ImageReward (768 -> 1024 -> 128 -> 64 -> 16 -> 1
    there, with dropout between the first layers, which does nothing at inference), with their layer indices,
    so that their state dicts (`layers.0.weight`, ...) load."""

    def __init__(self, input_size: int):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(input_size, 1024),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(1024, 128),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(64, 16),
            torch.nn.Linear(16, 1),
        )

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.layers(embedding)
