"""t2i_trainer.jobs.finetune and t2i_trainer.jobs.evaluate (issue #5): the fine-tune spec's checks, two
short real fine-tunes from models/tiny-sd/diffusers, and the evaluation figures on renders whose truth is
known.

The fine-tunes are a few steps on 64x64 images so that the file runs in well under a minute on 2 cores.
"""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from repo_files import require_folder
from t2i_trainer.build.shapes_world import parse_prompt, render, render_wrong, sample_rng
from t2i_trainer.jobs.evaluate import evaluate
from t2i_trainer.jobs.evaluate import main as evaluate_main

FINETUNE = "t2i_trainer.jobs.finetune"
PROMPTS = (
    "a red circle",
    "two blue squares on a yellow background",
    "three triangles",
    "a star on a black background",
)
EVALUATE_KEYS = {
    "images", "rated", "prompts", "good", "categories", "attributes", "quality", "diversity", "rows"
}  # fmt: skip


@pytest.fixture(scope="session")
def tiny_base(tiny_sd) -> Path:
    return require_folder(tiny_sd / "diffusers")


def write_samples(folder: Path, count: int = 6) -> Path:
    """Renders of PROMPTS as a fine-tune job's samples.jsonl, with rewards alternating 1 and 0."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(count):
        text = PROMPTS[index % len(PROMPTS)]
        name = f"sample-{index}.png"
        render(parse_prompt(text), sample_rng(3, index)).save(folder / name)
        lines.append(json.dumps({"image": name, "prompt": text, "reward": float(index % 2 == 0)}))
    path = folder / "samples.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def stdout_events(text: str) -> list[dict]:
    """Every stdout line must be a JSON progress line: the service parses them all."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def run_trainer(spec: Path) -> list[dict]:
    """Runs the trainer as the service does, as a child process, which must succeed; returns its lines."""
    result = subprocess.run(
        [sys.executable, "-m", FINETUNE, "--spec", str(spec)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return stdout_events(result.stdout)


def safetensors_differ(first: Path, second: Path) -> bool:
    from safetensors.torch import load_file

    a, b = load_file(first), load_file(second)
    assert a.keys() == b.keys()
    return any(not bool((a[name] == b[name]).all()) for name in a)


# ------------------------------------------------------------------------------------------------------------
# The spec
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture
def valid_spec(tiny_base, tmp_path) -> dict:
    samples = tmp_path / "samples.jsonl"
    samples.write_text("")
    return {"base": str(tiny_base), "out": str(tmp_path / "out"), "samples": str(samples)}


def test_a_minimal_spec_gets_the_defaults(trainer_packages, valid_spec):
    from t2i_trainer.jobs import finetune

    spec = finetune.parse_spec(valid_spec)
    assert (spec.steps, spec.batch_size, spec.beta, spec.export) == (1000, 32, 1.0, True)
    assert (spec.model_rows, spec.pretrain_rows) == (16, 16)
    assert spec.pretrain == {"kind": "shapes_world"}


@pytest.mark.parametrize(
    "batch_size, fraction, rows",
    [(32, 0.5, 16), (2, 0.1, 1), (2, 0.9, 1), (8, 0.99, 7), (8, 0.01, 1), (8, 0.0, 0), (1, 0.0, 0)],
)
def test_each_term_keeps_a_row_when_the_batch_has_two(
    trainer_packages, valid_spec, batch_size, fraction, rows
):
    from t2i_trainer.jobs import finetune

    spec = finetune.parse_spec({**valid_spec, "batch_size": batch_size, "pretrain_fraction": fraction})
    assert (spec.pretrain_rows, spec.model_rows) == (rows, batch_size - rows)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"colour": "red"}, "unknown field `colour`"),
        ({"steps": 0}, "`steps` must be between 1"),
        ({"steps": -5}, "`steps` must be between 1"),
        ({"steps": 10**400}, "`steps` must be between 1"),
        ({"steps": 2.5}, "`steps` must be a finite integer"),
        ({"beta": math.nan}, "`beta` must be a finite number"),
        ({"beta": -1}, "`beta` must be between 0"),
        ({"pretrain_fraction": 1.0}, "`pretrain_fraction` must be between 0"),
        ({"batch_size": 1}, "`batch_size` 1 leaves no row for pre-training data"),
        ({"export": "false"}, "`export` must be true or false"),
        ({"train_text_encoder": 1}, "`train_text_encoder` must be true or false"),
        ({"unet_layers": "attention"}, "`unet_layers` must be one of all, cross_attention"),
        ({"lr_schedule": "linear"}, "`lr_schedule` must be one of constant, cosine"),
        (
            {"pretrain": {"kind": "folder", "path": "/no/such/folder"}},
            "`pretrain.path` is not a readable folder",
        ),
        ({"pretrain": {"kind": "laion"}}, "`pretrain.kind` must be shapes_world or folder"),
        ({"pretrain": {"kind": "shapes_world", "size": 64}}, "unknown field `pretrain.size`"),
        ({"pretrain": {"kind": "shapes_world", "images": 0}}, "`pretrain.images` must be an integer"),
        ({"pretrain": {"kind": "shapes_world", "count_noise": 1.5}}, "`pretrain.count_noise` must be"),
        ({"base": None}, "`base` is required"),
        ({"base": "/no/such/pipeline"}, "`base` is not a diffusers pipeline folder"),
        ({"samples": "/no/such/samples.jsonl"}, "`samples` is not a file"),
        ({"out": "/no/such/parent/out"}, "the parent folder of `out` does not exist"),
    ],
)
def test_bad_specs_are_refused_naming_the_field(trainer_packages, valid_spec, change, message):
    from t2i_trainer.jobs import finetune

    spec = {**valid_spec, **change}
    spec = {name: value for name, value in spec.items() if value is not None}
    with pytest.raises(finetune.SpecError, match=re.escape(message)):
        finetune.parse_spec(spec)


