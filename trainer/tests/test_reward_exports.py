"""export_clip_reward.py, export_open_clip_reward.py, export_aesthetic_reward.py, export_image_reward.py and
reward_goldens.py: the reward exports, their manifests and the goldens that the Rust parity test reads (issues
#4 and #27)."""

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
    for name in (
        "shapes-reward",
        "tiny-clip-reward",
        "tiny-open-clip-reward",
        "tiny-aesthetic-reward",
        "tiny-image-reward",
    ):
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


def test_tiny_open_clip_exports_the_cosine_with_open_clips_tokens(trainer_packages, tmp_path):
    import onnxruntime as ort
    import open_clip

    from t2i_trainer.build import export_open_clip_reward

    out, goldens = tmp_path / "tiny-open-clip-reward", tmp_path / "goldens"
    assert export_open_clip_reward.main(["--tiny-random", "--out", str(out), "--goldens", str(goldens)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "clip_similarity" and manifest["score"]["formula"] == "cos"
    assert "logit_scale" not in manifest["score"] and manifest["text"]["attention_mask"] is False
    assert manifest["image"]["center_crop"]["offset"] == "round_half_even"
    config = json.loads((out / "tokenizer" / "tokenizer_config.json").read_text())
    assert config["pad_token"] == "!"
    assert {token["content"] for token in config["added_tokens_decoder"].values()} == {
        "<|startoftext|>",
        "<|endoftext|>",
    }
    # The graph's cosine, on open_clip's own tokens and pixels, is the golden score.
    record = json.loads((goldens / "tiny-open-clip-reward.json").read_text())
    assert record["reference"].startswith("open_clip")
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=77)
    pixels = np.asarray(record["pixel_values"]["values"], dtype=np.float32).reshape(1, 3, 32, 32)
    case = next(c for c in record["cases"] if c["image"] == record["pixel_values"]["image"])
    image, text = session.run(
        None, {"pixel_values": pixels, "input_ids": tokenizer([case["prompt"]]).numpy()}
    )
    assert abs(float(image[0] @ text[0]) - case["score"]) < 1e-4
    assert [t["input_ids"][:4] for t in record["tokens"]][0] == [49406, 2781, 256, 320]


def test_tiny_aesthetic_exports_an_image_head_that_ignores_the_prompt(trainer_packages, tmp_path):
    import onnxruntime as ort

    from t2i_trainer.build import export_aesthetic_reward

    out, goldens = tmp_path / "tiny-aesthetic-reward", tmp_path / "goldens"
    assert export_aesthetic_reward.main(["--tiny-random", "--out", str(out), "--goldens", str(goldens)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "image_head" and "text" not in manifest
    assert manifest["output"] == {"name": "score"}
    record = json.loads((goldens / "tiny-aesthetic-reward.json").read_text())
    by_image: dict[str, set[float]] = {}
    for case in record["cases"]:
        by_image.setdefault(case["image"], set()).add(round(case["score"], 6))
    assert all(len(scores) == 1 for scores in by_image.values()), by_image
    assert len({next(iter(scores)) for scores in by_image.values()}) == len(by_image)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    pixels = np.asarray(record["pixel_values"]["values"], dtype=np.float32).reshape(1, 3, 32, 32)
    (score,) = session.run(None, {"pixel_values": pixels})
    assert abs(float(score[0]) - next(iter(by_image[record["pixel_values"]["image"]]))) < 1e-4


@pytest.mark.parametrize(
    "module, argv, words",
    [
        (
            "export_open_clip_reward",
            ["--arch", "No-Such-ViT", "--out", "OUT"],
            "not an open_clip architecture",
        ),
        ("export_open_clip_reward", ["--arch", "ViT-B-32", "--out", "OUT"], "needs --checkpoint"),
        ("export_image_reward", ["--checkpoint", "/nonexistent.pt", "--out", "OUT"], "is not a file"),
        ("export_image_reward", ["--checkpoint", __file__, "--out", "OUT"], "needs --bert"),
        (
            "export_aesthetic_reward",
            ["--clip", "/nonexistent", "--out", "OUT"],
            "not a transformers CLIP folder",
        ),
    ],
)
def test_new_exports_refuse_bad_arguments(trainer_packages, tmp_path, capsys, module, argv, words):
    import importlib

    main = importlib.import_module(f"t2i_trainer.build.{module}").main
    argv = [arg.replace("OUT", str(tmp_path / "x")) for arg in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert words in capsys.readouterr().err


def test_tiny_image_reward_exports_a_normalised_reward_head(trainer_packages, tmp_path):
    import onnxruntime as ort
    from transformers import AutoTokenizer

    from t2i_trainer.build import export_image_reward

    out, goldens = tmp_path / "tiny-image-reward", tmp_path / "goldens"
    assert export_image_reward.main(["--tiny-random", "--out", str(out), "--goldens", str(goldens)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "reward_head" and manifest["output"] == {"name": "reward"}
    assert manifest["text"] == {"tokenizer": "tokenizer", "max_length": 35, "attention_mask": True}
    assert manifest["image"]["resize"] == {"shortest_edge": 32, "filter": "bicubic"}
    assert manifest["image"]["center_crop"]["offset"] == "round_half_even"  # torchvision's CenterCrop
    crop = json.loads((goldens / "tiny-image-reward.json").read_text())["crop"]
    assert crop["shape"] == [3, 32, 32] and (goldens / crop["image"]).is_file()
    normalize = manifest["score"]["normalize"]
    assert normalize == {"mean": export_image_reward.REWARD_MEAN, "std": export_image_reward.REWARD_STD}
    # The graph's raw reward, on the reference's pixels and the exported fast tokenizer's ids, normalised as
    # the manifest says, is the golden score (computed with the slow tokenizer).
    record = json.loads((goldens / "tiny-image-reward.json").read_text())
    assert record["reference"].startswith("ImageReward's")
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    assert tokenizer.convert_tokens_to_ids("[ENC]") == len(tokenizer) - 1
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    pixels = np.asarray(record["pixel_values"]["values"], dtype=np.float32).reshape(1, 3, 32, 32)
    for case in [c for c in record["cases"] if c["image"] == record["pixel_values"]["image"]]:
        text = tokenizer([case["prompt"]], padding="max_length", max_length=35, return_tensors="np")
        (raw,) = session.run(
            None,
            {
                "pixel_values": pixels,
                "input_ids": text["input_ids"].astype(np.int64),
                "attention_mask": text["attention_mask"].astype(np.int64),
            },
        )
        score = (float(raw[0]) - normalize["mean"]) / normalize["std"]
        assert abs(score - case["score"]) < 1e-4, case
    assert len({round(c["score"], 3) for c in record["cases"]}) > len(record["cases"]) // 2


def test_image_reward_checkpoints_load_strictly(trainer_packages, tmp_path):
    import torch

    from t2i_trainer.build import export_image_reward

    checkpoint = export_image_reward.build_tiny_random(tmp_path, seed=0)
    state = torch.load(checkpoint, weights_only=True)
    assert any(key.startswith("blip.visual_encoder.blocks.1.attn.qkv") for key in state)
    graph, _ = export_image_reward.load(checkpoint, tmp_path, tiny=True)
    assert torch.equal(graph.mlp.layers[0].weight, state["mlp.layers.0.weight"])
    # A key short: refused, naming it.
    del state["blip.text_encoder.encoder.layer.0.crossattention.self.key.weight"]
    torch.save(state, checkpoint)
    with pytest.raises(SystemExit, match="crossattention.self.key.weight"):
        export_image_reward.load(checkpoint, tmp_path, tiny=True)
    # A visual-encoder key of another naming: refused, naming it.
    state = {"blip.visual_encoder.blocks.0.attn.q.weight": torch.zeros(1)}
    torch.save(state, checkpoint)
    with pytest.raises(SystemExit, match="blocks.0.attn.q.weight"):
        export_image_reward.load(checkpoint, tmp_path, tiny=True)
