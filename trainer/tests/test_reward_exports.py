"""export_clip_reward.py and reward_goldens.py: the CLIP-similarity export, its manifest and the goldens that
the Rust parity test reads (issue #4)."""

import json

import numpy as np
import pytest

from repo_files import REPO_ROOT


def test_tiny_clip_exports_with_a_manifest_and_goldens_that_onnx_agrees_with(trainer_packages, tmp_path):
    import onnxruntime as ort
    from PIL import Image
    from transformers import CLIPTokenizer

    from t2i_trainer.build import export_clip_reward
    from t2i_trainer.goldens.reward_goldens import image_processor

    out = tmp_path / "tiny-clip-reward"
    goldens = tmp_path / "goldens"
    assert export_clip_reward.main(["--tiny-random", "--out", str(out), "--goldens", str(goldens)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "clip_similarity"
    assert manifest["image"]["resize"] == {"shortest_edge": 40, "filter": "bicubic"}
    assert manifest["image"]["center_crop"] == {"height": 32, "width": 32}
    assert manifest["text"]["attention_mask"] is True
    assert manifest["score"]["logit_scale"] > 1
    assert not out.with_name(out.name + ".partial").exists()

    # The ONNX graph, fed as the manifest says, reproduces the PyTorch goldens.
    record = json.loads((goldens / "tiny-clip-reward.json").read_text())
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    tokenizer = CLIPTokenizer.from_pretrained(out)
    processor = image_processor(manifest)
    for case in record["cases"][:4]:
        image = Image.open(goldens / case["image"]).convert("RGB")
        text = tokenizer([case["prompt"]], padding="max_length", max_length=77, return_tensors="np")
        outputs = dict(
            zip(
                [o.name for o in session.get_outputs()],
                session.run(
                    None,
                    {
                        "input_ids": text["input_ids"].astype(np.int64),
                        "attention_mask": text["attention_mask"].astype(np.int64),
                        "pixel_values": processor(images=[image], return_tensors="np")["pixel_values"],
                    },
                ),
                strict=True,
            )
        )
        a, b = outputs["image_embeds"][0], outputs["text_embeds"][0]
        score = manifest["score"]["logit_scale"] * float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        assert abs(score - case["score"]) < 1e-4, case


def test_committed_goldens_belong_to_the_committed_models():
    for name in ("shapes-reward", "tiny-clip-reward"):
        record = json.loads((REPO_ROOT / "tests" / "golden" / "reward" / f"{name}.json").read_text())
        assert record["model"] == name
        assert (REPO_ROOT / "models" / name / "manifest.json").is_file()
        for case in record["cases"]:
            assert (REPO_ROOT / "tests" / "golden" / "reward" / case["image"]).is_file()


def test_shapes_goldens_match_the_committed_weights(trainer_packages, tmp_path):
    from t2i_trainer.goldens import reward_goldens

    record = reward_goldens.main(
        ["--model", str(REPO_ROOT / "models" / "shapes-reward"), "--out", str(tmp_path)]
    )
    assert record == 0
    fresh = json.loads((tmp_path / "shapes-reward.json").read_text())
    committed = json.loads((REPO_ROOT / "tests" / "golden" / "reward" / "shapes-reward.json").read_text())
    worst = max(abs(a["score"] - b["score"]) for a, b in zip(fresh["cases"], committed["cases"], strict=True))
    assert worst < 1e-6, (
        "tests/golden/reward is stale: run `make models` or t2i_trainer.goldens.reward_goldens"
    )


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--model", "/nonexistent/clip", "--out", "OUT"], "not a transformers model folder"),
        (["--tiny-random", "--out", "/nonexistent/parent/x"], "parent folder does not exist"),
        (["--out", "OUT"], "one of the arguments"),
    ],
)
def test_export_refuses_bad_arguments(trainer_packages, tmp_path, capsys, argv, words):
    from t2i_trainer.build import export_clip_reward

    argv = [arg.replace("OUT", str(tmp_path / "x")) for arg in argv]
    with pytest.raises(SystemExit) as exit_info:
        export_clip_reward.main(argv)
    assert exit_info.value.code == 2
    assert words in capsys.readouterr().err


def test_goldens_refuse_a_folder_without_a_manifest(trainer_packages, tmp_path, capsys):
    from t2i_trainer.goldens import reward_goldens

    with pytest.raises(SystemExit) as exit_info:
        reward_goldens.main(["--model", str(tmp_path), "--out", str(tmp_path / "g")])
    assert exit_info.value.code == 2
    assert "no manifest.json" in capsys.readouterr().err
