"""The committed default models: each ONNX graph equals its PyTorch model within 1e-4 (issue #3)."""

import json

import numpy as np
import pytest

TOLERANCE = 1e-4


def test_shapes_sd_onnx_matches_its_diffusers_weights(trainer_packages, shapes_sd):
    from diffusers import StableDiffusionPipeline

    from t2i_trainer.build import export_sd

    pipeline = StableDiffusionPipeline.from_pretrained(shapes_sd / "diffusers")
    differences = export_sd.parity(pipeline, shapes_sd)
    assert set(differences) == {"text_encoder", "unet", "vae_decoder", "vae_encoder"}
    assert max(differences.values()) <= TOLERANCE, differences


def test_tiny_sd_onnx_matches_its_diffusers_weights(trainer_packages, tiny_sd):
    """models/tiny-sd/diffusers, the weights fine-tune jobs start from, are those of the committed graphs."""
    from diffusers import StableDiffusionPipeline

    from t2i_trainer.build import export_sd

    pipeline = StableDiffusionPipeline.from_pretrained(tiny_sd / "diffusers")
    differences = export_sd.parity(pipeline, tiny_sd)
    assert max(differences.values()) <= TOLERANCE, differences


def test_shapes_reward_onnx_matches_its_pytorch_weights(trainer_packages, shapes_reward):
    from transformers import CLIPTokenizer

    from t2i_trainer.build import train_reward
    from t2i_trainer.build.shapes_world import all_prompts, render, sample_rng

    model = train_reward.load_model(shapes_reward)
    tokenizer = CLIPTokenizer.from_pretrained(shapes_reward / "tokenizer")
    prompts = all_prompts()[::50]
    images = np.stack([np.asarray(render(p, sample_rng(7, i))) for i, p in enumerate(prompts)])
    difference = train_reward.onnx_difference(
        model,
        shapes_reward / "model.onnx",
        train_reward.preprocess(images),
        train_reward.tokenize(tokenizer, [p.text for p in prompts]),
    )
    assert difference <= TOLERANCE


def test_shapes_sd_unet_takes_a_timestep_per_row(shapes_sd):
    """export_sd.py's UNet: a float32 timestep of shape [batch_size], checked per row against PyTorch."""
    from t2i_trainer.build.onnx_contract import describe_exports

    unet = {i["name"]: (i["type"], i["shape"]) for i in describe_exports(shapes_sd)["unet"]["inputs"]}
    assert unet["timestep"] == ("tensor(float)", ["batch_size"])
    rows = json.loads((shapes_sd / "export.json").read_text())["unet_rows"]
    assert len(set(rows["timesteps"])) == len(rows["timesteps"]) > 1
    assert max(rows["onnx_vs_torch_batch"] + rows["onnx_vs_torch_each_row_alone"]) <= TOLERANCE


def test_shapes_sd_serves_the_guidance_its_sweep_chose(shapes_sd):
    served = json.loads((shapes_sd / "t2i-align.json").read_text())
    results = json.loads((shapes_sd / "guidance_sweep.json").read_text())["results"]
    best = max(results, key=lambda scale: (results[scale]["attributes_matched"], -float(scale)))
    assert served["default_guidance_scale"] == float(best)


@pytest.mark.parametrize("kind", ["reward_head"])
def test_committed_reward_manifest_describes_the_graph(shapes_reward, kind):
    manifest = json.loads((shapes_reward / "manifest.json").read_text())
    assert manifest["kind"] == kind
    assert manifest["inputs"]["input_ids"] == {"dtype": "int64", "shape": ["batch", 77]}
    assert manifest["image"]["center_crop"] == {"height": 64, "width": 64}