def test_an_existing_out_is_refused(trainer_packages, valid_spec):
    from t2i_trainer.jobs import finetune

    Path(valid_spec["out"]).mkdir()
    with pytest.raises(finetune.SpecError, match="`out` exists already"):
        finetune.parse_spec(valid_spec)


def test_a_nan_in_the_spec_file_exits_2_with_an_error_line(trainer_packages, valid_spec, tmp_path, capsys):
    from t2i_trainer.jobs import finetune

    # Python's json reads the non-standard token NaN as a float; the spec check must still refuse it.
    text = json.dumps(valid_spec)[:-1] + ', "beta": NaN}'
    path = tmp_path / "spec.json"
    path.write_text(text)
    assert finetune.main(["--spec", str(path)]) == 2
    (event,) = stdout_events(capsys.readouterr().out)
    assert event["event"] == "error"
    assert "`beta`" in event["message"]


def test_samples_without_a_reward_above_zero_are_refused(trainer_packages, tmp_path):
    from t2i_trainer.jobs import finetune

    samples = write_samples(tmp_path / "samples", count=2)
    lines = [json.loads(line) | {"reward": 0} for line in samples.read_text().splitlines()]
    samples.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(finetune.SpecError, match="no sample with a reward above 0"):
        finetune.load_samples(samples)


def with_latents(samples: Path, shape: tuple[int, ...] = (4, 8, 8), every: int = 1) -> list[np.ndarray]:
    """Gives every `every`-th sample a random .npy latent beside it; returns the latents in order."""
    rng = np.random.default_rng(5)
    lines = [json.loads(line) for line in samples.read_text().splitlines()]
    latents = []
    for index, line in enumerate(lines):
        if index % every == 0:
            latent = rng.standard_normal(shape).astype(np.float32)
            np.save(samples.parent / f"latent-{index}.npy", latent)
            line["latent"] = f"latent-{index}.npy"
            latents.append(latent)
    samples.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return latents


