"""Where the committed artefacts live, for tests and their parametrisation."""

import json
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
GOLDEN_DIR = REPO_ROOT / "tests" / "golden"


def require_folder(path: Path) -> Path:
    if not path.exists():
        pytest.fail(
            f"{path} is missing: run t2i_trainer.build.build_test_model, "
            "then t2i_trainer.goldens.make_goldens"
        )
    return path


def read_golden(name: str) -> dict:
    return json.loads((require_folder(GOLDEN_DIR) / name).read_text(encoding="utf-8"))
