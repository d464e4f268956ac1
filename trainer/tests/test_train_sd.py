"""train_sd.py in --smoke mode: the saved folder is a working diffusers pipeline, and stages resume cleanly.

The smoke run is the one of `make models` (conftest.smoke_models), shared with test_make_models.py.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TRAIN_SD = "t2i_trainer.build.train_sd"


def run_train_sd(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", TRAIN_SD, *flags], capture_output=True, text=True, timeout=300, check=False
    )


def events(result: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def smoke_run(smoke_models, tmp_path_factory) -> Path:
    """A copy of the smoke build's train_sd output, so the tests here may change it."""
    out = tmp_path_factory.mktemp("train_sd") / "pipeline"
    for suffix in ("", "-stages", "-samples"):
        shutil.copytree(smoke_models.build / f"shapes-sd-diffusers{suffix}", out.with_name(out.name + suffix))
    return out


def test_smoke_run_saves_a_pipeline_that_generates_64px_images(smoke_run):
    import torch
    from diffusers import StableDiffusionPipeline

    assert sorted(path.name for path in (smoke_run / "unet").iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    pipeline = StableDiffusionPipeline.from_pretrained(smoke_run)
    pipeline.set_progress_bar_config(disable=True)
    image = pipeline(
        "a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0)
    ).images[0]
    assert image.size == (64, 64)
    samples = smoke_run.with_name(smoke_run.name + "-samples")
    assert len(list(samples.glob("*.png"))) == 8


def test_interrupted_stage_restarts_and_finished_stages_are_skipped(smoke_run):
    stages = smoke_run.with_name(smoke_run.name + "-stages")
    vae_weights = (stages / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    # An interrupted UNet stage leaves only its .partial folder; the stages after it never ran.
    (stages / "unet").rename(stages / "unet.partial")
    (stages / "unet.partial" / "half-written").write_text("junk")
    result = run_train_sd("--smoke", "--out", str(smoke_run))
    assert result.returncode == 0, result.stderr
    by_kind = {(event["event"], event.get("stage")) for event in events(result)}
    assert ("skip", "vae") in by_kind
    assert ("discard_partial", "unet") in by_kind
    assert ("stage_done", "unet") in by_kind
    # The pipeline and samples are rebuilt from the new UNet, not skipped as stale.
    assert ("stage_done", smoke_run.name) in by_kind
    assert not (stages / "unet.partial").exists()
    assert not (stages / "unet" / "half-written").exists()
    assert (stages / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == vae_weights
    assert (smoke_run / "model_index.json").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--out", "/nonexistent-parent/pipeline"], "parent folder of --out does not exist"),
        (["--unet-steps", "0"], "--unet-steps must be at least 1. Given: 0"),
        (["--count-noise", "1.5"], "--count-noise must be between 0 and 1. Given: 1.5"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_bad_input_exits_nonzero_with_a_clear_message(trainer_packages, capsys, flags, message):
    from t2i_trainer.build import train_sd

    with pytest.raises(SystemExit) as exit_info:
        train_sd.main(["--smoke", *flags])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""


def test_out_under_a_file_is_refused(trainer_packages, tmp_path, capsys):
    from t2i_trainer.build import train_sd

    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        train_sd.main(["--smoke", "--out", str(not_a_folder / "pipeline")])
    assert exit_info.value.code == 2
    assert "parent of --out is a file, not a folder" in capsys.readouterr().err
