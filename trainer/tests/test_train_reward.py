"""train_reward.py: the loss's two parts, the pairwise accuracy, and the exported graph (issue #3)."""

import json
from pathlib import Path

import numpy as np
import pytest

from t2i_trainer.build.rater import judge
from t2i_trainer.build.shapes_world import render, render_wrong, sample_rng, train_prompts


def rated_folder(folder: Path, count: int = 24) -> Path:
    """Renders (good) and wrong renders (bad) of training prompts, labelled by the rater, in every split."""
    folder.mkdir()
    prompts = train_prompts()[::20][:count]
    images, records = [], []
    for number, prompt in enumerate(prompts):
        rng = sample_rng(5, number)
        for image in (render(prompt, rng), render_wrong(prompt, rng, "count")):
            split = ("train", "train", "eval_seen", "eval_unseen")[len(records) % 4]
            records.append(
                {"index": len(images), "split": split, "prompt": prompt.text, "category": prompt.category,
                 "label": judge(image, prompt).label}
            )  # fmt: skip
            images.append(np.asarray(image))
    np.save(folder / "images.npy", np.stack(images))
    (folder / "records.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    return folder


def test_pairwise_accuracy_counts_pairs_within_a_prompt_and_ties_as_half(trainer_packages):
    from t2i_trainer.build import train_reward

    records = [
        {"prompt": "a", "label": "good"},
        {"prompt": "a", "label": "bad"},
        {"prompt": "a", "label": "bad"},
        {"prompt": "b", "label": "good"},
        {"prompt": "b", "label": "bad"},
        {"prompt": "c", "label": "good"},  # no bad image: no pair
    ]
    scores = np.array([0.9, 0.1, 0.95, 0.5, 0.5, 0.0])
    result = train_reward.pairwise_accuracy(records, scores)
    # Prompt a: one win, one loss; prompt b: a tie.
    assert result == {"accuracy": 0.5, "pairs": 3, "prompts": 2}


def test_training_uses_both_losses_and_exports_a_matching_graph(trainer_packages, tiny_sd, tmp_path):
    from t2i_trainer.build import train_reward

    data = rated_folder(tmp_path / "data")
    labels = [json.loads(line)["label"] for line in (data / "records.jsonl").read_text().splitlines()]
    assert labels.count("good") == labels.count("bad") == 24
    out = tmp_path / "reward"
    code = train_reward.main(
        ["--data", str(data), "--tokenizer", str(tiny_sd / "tokenizer"), "--out", str(out), "--smoke",
         "--epochs", "2", "--no-ablation"]
    )  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # Good images were in the batches, so the prompt-classification loss was on.
    assert all(entry["aux"] > 0 for entry in metrics["log"])
    assert metrics["onnx_max_abs_difference"] <= 1e-4
    assert "ablation_no_aux" not in metrics
    assert set(metrics["eval"]) == {"eval_seen", "eval_unseen"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert (out / manifest["model"]).is_file()


def test_aux_loss_prefers_the_true_prompt(trainer_packages):
    """With r high for the true prompt only, the cross-entropy over r / T is lower than when r is flat."""
    import torch
    import torch.nn.functional as F

    from t2i_trainer.build import train_reward

    peaked = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0]]) / train_reward.TEMPERATURE
    flat = torch.zeros(1, 5)
    target = torch.zeros(1, dtype=torch.long)
    assert F.cross_entropy(peaked, target) < F.cross_entropy(flat, target)


def test_trimmed_padding_gives_the_same_text_features(trainer_packages, tiny_sd):
    """Training trims the padding after the end-of-text token; the pooled text features must not change."""
    import torch
    from transformers import CLIPTokenizer

    from t2i_trainer.build import train_reward

    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd / "tokenizer")
    texts = ["a red circle", "two blue stars on a white background", ""]
    full = train_reward.tokenize(tokenizer, texts)
    trimmed = train_reward.trim_padding(full)
    assert trimmed.shape[1] < full.shape[1]
    assert (trimmed[:, -1] == full.max()).any()
    torch.manual_seed(0)
    model = train_reward.RewardModel(**train_reward.MODEL_CONFIG).eval()
    with torch.no_grad():
        difference = (model.text_features(full) - model.text_features(trimmed)).abs().max()
    assert difference < 1e-5


@pytest.mark.parametrize("flag, value", [("--epochs", "0"), ("--batch", "0"), ("--aux-weight", "-1")])
def test_bad_settings_are_refused(trainer_packages, tiny_sd, tmp_path, capsys, flag, value):
    from t2i_trainer.build import train_reward

    data = rated_folder(tmp_path / "data", count=2)
    with pytest.raises(SystemExit) as exit_info:
        train_reward.main(["--data", str(data), "--tokenizer", str(tiny_sd / "tokenizer"),
                           "--out", str(tmp_path / "r"), flag, value])  # fmt: skip
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err
