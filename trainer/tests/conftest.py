"""Fixtures for the trainer tests.

Most tests need only numpy, onnx and onnxruntime, which the Rust project's `.venv` has. Tests that take the
`trainer_packages` fixture also need torch, diffusers, transformers, optimum-onnx and open-clip-torch
(trainer/requirements.txt) and carry the `trainer_env` marker. `make test` runs every test in .venv-trainer,
where a missing package is an error; `make test-python-light` runs the others in .venv
(`-m "not trainer_env"`).
"""

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from repo_files import REPO_ROOT, require_folder

# Nothing here may reach the model hub; huggingface_hub reads this variable when it is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TRAINER_PACKAGES = ("torch", "diffusers", "transformers", "optimum.onnxruntime", "open_clip")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "trainer_packages" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.trainer_env)


@pytest.fixture(scope="session")
def trainer_packages() -> None:
    import importlib

    for name in TRAINER_PACKAGES:
        importlib.import_module(name)
    import torch

    torch.set_num_threads(2)


@pytest.fixture
def restore_sigterm():
    """finetune.main installs a SIGTERM handler; put pytest's back afterwards."""
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


@pytest.fixture(scope="session")
def tiny_sd() -> Path:
    return require_folder(REPO_ROOT / "models" / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_sd_legacy() -> Path:
    return require_folder(REPO_ROOT / "models" / "tiny-sd-legacy")


@dataclass
class SmokeBuild:
    build: Path
    models: Path
    events: list[dict]


@pytest.fixture(scope="session")
def smoke_models(trainer_packages, tmp_path_factory) -> SmokeBuild:
    """`make models` at smoke settings, once per test session, into scratch folders."""
    root = tmp_path_factory.mktemp("make_models")
    build, models = root / "build", root / "models"
    result = subprocess.run(
        [sys.executable, "-m", "t2i_trainer.build.make_models", "--smoke", "--build", str(build),
         "--models", str(models)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return SmokeBuild(build, models, events)


@pytest.fixture(scope="session")
def shapes_sd() -> Path:
    return require_folder(REPO_ROOT / "models" / "shapes-sd")


@pytest.fixture(scope="session")
def shapes_reward() -> Path:
    return require_folder(REPO_ROOT / "models" / "shapes-reward")
