"""The web console's rating page bundles the shapes world's training prompts (web/src/shapes-prompts.json);
this fails when shapes_world.py changes and the file was not regenerated."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_console_prompts_are_current():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "console_prompts.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_console_prompts_are_the_train_split_only():
    sys.path.insert(0, str(ROOT / "trainer"))
    import json

    import shapes_world

    grouped = json.loads((ROOT / "web" / "src" / "shapes-prompts.json").read_text())
    heldout = {prompt.text for prompt in shapes_world.heldout_prompts()}
    listed = [text for texts in grouped.values() for text in texts]
    assert set(grouped) == set(shapes_world.CATEGORIES)
    assert listed and not heldout.intersection(listed)