def test_samples_read_the_latents_they_name(trainer_packages, tmp_path):
    from t2i_trainer.jobs import finetune

    samples = write_samples(tmp_path / "samples", count=4)
    written = with_latents(samples, every=2)
    latents = finetune.load_samples(samples).latents
    assert [latent is None for latent in latents] == [False, True, False, True]
    np.testing.assert_array_equal(latents[0], written[0])
    np.testing.assert_array_equal(latents[2], written[1])


@pytest.mark.parametrize(
    "latent, message",
    [
        ("missing.npy", "`latent` is not a readable .npy file"),
        (np.zeros((4, 8), dtype=np.float32), r"shaped \[channels, height, width\]"),
        (np.full((4, 8, 8), np.nan, dtype=np.float32), "finite floats"),
        (np.zeros((4, 8, 8), dtype=np.int64), "finite floats"),
        (7, "`latent` must be a path"),
    ],
)
def test_unusable_latents_are_left_out_with_a_warning_naming_the_line(
    trainer_packages, tmp_path, capsys, latent, message
):
    from t2i_trainer.jobs import finetune

    samples = write_samples(tmp_path / "samples", count=2)
    lines = [json.loads(line) for line in samples.read_text().splitlines()]
    if isinstance(latent, np.ndarray):
        np.save(samples.parent / "bad.npy", latent)
        latent = "bad.npy"
    lines[1]["latent"] = latent
    samples.write_text("".join(json.dumps(line) + "\n" for line in lines))
    if not isinstance(latent, str):
        with pytest.raises(finetune.SpecError, match=message) as error:
            finetune.load_samples(samples)
        assert "line 2" in str(error.value)
        return
    loaded = finetune.load_samples(samples)
    assert loaded.latents == [None, None]
    assert loaded.unreadable_latents == 1
    warning = stdout_events(capsys.readouterr().out)[-1]
    assert warning["event"] == "warning"
    assert re.search(message, warning["message"]) and "line 2" in warning["message"]


