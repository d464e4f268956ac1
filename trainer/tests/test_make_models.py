"""`make models` at smoke settings: every stage runs, writes what the service reads, and resumes cleanly."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from repo_files import REPO_ROOT

MAKE_MODELS = "t2i_trainer.build.make_models"
STAGES = ["train_sd", "export_sd", "sample_rated", "train_reward", "report"]


def test_every_stage_runs_in_order(smoke_models):
    assert [e["stage"] for e in smoke_models.events if e["event"] == "stage"] == STAGES
    timings = json.loads((smoke_models.build / "timings.json").read_text())
    assert set(STAGES[:-1]) <= set(timings)
    assert all(timings[name]["seconds"] > 0 for name in STAGES[:-1])


def test_shapes_sd_is_an_optimum_export_with_diffusers_weights(smoke_models):
    root = smoke_models.models / "shapes-sd"
    for part in ("text_encoder", "unet", "vae_decoder", "vae_encoder"):
        assert (root / part / "model.onnx").is_file()
    assert (root / "model_index.json").is_file()
    assert (root / "scheduler" / "scheduler_config.json").is_file()
    assert (root / "tokenizer" / "vocab.json").is_file()
    assert (root / "diffusers" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (root / "diffusers" / "text_encoder" / "model.safetensors").is_file()
    export = json.loads((root / "export.json").read_text())
    assert set(export["max_abs_difference"]) == {"text_encoder", "unet", "vae_decoder", "vae_encoder"}
    assert max(export["max_abs_difference"].values()) <= 1e-4
    assert export["unet_rows"]["timestep_shape"] == ["batch_size"]
    # VAE factor 4: 16x16 latents for 64x64 images.
    unet_config = json.loads((root / "unet" / "config.json").read_text())
    vae_config = json.loads((root / "vae_decoder" / "config.json").read_text())
    assert unet_config["sample_size"] * 2 ** (len(vae_config["block_out_channels"]) - 1) == 64
    assert not list(smoke_models.models.glob("*.partial"))
    # The served defaults come from the guidance sweep, which the service reads (src/pipeline/model.rs).
    served = json.loads((root / "t2i-align.json").read_text())
    sweep = json.loads((root / "guidance_sweep.json").read_text())
    assert set(served) == {"default_steps", "default_guidance_scale"}
    assert str(served["default_guidance_scale"]) in sweep["results"]


def test_rated_samples_cover_every_split(smoke_models):
    data = smoke_models.build / "reward-data"
    images = np.load(data / "images.npy")
    records = [json.loads(line) for line in (data / "records.jsonl").read_text().splitlines()]
    assert images.shape == (len(records), 64, 64, 3) and images.dtype == np.uint8
    assert {r["split"] for r in records} == {"train", "eval_seen", "eval_unseen"}
    assert {r["label"] for r in records} <= {"good", "bad"}
    assert all(set(r["checks"]) >= {"shape", "count"} for r in records)


def test_reward_folder_has_the_manifest_contract(smoke_models):
    import onnxruntime as ort

    root = smoke_models.models / "shapes-reward"
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["kind"] == "reward_head"
    session = ort.InferenceSession(str(root / manifest["model"]), providers=["CPUExecutionProvider"])
    inputs = {i.name: (i.type, i.shape) for i in session.get_inputs()}
    assert inputs["pixel_values"][0] == "tensor(float)" and inputs["pixel_values"][1][1:] == [3, 64, 64]
    assert inputs["input_ids"] == ("tensor(int64)", [inputs["input_ids"][1][0], 77])
    (output,) = session.get_outputs()
    assert output.name == manifest["output"]["name"] == "reward" and len(output.shape) == 1
    assert (root / manifest["text"]["tokenizer"] / "vocab.json").is_file()
    metrics = json.loads((root / "metrics.json").read_text())
    assert metrics["onnx_max_abs_difference"] <= 1e-4
    assert "ablation_no_aux" in metrics


def test_report_is_written_from_the_measurements(smoke_models):
    report = (smoke_models.models / "REPORT.md").read_text()
    for heading in ("## Where and how long", "## Pretrained model", "## Reward model", "## Export parity"):
        assert heading in report
    assert (smoke_models.models / "REPORT-samples.png").is_file()


def test_a_second_run_skips_every_finished_stage(smoke_models):
    result = subprocess.run(
        [sys.executable, "-m", MAKE_MODELS, "--smoke", "--build", str(smoke_models.build),
         "--models", str(smoke_models.models)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    skipped = [json.loads(line) for line in result.stdout.splitlines() if '"skip"' in line]
    assert len(skipped) >= 4


NO_PIPELINE = "--pipeline is not a diffusers pipeline"
NO_REPORT_INPUT = ["--data", "/none", "--sd", "/x", "--reward", "/y", "--timings", "/z", "--out", "/tmp/r.md"]


@pytest.mark.parametrize(
    "module, flags, message",
    [
        ("build.train_reward", ["--data", "/n", "--tokenizer", "/x", "--out", "/r"],
         "--data has no images.npy"),
        ("build.sample_rated", ["--pipeline", "/none", "--out", "/tmp/d"], NO_PIPELINE),
        ("build.export_sd", ["--pipeline", "/none", "--out", "/tmp/e"], NO_PIPELINE),
        ("build.make_models", ["--models", "/proc/version"], "--models is a file, not a folder"),
        ("build.report", NO_REPORT_INPUT, "--data: missing"),
        ("build.train_reward", ["--data", "d", "--tokenizer", "t", "--out", "o", "--bad-flag"],
         "unrecognized"),
    ],
)  # fmt: skip
def test_bad_input_exits_nonzero_with_a_clear_message(trainer_packages, module, flags, message):
    result = subprocess.run(
        [sys.executable, "-m", f"t2i_trainer.{module}", *flags],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_unwritable_output_is_refused(trainer_packages, tmp_path: Path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "t2i_trainer.build.export_sd",
             "--pipeline", str(REPO_ROOT / "models"), "--out", str(locked / "out")],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        locked.chmod(0o700)
    assert result.returncode == 2
    assert "not a diffusers pipeline" in result.stderr or "not writable" in result.stderr
