"""What the reward exporters share (export_clip_reward, export_open_clip_reward and export_aesthetic_reward):
their command line's common flags and checks, and the manifest's image section read from a transformers
`preprocessor_config.json`."""

import argparse
from collections.abc import Sequence
from pathlib import Path


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
