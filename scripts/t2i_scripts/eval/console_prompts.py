"""The rating page's prompts: the shapes world's training prompts by category (colour, count, background,
combination), as the paper's labelling used. Written to web/src/shapes-prompts.json, bundled by the console.

    .venv/bin/python -m t2i_scripts.eval.console_prompts          # rewrite the file
    .venv/bin/python -m t2i_scripts.eval.console_prompts --check  # exit 1 when stale (trainer/tests run it)
"""

from __future__ import annotations

import argparse
import json
import sys

from t2i_scripts.server import ROOT
from t2i_trainer.build import shapes_world

OUT = ROOT / "web" / "src" / "shapes-prompts.json"


def prompts_by_category() -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {category: [] for category in shapes_world.CATEGORIES}
    for prompt in shapes_world.train_prompts():
        grouped[prompt.category].append(prompt.text)
    return grouped


def render() -> str:
    return json.dumps(prompts_by_category(), indent=1) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed file is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text() != text:
            print(
                f"{OUT.relative_to(ROOT)} is stale: "
                "run `.venv/bin/python -m t2i_scripts.eval.console_prompts`"
            )
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}: {sum(len(v) for v in prompts_by_category().values())} prompts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
