"""The web console's rating page bundles the shapes world's training prompts (web/src/shapes-prompts.json);
this fails when t2i_trainer.build.shapes_world changes and the file was not regenerated."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_console_prompts_are_current():
    result = subprocess.run(
        [sys.executable, "-m", "t2i_scripts.eval.console_prompts", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_console_prompts_are_the_train_split_only():
    import json

    from t2i_trainer.build import shapes_world

    grouped = json.loads((ROOT / "web" / "src" / "shapes-prompts.json").read_text())
    heldout = {prompt.text for prompt in shapes_world.heldout_prompts()}
    listed = [text for texts in grouped.values() for text in texts]
    assert set(grouped) == set(shapes_world.CATEGORIES)
    assert listed and not heldout.intersection(listed)