def test_a_given_latent_is_trained_on_as_it_is_and_the_rest_are_encoded(trainer_packages, tiny_base):
    """The model's own latent is drawn back exactly (no posterior noise, no VAE round trip); an image without
    one is encoded and drawn from its posterior."""
    import torch
    from diffusers import AutoencoderKL

    from t2i_trainer.jobs import finetune

    vae = AutoencoderKL.from_pretrained(tiny_base / "vae").eval()
    images = [np.asarray(render(parse_prompt(text), sample_rng(3, i))) for i, text in enumerate(PROMPTS[:2])]
    size = images[0].shape[0]
    latent_side = size // 2 ** (len(vae.config.block_out_channels) - 1)
    given = np.random.default_rng(1).standard_normal((vae.config.latent_channels, latent_side, latent_side))
    encoded = finetune.EncodedSet(
        vae, images, list(PROMPTS[:2]), np.ones(2), size, [given.astype(np.float32), None]
    )
    generator = torch.Generator().manual_seed(0)
    first, _ = encoded.draw(np.array([0, 0]), generator)
    np.testing.assert_allclose(first.numpy(), np.stack([given, given]), rtol=1e-6, atol=1e-6)
    second_a, _ = encoded.draw(np.array([1]), generator)
    second_b, _ = encoded.draw(np.array([1]), generator)
    with torch.no_grad():
        pixels = torch.from_numpy(images[1][None].copy()).permute(0, 3, 1, 2).float() / 127.5 - 1
        posterior = vae.encode(pixels).latent_dist
    assert not torch.equal(second_a, second_b), "an encoded image is drawn from its posterior"
    torch.testing.assert_close(encoded.means[1], posterior.mean[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(encoded.stds[1], posterior.std[0], rtol=1e-5, atol=1e-5)
    assert float(encoded.stds[0].abs().max()) == 0.0


def test_a_caption_folder_reads_txt_pairs_and_metadata_jsonl(trainer_packages, tmp_path):
    from t2i_trainer.jobs import finetune

    pairs, metadata = tmp_path / "pairs", tmp_path / "metadata"
    pairs.mkdir()
    metadata.mkdir()
    for index, text in enumerate(PROMPTS[:2]):
        image = render(parse_prompt(text), sample_rng(4, index))
        image.save(pairs / f"{index}.png")
        (pairs / f"{index}.txt").write_text(text + "\n")
        image.save(metadata / f"{index}.png")
    (pairs / "no-caption.png").write_bytes((pairs / "0.png").read_bytes())
    (metadata / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": f"{i}.png", "text": t}) + "\n" for i, t in enumerate(PROMPTS[:2]))
    )
    for folder in (pairs, metadata):
        images, captions = finetune.load_caption_folder(folder)
        assert captions == list(PROMPTS[:2])
        assert [image.shape for image in images] == [(64, 64, 3)] * 2


# ------------------------------------------------------------------------------------------------------------
# Real fine-tunes from models/tiny-sd/diffusers
# ------------------------------------------------------------------------------------------------------------


def test_smoke_finetune_trains_the_unet_and_exports_a_checked_onnx_folder(
    trainer_packages, tiny_base, tmp_path
):
    samples = write_samples(tmp_path / "job")
    out = tmp_path / "candidate"
    spec = write_spec(
        tmp_path / "job.json",
        {"base": str(tiny_base), "out": str(out), "samples": str(samples), "device": "cpu",
         "pretrain": {"kind": "shapes_world", "images": 8}, "steps": 3, "batch_size": 4, "log_every": 1,
         "export": True},
    )  # fmt: skip
    events = run_trainer(spec)
    assert [event["event"] for event in events] == [
        "start",
        "data",
        "step",
        "step",
        "step",
        "export",
        "export",
        "done",
    ]
    data = events[1]
    assert (data["samples"], data["rewarded"], data["pretrain"], data["mean_reward"]) == (6, 3, 8, 0.5)
    steps = [event for event in events if event["event"] == "step"]
    assert [event["step"] for event in steps] == [1, 2, 3]
    assert all(event["steps"] == 3 and math.isfinite(event["loss"]) for event in steps)
    assert all(event["pretrain_loss"] > 0 and event["model_loss"] > 0 for event in steps)
    assert max(events[6]["max_abs_difference"].values()) <= 1e-4
    assert events[-1]["out"] == str(out)

    for part in ("text_encoder", "unet", "vae_decoder", "vae_encoder"):
        assert (out / part / "model.onnx").is_file(), part
    assert (out / "diffusers" / "model_index.json").is_file()
    # export_sd.py's UNet config: a timestep per row.
    export = json.loads((out / "export.json").read_text())
    assert export["unet_rows"]["timestep_shape"] == ["batch_size"]
    assert not out.with_name(out.name + ".partial").exists()
    record = json.loads((out / "finetune.json").read_text())
    assert [entry["step"] for entry in record["history"]] == [1, 2, 3]
    assert record["spec"]["base"] == str(tiny_base)
    # No config keeps the scratch folder's name.
    for config in out.rglob("*.json"):
        assert ".partial" not in config.read_text(), config

    # The UNet is trained; the text encoder (frozen by default) and the VAE are the base's.
    def weights(root: Path, part: str) -> Path:
        return next((root / part).glob("*.safetensors"))

    assert safetensors_differ(weights(tiny_base, "unet"), weights(out / "diffusers", "unet"))
    assert not safetensors_differ(
        weights(tiny_base, "text_encoder"), weights(out / "diffusers", "text_encoder")
    )
    assert not safetensors_differ(weights(tiny_base, "vae"), weights(out / "diffusers", "vae"))


def test_folder_pretraining_without_export(trainer_packages, tiny_base, tmp_path, capsys, restore_sigterm):
    from t2i_trainer.jobs import finetune

    pretrain = tmp_path / "pretrain"
    pretrain.mkdir()
    for index, text in enumerate(PROMPTS):
        render(parse_prompt(text), sample_rng(9, index)).save(pretrain / f"{index}.png")
        (pretrain / f"{index}.txt").write_text(text)
    out = tmp_path / "candidate"
    spec = write_spec(
        tmp_path / "job.json",
        {"base": str(tiny_base), "out": str(out), "samples": str(write_samples(tmp_path / "job", count=4)),
         "device": "cpu", "pretrain": {"kind": "folder", "path": str(pretrain)}, "steps": 2, "batch_size": 4,
         "pretrain_fraction": 0.25, "export": False},
    )  # fmt: skip
    assert finetune.main(["--spec", str(spec)]) == 0
    events = stdout_events(capsys.readouterr().out)
    assert [event["event"] for event in events] == ["start", "data", "step", "done"]
    assert events[1]["pretrain"] == len(PROMPTS)
    assert events[2]["step"] == 2
    assert (out / "diffusers" / "model_index.json").is_file()
    assert (out / "finetune.json").is_file()
    assert not (out / "unet").exists()
    assert not (out / "export.json").exists()


def test_a_run_resumed_from_its_checkpoint_ends_where_the_whole_run_ends(
    trainer_packages, tiny_base, tmp_path, capsys, restore_sigterm
):
    from t2i_trainer.jobs import finetune

    samples = write_samples(tmp_path / "job", count=4)
    common = {"base": str(tiny_base), "samples": str(samples), "device": "cpu", "steps": 6, "batch_size": 4,
              "log_every": 1, "export": False, "threads": 1,
              "pretrain": {"kind": "shapes_world", "images": 8}}  # fmt: skip

    def run(name: str, **extra) -> list[dict]:
        spec = write_spec(tmp_path / f"{name}.json", {**common, "out": str(tmp_path / name), **extra})
        assert finetune.main(["--spec", str(spec)]) == 0
        return stdout_events(capsys.readouterr().out)

    def unet(name: str) -> Path:
        return tmp_path / name / "diffusers" / "unet" / "diffusion_pytorch_model.safetensors"

    whole = run("whole")
    checkpoint = tmp_path / "checkpoint.pt"
    first = run("first", checkpoint=str(checkpoint), checkpoint_every=3)
    assert [event["step"] for event in first if event["event"] == "checkpoint"] == [3]
    assert checkpoint.is_file() and not checkpoint.with_name("checkpoint.pt.partial").exists()
    resumed = run("resumed", resume=str(checkpoint))
    assert [event for event in resumed if event["event"] == "resume"][0]["step"] == 3
    losses = {event["step"]: event["loss"] for event in whole if event["event"] == "step"}
    steps = [event for event in resumed if event["event"] == "step"]
    assert [event["step"] for event in steps] == [4, 5, 6]
    assert [event["loss"] for event in steps] == [losses[4], losses[5], losses[6]]
    # Writing a checkpoint changes nothing, and the resumed run ends with the whole run's weights.
    assert not safetensors_differ(unet("whole"), unet("first"))
    assert not safetensors_differ(unet("whole"), unet("resumed"))
    history = json.loads((tmp_path / "resumed" / "finetune.json").read_text())["history"]
    assert [record["step"] for record in history] == [1, 2, 3, 4, 5, 6]
    # A checkpoint of another run is refused, naming the field.
    spec = write_spec(tmp_path / "other.json", {**common, "out": str(tmp_path / "other"), "steps": 7,
                                                 "resume": str(checkpoint)})  # fmt: skip
    assert finetune.main(["--spec", str(spec)]) == 2
    errors = [event for event in stdout_events(capsys.readouterr().out) if event["event"] == "error"]
    assert "`resume`" in errors[0]["message"] and "another run" in errors[0]["message"]


def decoded_samples(folder: Path, base: Path, count: int) -> tuple[Path, list[np.ndarray]]:
    """Samples whose images are the base VAE's decodings of random latents, as a job's sampling writes them:
    the image, and beside it the latent it came from."""
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(base / "vae").eval()
    latents = np.random.default_rng(2).standard_normal((count, 4, 8, 8)).astype(np.float32)
    with torch.no_grad():
        decoded = vae.decode(torch.from_numpy(latents) / vae.config.scaling_factor).sample
    pixels = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(count):
        Image.fromarray(pixels[index]).save(folder / f"{index}.png")
        np.save(folder / f"{index}.npy", latents[index])
        text = PROMPTS[index % len(PROMPTS)]
        lines.append({"image": f"{index}.png", "latent": f"{index}.npy", "prompt": text, "reward": 1.0})
    samples = folder / "samples.jsonl"
    samples.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return samples, list(latents)


def test_only_latents_the_base_vae_decodes_to_their_image_are_trained_on(
    trainer_packages, tiny_base, tmp_path
):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from t2i_trainer.jobs import finetune

    samples, latents = decoded_samples(tmp_path / "job", tiny_base, 4)
    np.save(samples.parent / "1.npy", latents[3])  # another image's latent
    np.save(samples.parent / "2.npy", np.zeros((4, 16, 16), dtype=np.float32))  # another model's shape
    loaded = finetune.load_samples(samples)
    vae = AutoencoderKL.from_pretrained(tiny_base / "vae").eval()
    unet = UNet2DConditionModel.from_pretrained(tiny_base / "unet")
    kept, counts = finetune.checked_latents(vae, loaded.images, loaded.latents, unet, 64)
    assert counts == {"given": 4, "used": 2, "wrong_shape": 1, "mismatched": 1}
    assert [latent is None for latent in kept] == [False, True, True, False]
    np.testing.assert_array_equal(kept[0], latents[0])


def test_a_fine_tune_reports_the_latents_it_trains_on(
    trainer_packages, tiny_base, tmp_path, capsys, restore_sigterm
):
    from t2i_trainer.jobs import finetune

    samples, _ = decoded_samples(tmp_path / "job", tiny_base, 5)
    np.save(samples.parent / "3.npy", np.zeros((4, 16, 16), dtype=np.float32))
    (samples.parent / "4.npy").write_bytes(b"damaged")
    spec = write_spec(
        tmp_path / "job.json",
        {"base": str(tiny_base), "out": str(tmp_path / "candidate"), "samples": str(samples), "device": "cpu",
         "steps": 2, "batch_size": 4, "pretrain": {"kind": "shapes_world", "images": 4}, "export": False},
    )  # fmt: skip
    assert finetune.main(["--spec", str(spec)]) == 0
    events = stdout_events(capsys.readouterr().out)
    data = next(event for event in events if event["event"] == "data")
    assert data["latents"] == {"given": 5, "used": 3, "wrong_shape": 1, "mismatched": 0, "unreadable": 1}
    assert (tmp_path / "candidate" / "diffusers" / "model_index.json").is_file()


def test_the_learning_rate_warms_up_then_stays_or_decays_to_a_tenth(trainer_packages):
    from t2i_trainer.jobs import finetune

    constant = [finetune.learning_rate_factor(step, 100, "constant") for step in range(100)]
    cosine = [finetune.learning_rate_factor(step, 100, "cosine") for step in range(100)]
    assert constant[:5] == cosine[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert constant[5:] == [1.0] * 95
    assert cosine[4] == 1.0 and cosine[-1] == pytest.approx(0.1)
    assert all(later <= earlier for earlier, later in zip(cosine[4:], cosine[5:], strict=False))


def test_cross_attention_layers_alone_are_trained(trainer_packages, tiny_base, tmp_path, restore_sigterm):
    from safetensors.torch import load_file

    from t2i_trainer.jobs import finetune

    out = tmp_path / "candidate"
    spec = write_spec(
        tmp_path / "job.json",
        {"base": str(tiny_base), "out": str(out), "samples": str(write_samples(tmp_path / "job", count=4)),
         "device": "cpu", "pretrain": {"kind": "shapes_world", "images": 4}, "steps": 2, "batch_size": 4,
         "unet_layers": "cross_attention", "learning_rate": 1e-2, "export": False},
    )  # fmt: skip
    assert finetune.main(["--spec", str(spec)]) == 0
    before = load_file(next((tiny_base / "unet").glob("*.safetensors")))
    after = load_file(next((out / "diffusers" / "unet").glob("*.safetensors")))
    changed = {name for name in before if not bool((before[name] == after[name]).all())}
    cross_attention = {name for name in before if ".attn2." in name}
    assert cross_attention, "the tiny UNet has cross-attention layers"
    assert changed == cross_attention


def test_torchrun_trains_data_parallel_and_only_the_main_process_reports(
    trainer_packages, tiny_base, tmp_path
):
    """Two CPU processes (gloo) under torchrun, as --trainer-command would start them on several GPUs."""
    out = tmp_path / "candidate"
    spec = write_spec(
        tmp_path / "job.json",
        {"base": str(tiny_base), "out": str(out), "samples": str(write_samples(tmp_path / "job", count=4)),
         "device": "cpu", "threads": 1, "pretrain": {"kind": "shapes_world", "images": 4}, "steps": 2,
         "batch_size": 2, "log_every": 1, "export": False},
    )  # fmt: skip
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", FINETUNE, "--spec", str(spec)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    events = stdout_events(result.stdout)
    assert [event["event"] for event in events] == ["start", "data", "step", "step", "done"]
    assert events[0]["processes"] == 2
    assert (out / "diffusers" / "model_index.json").is_file()
    assert safetensors_differ(
        next((tiny_base / "unet").glob("*.safetensors")),
        next((out / "diffusers" / "unet").glob("*.safetensors")),
    )


# ------------------------------------------------------------------------------------------------------------
# evaluate.py (numpy and Pillow only)
# ------------------------------------------------------------------------------------------------------------


def renders(texts, seed: int, wrong: str | None = None) -> list[np.ndarray]:
    images = []
    for index, text in enumerate(texts):
        rng = sample_rng(seed, index)
        prompt = parse_prompt(text)
        image = render(prompt, rng) if wrong is None else render_wrong(prompt, rng, wrong)
        images.append(np.asarray(image))
    return images


def test_clean_renders_are_all_good():
    texts = [text for text in PROMPTS for _ in range(3)]
    result = evaluate(renders(texts, seed=1), texts)
    assert set(result) == EVALUATE_KEYS
    assert (result["images"], result["rated"], result["prompts"]) == (12, 12, 4)
    assert result["good"] == 1.0
    assert result["quality"] == 1.0
    assert result["categories"] == {"colour": 1.0, "count": 1.0, "background": 1.0, "combination": 1.0}
    assert result["attributes"] == {"shape": 1.0, "colour": 1.0, "count": 1.0, "background": 1.0}
    assert 0 < result["diversity"] < 1


def test_renders_with_the_wrong_count_fail_the_count_attribute():
    texts = [text for text in PROMPTS for _ in range(2)]
    result = evaluate(renders(texts, seed=2, wrong="count"), texts)
    assert result["attributes"]["count"] < 1
    assert result["good"] < 1
    # Only the count is wrong: every object is still a clean, nameable shape.
    assert result["attributes"]["shape"] == 1.0


def test_prompts_outside_the_shapes_world_are_counted_but_not_rated():
    texts = ["a red circle", "a red circle", "three triangles", "a photo of a cat", "a photo of a cat", ""]
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    images = renders(texts[:3], seed=3) + noise
    result = evaluate(images, texts)
    assert (result["images"], result["rated"], result["prompts"]) == (6, 3, 4)
    assert result["good"] == 1.0 and result["quality"] == 1.0
    assert set(result["categories"]) == {"colour", "count"}
    # Diversity still takes every prompt with two images, the unrated one included.
    rated_only = evaluate(images[:3], texts[:3])
    assert result["diversity"] != rated_only["diversity"]
    assert result["diversity"] == pytest.approx(
        np.mean([rated_only["diversity"], evaluate(noise[:2], texts[3:5])["diversity"]])
    )

    nothing_rated = evaluate(noise, texts[3:])
    assert (nothing_rated["images"], nothing_rated["rated"]) == (3, 0)
    assert nothing_rated["good"] is None and nothing_rated["quality"] is None
    assert nothing_rated["categories"] == {} and nothing_rated["attributes"] == {}


def test_rows_hold_each_prompts_tallies_for_the_gates_bootstrap():
    squares = "two blue squares on a yellow background"
    texts = ["a red circle"] * 3 + [squares] * 2 + ["a photo of a cat"] * 2
    images = renders(texts[:3], seed=5) + renders([squares], seed=6, wrong="count")
    images += renders([squares], seed=7) + [np.zeros((64, 64, 3), np.uint8)] * 2
    result = evaluate(images, texts)
    rows = {row["prompt"]: row for row in result["rows"]}
    assert [row["prompt"] for row in result["rows"]] == ["a red circle", squares, "a photo of a cat"]
    circle, pair, cat = rows["a red circle"], rows[squares], rows["a photo of a cat"]
    assert (circle["category"], circle["images"], circle["good"]) == ("colour", 3, [3, 3])
    assert circle["quality"] == [3, 3]
    assert circle["attributes"] == {"shape": [3, 3], "colour": [3, 3], "count": [3, 3]}
    # One of the two images has the wrong count: the row says so, and the pooled figures agree with the rows.
    assert pair["attributes"]["count"] == [1, 2] and pair["good"] == [1, 2]
    assert result["attributes"]["count"] == pytest.approx(4 / 5)
    assert result["good"] == pytest.approx(4 / 5)
    assert (cat["category"], cat["good"], cat["attributes"]) == (None, [0, 0], {})
    assert cat["diversity"] == 0.0 and circle["diversity"] > 0


def test_evaluate_cli_prints_the_figures_as_json(tmp_path, capsys):
    texts = ["a red circle", "a red circle", "two blue squares on a yellow background", "not a shapes prompt"]
    lines = []
    for index, image in enumerate(renders(texts[:3], seed=4) + [np.zeros((64, 64, 3), np.uint8)]):
        Image.fromarray(image).save(tmp_path / f"{index}.png")
        lines.append(json.dumps({"image": f"{index}.png", "prompt": texts[index]}))
    (tmp_path / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    assert evaluate_main(["--images", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == EVALUATE_KEYS
    assert (result["images"], result["rated"], result["good"]) == (4, 3, 1.0)


def test_evaluate_cli_refuses_a_folder_without_prompts_jsonl(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main(["--images", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "no prompts.jsonl" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------------
# retrain_reward.py (the job's `retrain_reward_model` stage; the Rust test runs it end to end)
# ------------------------------------------------------------------------------------------------------------


def test_retrain_reward_refuses_too_few_ratings_naming_the_counts(tmp_path, capsys):
    from t2i_trainer.jobs import retrain_reward

    folder = tmp_path / "data"
    folder.mkdir()
    lines = []
    for index, text in enumerate(("a red circle", "two blue squares", "a cat on a mat")):
        render(parse_prompt("a red circle"), sample_rng(1, index)).save(folder / f"{index}.png")
        lines.append(
            json.dumps({"image": f"{index}.png", "prompt": text, "reward": 1.0, "source": "feedback"})
        )
    lines.append(
        json.dumps({"image": "0.png", "prompt": "a red circle", "reward": 0.3, "source": "reward_model"})
    )
    (folder / "samples.jsonl").write_text("\n".join(lines) + "\n")
    images, prompts, labels, skipped = retrain_reward.ratings(folder / "samples.jsonl")
    assert (len(images), prompts, labels, skipped) == (
        2,
        ["a red circle", "two blue squares"],
        ["good"] * 2,
        1,
    )
    status = retrain_reward.main(
        ["--samples", str(folder / "samples.jsonl"), "--tokenizer", "unused", "--out", str(tmp_path / "out"),
         "--name", "shapes-reward-ft-1"]
    )  # fmt: skip
    assert status == 2
    event = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert event["event"] == "error"
    assert "2 (2 good, 1 of other prompts left out)" in event["message"]
