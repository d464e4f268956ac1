"""The tools behind fine-tune trials r to v (issue #5): vae_round_trip.py and sample_train_latents.py, run on
models/tiny-sd so that they take seconds."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from repo_files import require_folder
from t2i_trainer.build.shapes_world import parse_prompt, render, sample_rng
from t2i_trainer.jobs.evaluate import evaluate

PROMPTS = ("a red circle", "two blue squares on a yellow background", "three triangles")


@pytest.fixture(scope="session")
def tiny_base(tiny_sd) -> Path:
    return require_folder(tiny_sd / "diffusers")


def test_a_round_trip_rates_the_originals_then_each_generation(trainer_packages, tiny_base, tmp_path, capsys):
    from t2i_trainer.trials import vae_round_trip

    lines, images = [], []
    for index, text in enumerate(PROMPTS):
        image = render(parse_prompt(text), sample_rng(6, index))
        image.save(tmp_path / f"{index}.png")
        images.append(np.asarray(image))
        lines.append(json.dumps({"image": f"{index}.png", "prompt": text, "reward": 1.0}))
    samples = tmp_path / "samples.jsonl"
    samples.write_text("\n".join(lines) + "\n")
    out = tmp_path / "round-trip.json"
    argv = ["--samples", str(samples), "--vae", str(tiny_base / "vae"), "--rounds", "2", "--out", str(out)]
    assert vae_round_trip.main(argv) == 0
    result = json.loads(out.read_text())
    assert result == json.loads(capsys.readouterr().out)
    assert result["images"] == 3
    assert len(result["rounds"]) == 3
    originals = evaluate(images, list(PROMPTS))
    assert result["rounds"][0]["attributes"] == originals["attributes"]
    assert result["rounds"][0]["quality"] == originals["quality"] == 1.0
    # tiny-sd's VAE is random: whatever it decodes is no longer the clean render.
    assert result["rounds"][1]["quality"] < 1.0


def test_a_round_trip_refuses_a_missing_samples_file(tmp_path, capsys):
    from t2i_trainer.trials import vae_round_trip

    with pytest.raises(SystemExit) as exit_info:
        vae_round_trip.main(["--samples", str(tmp_path / "none.jsonl")])
    assert exit_info.value.code == 2
    assert "--samples" in capsys.readouterr().err


def test_sampled_latents_decode_to_their_images_and_both_samples_files_list_them(
    trainer_packages, tiny_base, tmp_path, monkeypatch
):
    import torch
    from diffusers import AutoencoderKL

    from t2i_trainer.trials import sample_train_latents

    prompts = [parse_prompt(text) for text in PROMPTS[:2]]
    monkeypatch.setattr(sample_train_latents, "train_prompts", lambda: prompts)
    out = tmp_path / "latents"
    assert sample_train_latents.main(["--out", str(out), "--base", str(tiny_base), "--images", "2"]) == 0
    with_latents = [
        json.loads(line) for line in (out / "samples-rater-latent.jsonl").read_text().splitlines()
    ]
    plain = [json.loads(line) for line in (out / "samples-rater.jsonl").read_text().splitlines()]
    assert [record["prompt"] for record in with_latents] == [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2
    assert plain == [{k: v for k, v in record.items() if k != "latent"} for record in with_latents]
    assert all(record["reward"] in (0.0, 1.0) for record in with_latents)

    vae = AutoencoderKL.from_pretrained(tiny_base / "vae").eval()
    latents = np.stack([np.load(out / record["latent"]) for record in with_latents])
    with torch.no_grad():
        decoded = vae.decode(torch.from_numpy(latents) / vae.config.scaling_factor).sample
    pixels = ((decoded.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()
    for record, decoded_pixels in zip(with_latents, pixels, strict=True):
        with Image.open(out / record["image"]) as image:
            assert np.abs(np.asarray(image, dtype=np.float32) - decoded_pixels).max() <= 1.0


def test_sampling_refuses_a_folder_that_is_not_empty(tmp_path, capsys):
    from t2i_trainer.trials import sample_train_latents

    (tmp_path / "old.png").write_bytes(b"x")
    with pytest.raises(SystemExit) as exit_info:
        sample_train_latents.main(["--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "is not empty" in capsys.readouterr().err
