"""t2i_trainer.jobs.lora (issue #26): the adapter starts at the base, trains alone, merges into the weights
exactly, is small and reloads.
"""

import json
import re
from pathlib import Path

import pytest

from repo_files import require_folder

UNET_SUFFIXES = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_SUFFIXES = ("q_proj", "k_proj", "v_proj", "out_proj")


@pytest.fixture(scope="module")
def tiny_base(tiny_sd) -> Path:
    return require_folder(tiny_sd / "diffusers")


def load_unet(base: Path):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(base / "unet").eval()


def load_text_encoder(base: Path):
    from transformers import CLIPTextModel

    return CLIPTextModel.from_pretrained(base / "text_encoder").eval()


def unet_inputs(unet, seed: int = 0, rows: int = 2) -> tuple:
    import torch

    generator = torch.Generator().manual_seed(seed)
    config = unet.config
    side = config.sample_size
    latents = torch.randn(rows, config.in_channels, side, side, generator=generator)
    states = torch.randn(rows, 7, config.cross_attention_dim, generator=generator)
    timesteps = torch.tensor([10, 700][:rows])
    return latents, timesteps, states


def predict(unet, inputs: tuple):
    import torch

    with torch.no_grad():
        return unet(*inputs).sample


def randomise(adapter, seed: int = 1, size: float = 0.05) -> None:
    """Gives every B (and A) random values, as training would, so that the update is not zero."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * size)


def weights_file(folder: Path, part: str) -> Path:
    return next((folder / part).glob("*.safetensors"))


# ------------------------------------------------------------------------------------------------------------
# The adapter
# ------------------------------------------------------------------------------------------------------------


def test_the_adapter_wraps_the_attention_projections_and_starts_at_the_base(trainer_packages, tiny_base):
    import torch

    from t2i_trainer.jobs import lora

    unet = load_unet(tiny_base)
    inputs = unet_inputs(unet)
    before = predict(unet, inputs)
    adapter = lora.pipeline_adapter(unet, load_text_encoder(tiny_base), rank=4, alpha=8.0, seed=0)
    paths = adapter.modules()
    # Every to_q/to_k/to_v/to_out.0 of self- and cross-attention, and nothing else.
    expected = [name for name, module in load_unet(tiny_base).named_modules() if name.endswith(UNET_SUFFIXES)]
    assert sorted(paths["unet"]) == sorted(expected) and len(expected) >= 16
    assert {".attn1." in path for path in paths["unet"]} == {True, False}
    assert paths["text_encoder"] and all(path.endswith(TEXT_SUFFIXES) for path in paths["text_encoder"])
    assert adapter.scale == 2.0
    # B is zero, A is not: the update is exactly zero, and the output is the base's to the bit.
    assert all(float(layer.lora_B.detach().abs().max()) == 0 for layer in adapter.layers.values())
    assert all(float(layer.lora_A.detach().abs().max()) > 0 for layer in adapter.layers.values())
    assert torch.equal(predict(unet, inputs), before)
    # The same seed draws the same A.
    again = lora.pipeline_adapter(load_unet(tiny_base), None, rank=4, alpha=8.0, seed=0)
    first = next(iter(adapter.layers.values())).lora_A
    assert torch.equal(next(iter(again.layers.values())).lora_A, first)


def test_cross_attention_only_adapts_attn2(trainer_packages, tiny_base):
    from t2i_trainer.jobs import lora

    adapter = lora.pipeline_adapter(
        load_unet(tiny_base), None, rank=2, alpha=None, seed=0, cross_attention_only=True
    )
    paths = adapter.modules()["unet"]
    assert paths and all(".attn2." in path for path in paths)
    assert set(adapter.models) == {"unet"}
    assert adapter.alpha == 2.0, "alpha defaults to the rank"


def test_merging_gives_the_unmerged_output_and_the_base_modules_back(trainer_packages, tiny_base):
    import torch

    from t2i_trainer.jobs import lora

    unet = load_unet(tiny_base)
    base_keys = set(unet.state_dict())
    inputs = unet_inputs(unet, seed=3)
    base_output = predict(unet, inputs)
    adapter = lora.pipeline_adapter(unet, None, rank=4, alpha=4.0, seed=0)
    randomise(adapter)
    unmerged = predict(unet, inputs)
    assert float((unmerged - base_output).abs().max()) > 1e-3, "the random adapter changes the output"
    lora.merge(adapter)
    merged = predict(unet, inputs)
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
    assert set(unet.state_dict()) == base_keys
    assert not any(isinstance(module, lora.LoRALinear) for module in unet.modules())
    with pytest.raises(RuntimeError, match="merged already"):
        lora.merge(adapter)


def test_only_the_lora_parameters_train_and_the_base_weights_stay(trainer_packages, tiny_base):
    import torch

    from t2i_trainer.jobs import lora

    unet, text_encoder = load_unet(tiny_base).train(), load_text_encoder(tiny_base).train()
    before = {f"unet.{k}": v.clone() for k, v in unet.state_dict().items()}
    before |= {f"text_encoder.{k}": v.clone() for k, v in text_encoder.state_dict().items()}
    adapter = lora.pipeline_adapter(unet, text_encoder, rank=4, alpha=4.0, seed=0)
    trained = {id(parameter) for parameter in adapter.parameters()}
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-2, weight_decay=1e-2)
    latents, timesteps, _ = unet_inputs(unet)
    ids = torch.randint(0, text_encoder.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        states = text_encoder(ids)[0]
        loss = unet(latents, timesteps, states).sample.square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    for model in (unet, text_encoder):
        for name, parameter in model.named_parameters():
            is_lora = id(parameter) in trained
            assert parameter.requires_grad == is_lora, name
            assert (parameter.grad is not None) == is_lora, name
    # The second step moved every B (the first gives A no gradient: B is zero), and no base weight.
    assert all(float(layer.lora_B.detach().abs().max()) > 0 for layer in adapter.layers.values())
    for model_name, model in (("unet", unet), ("text_encoder", text_encoder)):
        for key, value in model.state_dict().items():
            if key.endswith(("lora_A", "lora_B")):
                continue
            original = before[f"{model_name}.{key.replace('.base.', '.')}"]
            assert torch.equal(value, original), key


def test_the_saved_adapter_is_small_and_reloads_to_the_merged_weights(trainer_packages, tiny_base, tmp_path):
    import torch
    from safetensors import safe_open

    from t2i_trainer.jobs import lora

    unet, text_encoder = load_unet(tiny_base), load_text_encoder(tiny_base)
    adapter = lora.pipeline_adapter(unet, text_encoder, rank=4, alpha=2.0, seed=0)
    randomise(adapter)
    record = lora.save_adapter(adapter, tmp_path / "adapter", tiny_base)
    lora.merge(adapter)

    # Rank × (in + out) per layer, and a small share of the UNet.
    expected = sum(
        4 * (layer.base.in_features + layer.base.out_features) for layer in adapter.layers.values()
    )
    unet_parameters = sum(parameter.numel() for parameter in unet.parameters())
    assert record["parameters"] == expected
    assert record["model_parameters"]["unet"] == unet_parameters
    assert expected < 0.05 * unet_parameters
    loaded_record, tensors = lora.load_adapter(tmp_path / "adapter")
    assert loaded_record == json.loads(json.dumps(record))
    assert sum(tensor.numel() for tensor in tensors.values()) == expected
    assert (tmp_path / "adapter" / "adapter.safetensors").stat().st_size < 4 * expected + 64 * 1024
    assert (record["rank"], record["alpha"], record["scale"]) == (4, 2.0, 0.5)
    assert record["target_modules"] == {"unet": list(UNET_SUFFIXES), "text_encoder": list(TEXT_SUFFIXES)}
    assert record["base_weights"] == {
        "unet/diffusion_pytorch_model.safetensors": lora.sha256(weights_file(tiny_base, "unet")),
        "text_encoder/model.safetensors": lora.sha256(weights_file(tiny_base, "text_encoder")),
    }
    # diffusers' PEFT-format names, and its metadata header.
    pattern = re.compile(
        r"(unet|text_encoder)\.[\w.]+\.(to_q|to_k|to_v|to_out\.0|[qkv]_proj|out_proj)\.lora_[AB]\.weight"
    )
    assert all(pattern.fullmatch(key) for key in tensors), sorted(tensors)[:3]
    with safe_open(tmp_path / "adapter" / "adapter.safetensors", "pt") as file:
        metadata = json.loads(file.metadata()["lora_adapter_metadata"])
    assert (metadata["unet.r"], metadata["unet.lora_alpha"], metadata["text_encoder.r"]) == (4, 2.0, 4)

    # The base plus the saved adapter is the merged model, weight for weight.
    fresh_unet, fresh_text_encoder = load_unet(tiny_base), load_text_encoder(tiny_base)
    changed = lora.apply_adapter(
        tmp_path / "adapter", {"unet": fresh_unet, "text_encoder": fresh_text_encoder}
    )
    assert changed == len(adapter.layers)
    for merged, reloaded in ((unet, fresh_unet), (text_encoder, fresh_text_encoder)):
        merged_state, reloaded_state = merged.state_dict(), reloaded.state_dict()
        assert merged_state.keys() == reloaded_state.keys()
        for key in merged_state:
            torch.testing.assert_close(reloaded_state[key], merged_state[key], rtol=0, atol=1e-7, msg=key)
    with pytest.raises(ValueError, match="text_encoder"):
        lora.apply_adapter(tmp_path / "adapter", {"unet": load_unet(tiny_base)})


def test_shapes_sd_adapter_size(trainer_packages, shapes_sd):
    """The figures docs/fine-tuning.md gives for shapes-sd at rank 8."""
    from t2i_trainer.jobs import lora

    adapter = lora.pipeline_adapter(load_unet(require_folder(shapes_sd / "diffusers")), None, 8, None, 0)
    summary = adapter.summary()
    assert (summary["layers"], summary["parameters"]) == (56, 53_760)
    assert adapter.model_parameter_counts() == {"unet": 1_658_980}
