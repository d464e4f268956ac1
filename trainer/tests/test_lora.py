"""t2i_trainer.jobs.lora and the fine-tune's `lora_rank` (issue #26): the adapter starts at the base, trains
alone, merges into the weights exactly, is small and reloads; and real LoRA fine-tunes of tiny-sd export an
ONNX candidate that runs and differs from the base, resume from a checkpoint, and adapt the text encoder.
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from test_finetune import run_trainer, stdout_events, write_samples, write_spec

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


# ------------------------------------------------------------------------------------------------------------
# Real LoRA fine-tunes of tiny-sd
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        ({"lora_rank": -1}, "`lora_rank` must be between 0"),
        ({"lora_rank": 1025}, "`lora_rank` must be between 0"),
        ({"lora_rank": 2.0}, "`lora_rank` must be a finite integer"),
        ({"lora_rank": True}, "`lora_rank` must be a finite integer"),
        ({"lora_alpha": 0}, "`lora_alpha` must be between 0.001"),
        ({"lora_alpha": float("inf")}, "`lora_alpha` must be a finite number"),
        ({"lora_alpha": "8"}, "`lora_alpha` must be a finite number"),
    ],
)
def test_bad_lora_fields_are_refused_naming_them(trainer_packages, tiny_base, tmp_path, change, message):
    from t2i_trainer.jobs import finetune

    samples = tmp_path / "samples.jsonl"
    samples.write_text("")
    spec = {"base": str(tiny_base), "out": str(tmp_path / "out"), "samples": str(samples), **change}
    with pytest.raises(finetune.SpecError, match=re.escape(message)):
        finetune.parse_spec(spec)


def onnx_unet(folder: Path, sample: np.ndarray, timestep: int, states: np.ndarray) -> np.ndarray:
    """The UNet's prediction by ONNX Runtime: one timestep per row, or a scalar where the export wants one."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "unet" / "model.onnx"), providers=["CPUExecutionProvider"])
    spec = next(item for item in session.get_inputs() if item.name == "timestep")
    dtype = np.int64 if "int64" in spec.type else np.float32
    steps = np.full((len(sample),) if spec.shape else (), timestep, dtype=dtype)
    return session.run(None, {"sample": sample, "timestep": steps, "encoder_hidden_states": states})[0]


def test_a_lora_fine_tune_exports_a_candidate_that_runs_and_differs_from_the_base(
    trainer_packages, tiny_sd, tiny_base, tmp_path
):
    from safetensors.torch import load_file

    from t2i_trainer.jobs import lora

    out = tmp_path / "candidate"
    spec = write_spec(
        tmp_path / "job.json",
        {"base": str(tiny_base), "out": str(out), "samples": str(write_samples(tmp_path / "job", count=4)),
         "device": "cpu", "threads": 2, "pretrain": {"kind": "shapes_world", "images": 8}, "steps": 3,
         "batch_size": 4, "log_every": 1, "learning_rate": 1e-2, "lora_rank": 4, "lora_alpha": 8},
    )  # fmt: skip
    events = run_trainer(spec)
    names = [event["event"] for event in events]
    assert names == ["start", "data", "lora", "step", "step", "step", "export", "export", "done"]
    announced = events[2]
    assert (announced["rank"], announced["alpha"], announced["layers"]) == (4, 8.0, 32)
    assert 0 < announced["share"] < 0.05
    assert max(events[7]["max_abs_difference"].values()) <= 1e-4

    # The version's files: the merged weights, their ONNX export, and the adapter beside them.
    for part in ("text_encoder", "unet", "vae_decoder", "vae_encoder"):
        assert (out / part / "model.onnx").is_file(), part
    record = json.loads((out / "adapter" / "adapter.json").read_text())
    assert (record["rank"], record["alpha"], record["parameters"]) == (4, 8.0, announced["parameters"])
    assert record["base"] == str(tiny_base)
    assert json.loads((out / "finetune.json").read_text())["spec"]["lora_rank"] == 4

    # Only the adapted projections changed; applying the saved adapter to the base gives the merged weights.
    base_unet = load_file(weights_file(tiny_base, "unet"))
    merged_unet = load_file(weights_file(out / "diffusers", "unet"))
    changed = {key for key in base_unet if not bool((base_unet[key] == merged_unet[key]).all())}
    adapted = {f"{path}.weight" for path in record["modules"]["unet"]}
    assert changed == adapted
    base_text = load_file(weights_file(tiny_base, "text_encoder"))
    merged_text = load_file(weights_file(out / "diffusers", "text_encoder"))
    assert all(bool((base_text[key] == merged_text[key]).all()) for key in base_text), (
        "the text encoder is frozen"
    )
    unet = load_unet(tiny_base)
    lora.apply_adapter(out / "adapter", {"unet": unet})
    for key, value in unet.state_dict().items():
        np.testing.assert_allclose(value.numpy(), merged_unet[key].numpy(), rtol=0, atol=1e-6, err_msg=key)

    # ONNX Runtime runs the candidate's UNet, and it predicts differently from the base's.
    rng = np.random.default_rng(0)
    side = unet.config.sample_size
    sample = rng.standard_normal((2, 4, side, side)).astype(np.float32)
    states = rng.standard_normal((2, 77, unet.config.cross_attention_dim)).astype(np.float32)
    candidate, base = onnx_unet(out, sample, 500, states), onnx_unet(tiny_sd, sample, 500, states)
    assert candidate.shape == base.shape == sample.shape and np.isfinite(candidate).all()
    assert np.abs(candidate - base).max() > 1e-3


