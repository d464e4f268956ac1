"""LoRA for the fine-tune job (issue #26): low-rank adapters on the attention projections, trained while every
other weight stays frozen, then merged into the weights so the candidate exports and serves as any other.

A LoRA layer wraps a frozen nn.Linear (weight W, out × in) and adds a low-rank update to its output:

    y = W x + b + (alpha / rank) · B A x        A: rank × in, B: out × rank

A starts as nn.Linear initialises a weight (Kaiming-uniform, as PEFT does), drawn from a generator seeded
by the job, and B at zero: before the first step the wrapped model computes exactly the base's function.
`merge` folds the update into the weight, W ← W + (alpha / rank) · B A, and puts the plain nn.Linear back, so
the merged model has the base's modules and parameter names (save_pretrained and the ONNX export see no
difference).

Targets (`pipeline_adapter`): the UNet's attention projections `to_q`, `to_k`, `to_v` and `to_out.0`, of self-
(attn1) and cross-attention (attn2), or of cross-attention alone; and, when the text encoder is trained, its
attention's `q_proj`, `k_proj`, `v_proj` and `out_proj`.

The adapter on disk (`save_adapter`, read back by `load_adapter` and merged into a base by `apply_adapter`):

    adapter/adapter.safetensors
        For each wrapped layer, `<model>.<module path>.lora_A.weight` [rank, in] and `...lora_B.weight`
        [out, rank], with <model> `unet` or `text_encoder`: the key names of diffusers' (PEFT-format) LoRA
        files. The header's `lora_adapter_metadata` holds each model's PEFT LoraConfig fields as diffusers'
        `save_lora_weights` writes them (`unet.r`, `unet.lora_alpha`, `unet.target_modules`, ...), so that
        `pipeline.load_lora_weights(<version>/adapter, weight_name="adapter.safetensors")` reads the file
        where `peft` is installed (the trainer does not need it; checked by hand with peft 0.17.1 and this
        diffusers: the loaded UNet and text encoder predict as the merged ones do, to 2e-6).
    adapter/adapter.json
        {"format": "t2i-align-lora", "version": 1, "rank", "alpha", "scale" (alpha / rank),
         "target_modules": {model: [suffixes]}, "modules": {model: [module paths]},
         "parameters" (the adapter's), "model_parameters": {model: the whole model's},
         "weights": "adapter.safetensors", "base": the diffusers folder trained from,
         "base_weights": {file under base: SHA-256}}
"""

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from t2i_trainer.common.digest import sha256

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
FORMAT = "t2i-align-lora"
WEIGHTS_NAME = "adapter.safetensors"
CONFIG_NAME = "adapter.json"
# The safetensors header key diffusers reads a LoRA's PEFT config from (diffusers.loaders.lora_base).
METADATA_KEY = "lora_adapter_metadata"


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update (alpha / rank) · B A; B starts at zero."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator | None = None):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.rank = rank
        self.alpha = alpha
        self.scale = alpha / rank
        down = torch.empty(rank, base.in_features)
        nn.init.kaiming_uniform_(down, a=math.sqrt(5), generator=generator)
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(down.to(**like))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **like))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale

    def delta_weight(self) -> torch.Tensor:
        return self.scale * (self.lora_B @ self.lora_A)

    def merged(self) -> nn.Linear:
        """The base layer with the update folded into its weight (in place)."""
        with torch.no_grad():
            self.base.weight += self.delta_weight()
        return self.base


@dataclass
class Adapter:
    """The LoRA layers injected into some models (by name: `unet`, `text_encoder`), keyed `<model>.<path>`."""

    rank: int
    alpha: float
    models: dict[str, nn.Module]
    targets: dict[str, tuple[str, ...]]
    layers: dict[str, LoRALinear] = field(default_factory=dict)
    merged: bool = False

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def parameters(self) -> list[nn.Parameter]:
        """The trainable parameters, in a fixed order (a checkpoint stores them as a list)."""
        return [parameter for layer in self.layers.values() for parameter in (layer.lora_A, layer.lora_B)]

    def parameter_count(self) -> int:
        return sum(parameter.numel() for parameter in self.parameters())

    def model_parameter_counts(self) -> dict[str, int]:
        """Each adapted model's own parameters (the LoRA layers' left out), by name."""
        return {
            name: sum(
                parameter.numel()
                for key, parameter in model.named_parameters()
                if not key.endswith(("lora_A", "lora_B"))
            )
            for name, model in self.models.items()
        }

    def summary(self) -> dict:
        """Rank, alpha, wrapped layers, trainable parameters and their share of the adapted models'."""
        parameters = self.parameter_count()
        return {
            "rank": self.rank,
            "alpha": self.alpha,
            "layers": len(self.layers),
            "parameters": parameters,
            "share": round(parameters / sum(self.model_parameter_counts().values()), 6),
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The adapter's tensors under diffusers' PEFT-format names, on the CPU."""
        tensors = {}
        for key, layer in self.layers.items():
            tensors[f"{key}.lora_A.weight"] = layer.lora_A.detach().cpu().contiguous()
            tensors[f"{key}.lora_B.weight"] = layer.lora_B.detach().cpu().contiguous()
        return tensors

    def modules(self) -> dict[str, list[str]]:
        """The wrapped modules' paths, by model."""
        paths: dict[str, list[str]] = {name: [] for name in self.models}
        for key in self.layers:
            model, path = key.split(".", 1)
            paths[model].append(path)
        return paths


def target_paths(model: nn.Module, suffixes: Sequence[str], within: str | None = None) -> list[str]:
    """The paths of `model`'s nn.Linear modules that end with one of `suffixes` as whole path parts
    (`attn1.to_q`, never `xto_q`), and that contain the part `within` when it is given (`attn2`)."""
    paths = []
    for path, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        dotted = f".{path}"
        if not any(dotted.endswith(f".{suffix}") for suffix in suffixes):
            continue
        if within is not None and f".{within}." not in f"{dotted}.":
            continue
        paths.append(path)
    return paths


def inject(
    models: dict[str, tuple[nn.Module, Sequence[str]]],
    targets: dict[str, tuple[str, ...]],
    rank: int,
    alpha: float,
    seed: int,
) -> Adapter:
    """Freezes every parameter of each model and replaces each of its modules at the given paths (nn.Linear)
    by a LoRALinear around it. The A matrices are drawn in order from one generator seeded with `seed`, so the
    same models and seed give the same adapter."""
    if rank < 1:
        raise ValueError(f"a LoRA rank is at least 1. Given: {rank}")
    generator = torch.Generator().manual_seed(seed)
    adapter = Adapter(rank, alpha, {name: model for name, (model, _) in models.items()}, targets)
    for name, (model, paths) in models.items():
        model.requires_grad_(False)
        for path in paths:
            parent_path, _, child = path.rpartition(".")
            parent = model.get_submodule(parent_path)
            layer = LoRALinear(parent.get_submodule(child), rank, alpha, generator)
            setattr(parent, child, layer)
            adapter.layers[f"{name}.{path}"] = layer
    return adapter


def pipeline_adapter(
    unet: nn.Module,
    text_encoder: nn.Module | None,
    rank: int,
    alpha: float | None,
    seed: int,
    cross_attention_only: bool = False,
) -> Adapter:
    """LoRA on the UNet's attention projections (self- and cross-attention, or cross-attention only) and, when
    `text_encoder` is given, on its attention projections. `alpha` None means alpha = rank (scale 1)."""
    unet_paths = target_paths(unet, UNET_TARGETS, "attn2" if cross_attention_only else None)
    if not unet_paths:
        raise ValueError("the UNet has no attention projection (to_q, to_k, to_v, to_out.0) to adapt")
    models = {"unet": (unet, unet_paths)}
    targets = {"unet": UNET_TARGETS}
    if text_encoder is not None:
        text_paths = target_paths(text_encoder, TEXT_ENCODER_TARGETS)
        if not text_paths:
            raise ValueError(
                "the text encoder has no attention projection (q_proj, k_proj, v_proj, out_proj)"
            )
        models["text_encoder"] = (text_encoder, text_paths)
        targets["text_encoder"] = TEXT_ENCODER_TARGETS
    return inject(models, targets, rank, float(rank if alpha is None else alpha), seed)


def merge(adapter: Adapter) -> None:
    """Folds every LoRA update into its base weight (W ← W + scale · B A) and puts the plain nn.Linear back in
    its model. The adapter keeps its A and B (to be saved); merging twice is refused."""
    if adapter.merged:
        raise RuntimeError("the adapter is merged already")
    for key, layer in adapter.layers.items():
        name, path = key.split(".", 1)
        parent_path, _, child = path.rpartition(".")
        setattr(adapter.models[name].get_submodule(parent_path), child, layer.merged())
    adapter.merged = True


def peft_metadata(adapter: Adapter) -> dict:
    """Each model's PEFT LoraConfig fields, prefixed with the model's name, as diffusers writes them."""
    metadata = {}
    for name, paths in adapter.modules().items():
        metadata |= {
            f"{name}.r": adapter.rank,
            f"{name}.lora_alpha": adapter.alpha,
            f"{name}.target_modules": sorted(paths),
            f"{name}.rank_pattern": {},
            f"{name}.alpha_pattern": {},
            f"{name}.init_lora_weights": True,
            f"{name}.use_dora": False,
        }
    return metadata


def save_adapter(adapter: Adapter, folder: Path, base: Path | None = None) -> dict:
    """Writes adapter.safetensors and adapter.json into `folder` (created); returns adapter.json's record.
    `base` is the diffusers folder trained from: its weight files for the adapted models are digested, so a
    reader can tell whether a base is the one the adapter applies to."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", METADATA_KEY: json.dumps(peft_metadata(adapter), indent=2, sort_keys=True)}
    save_file(adapter.state_dict(), folder / WEIGHTS_NAME, metadata=metadata)
    base_weights = {}
    if base is not None:
        for name in adapter.models:
            for path in sorted((base / name).glob("*.safetensors")):
                base_weights[f"{name}/{path.name}"] = sha256(path)
    record = {
        "format": FORMAT,
        "version": 1,
        "rank": adapter.rank,
        "alpha": adapter.alpha,
        "scale": adapter.scale,
        "target_modules": {name: list(targets) for name, targets in adapter.targets.items()},
        "modules": adapter.modules(),
        "parameters": adapter.parameter_count(),
        "model_parameters": adapter.model_parameter_counts(),
        "weights": WEIGHTS_NAME,
        "base": None if base is None else str(base),
        "base_weights": base_weights,
    }
    (folder / CONFIG_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def load_adapter(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """adapter.json's record and the adapter's tensors (diffusers' PEFT-format names)."""
    from safetensors.torch import load_file

    record = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    if record.get("format") != FORMAT:
        raise ValueError(f"{folder / CONFIG_NAME} is not a {FORMAT} adapter: format {record.get('format')!r}")
    return record, load_file(folder / record.get("weights", WEIGHTS_NAME))


def apply_adapter(folder: Path, models: dict[str, nn.Module]) -> int:
    """Merges a saved adapter into models that hold the base's weights (`{"unet": unet, "text_encoder":
    ...}`): W ← W + scale · B A for each adapted layer. Returns how many layers changed. A model the adapter
    names but `models` lacks, a module that is not an nn.Linear, or a shape that differs is refused before any
    weight changes."""
    record, tensors = load_adapter(folder)
    scale = float(record["scale"])
    updates = []
    for name, paths in record["modules"].items():
        if paths and name not in models:
            raise ValueError(f"the adapter adapts `{name}`, which was not given")
        for path in paths:
            layer = models[name].get_submodule(path)
            down = tensors[f"{name}.{path}.lora_A.weight"]
            up = tensors[f"{name}.{path}.lora_B.weight"]
            if not isinstance(layer, nn.Linear) or (up.shape[0], down.shape[1]) != tuple(layer.weight.shape):
                raise ValueError(f"`{name}.{path}` is not the layer the adapter was trained on")
            updates.append((layer, down, up))
    with torch.no_grad():
        for layer, down, up in updates:
            weight = layer.weight
            weight += scale * (up.to(weight.device, weight.dtype) @ down.to(weight.device, weight.dtype))
    return len(updates)