def test_a_lora_run_with_the_text_encoder_and_ema_resumes_from_its_checkpoint_where_the_whole_run_ends(
    trainer_packages, tiny_base, tmp_path, capsys, restore_sigterm
):
    import torch
    from safetensors.torch import load_file

    from t2i_trainer.jobs import finetune

    samples = write_samples(tmp_path / "job", count=4)
    common = {"base": str(tiny_base), "samples": str(samples), "device": "cpu", "steps": 4, "batch_size": 4,
              "log_every": 1, "export": False, "threads": 1, "learning_rate": 1e-2, "lora_rank": 2,
              "train_text_encoder": True, "ema_decay": 0.5,
              "pretrain": {"kind": "shapes_world", "images": 8}}  # fmt: skip

    def run(name: str, **extra) -> list[dict]:
        spec = write_spec(tmp_path / f"{name}.json", {**common, "out": str(tmp_path / name), **extra})
        assert finetune.main(["--spec", str(spec)]) == 0
        return stdout_events(capsys.readouterr().out)

    whole = run("whole")
    checkpoint = tmp_path / "checkpoint.pt"
    run("first", checkpoint=str(checkpoint), checkpoint_every=2)
    resumed = run("resumed", resume=str(checkpoint))
    losses = {event["step"]: event["loss"] for event in whole if event["event"] == "step"}
    steps = [(event["step"], event["loss"]) for event in resumed if event["event"] == "step"]
    assert steps == [(3, losses[3]), (4, losses[4])]

    # The checkpoint holds the adapter, its optimiser state and its EMA, not the models' weights.
    announced = next(event for event in whole if event["event"] == "lora")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert sum(tensor.numel() for tensor in state["parameters"]) == announced["parameters"]
    assert len(state["optimizer"]["state"]) == len(state["parameters"])
    assert len(state["ema"]["shadow_params"]) == len(state["parameters"])

    # The resumed run ends with the whole run's adapter and merged weights.
    for part in ("adapter/adapter.safetensors", "diffusers/unet/diffusion_pytorch_model.safetensors",
                 "diffusers/text_encoder/model.safetensors"):  # fmt: skip
        ended, resumed_ended = load_file(tmp_path / "whole" / part), load_file(tmp_path / "resumed" / part)
        assert all(torch.equal(ended[key], resumed_ended[key]) for key in ended), part

    # The text encoder's attention projections were adapted, and nothing else of it changed.
    record = json.loads((tmp_path / "whole" / "adapter" / "adapter.json").read_text())
    assert record["modules"]["text_encoder"]
    base = load_file(weights_file(tiny_base, "text_encoder"))
    merged = load_file(weights_file(tmp_path / "whole" / "diffusers", "text_encoder"))
    changed = {key for key in base if not torch.equal(base[key], merged[key])}
    assert changed == {f"{path}.weight" for path in record["modules"]["text_encoder"]}

    # A LoRA checkpoint does not resume a full fine-tune.
    spec = write_spec(tmp_path / "full.json", {**common, "out": str(tmp_path / "full"), "lora_rank": 0,
                                                "resume": str(checkpoint)})  # fmt: skip
    assert finetune.main(["--spec", str(spec)]) == 2
    errors = [event for event in stdout_events(capsys.readouterr().out) if event["event"] == "error"]
    assert "`resume`" in errors[0]["message"] and "other weights" in errors[0]["message"]
