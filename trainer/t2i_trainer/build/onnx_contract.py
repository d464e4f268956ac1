"""The two ONNX input contracts the service accepts, and the graph surgery between them.

optimum exports the UNet with `timestep` as a float32 scalar and the text encoder with int64 `input_ids`.
Older exports (the diffusers ONNX scripts and many community conversions) take an int64 `timestep` of shape
[batch] and int32 `input_ids`. `build_legacy_copy` turns the first into the second without touching any
weight.

Needs only numpy, onnx and onnxruntime, so the Rust project's lightweight test environment can import it.
"""

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

ONNX_PARTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")
CONTEXT_LENGTH = 77
VOCAB_SIZE = 49408


def session(model_dir: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])


def describe_exports(root: Path, parts: tuple[str, ...] = ONNX_PARTS) -> dict:
    """Input and output names, types and shapes of every model, as onnxruntime reports them."""
    contracts = {}
    for part in parts:
        loaded = session(root / part)
        contracts[part] = {
            "inputs": [{"name": i.name, "type": i.type, "shape": i.shape} for i in loaded.get_inputs()],
            "outputs": [{"name": o.name, "type": o.type, "shape": o.shape} for o in loaded.get_outputs()],
        }
    return contracts


def graph_input(model: onnx.ModelProto, name: str) -> onnx.ValueInfoProto:
    return next(value for value in model.graph.input if value.name == name)


def prepend_nodes(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> None:
    all_nodes = [*nodes, *model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(all_nodes)


def rename_input_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name == old:
                node.input[index] = new


def retype_unet_timestep(model: onnx.ModelProto) -> onnx.ModelProto:
    """timestep: float32 scalar -> int64 [batch]. The graph casts it back and reads element 0."""
    rename_input_uses(model.graph, "timestep", "timestep_as_float")
    first_index = helper.make_tensor("legacy_timestep_first_index", TensorProto.INT64, [], [0])
    model.graph.initializer.append(first_index)
    cast = helper.make_node(
        "Cast", ["timestep"], ["legacy_timestep_float"], to=TensorProto.FLOAT, name="LegacyCast"
    )
    gather = helper.make_node(
        "Gather",
        ["legacy_timestep_float", first_index.name],
        ["timestep_as_float"],
        axis=0,
        name="LegacyGather",
    )
    prepend_nodes(model, [cast, gather])
    timestep = graph_input(model, "timestep")
    timestep.CopyFrom(helper.make_tensor_value_info("timestep", TensorProto.INT64, ["batch_size"]))
    return model


def retype_input_ids(model: onnx.ModelProto) -> onnx.ModelProto:
    """input_ids: int64 -> int32. The graph casts it back to int64 first."""
    rename_input_uses(model.graph, "input_ids", "input_ids_as_int64")
    cast = helper.make_node(
        "Cast", ["input_ids"], ["input_ids_as_int64"], to=TensorProto.INT64, name="LegacyCast"
    )
    prepend_nodes(model, [cast])
    graph_input(model, "input_ids").type.tensor_type.elem_type = TensorProto.INT32
    return model


def rewrite_model(path: Path, surgery: Callable[[onnx.ModelProto], onnx.ModelProto]) -> None:
    model = surgery(onnx.load(str(path)))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def build_legacy_copy(source: Path, target: Path) -> None:
    """Copy the ONNX export in `source` to `target` with the legacy input types. The diffusers weights that
    sit beside an export (`source/diffusers/`) are left out: the legacy copy is only for serving."""
    if target.exists():
        shutil.rmtree(target)
    top = Path(source).resolve()
    shutil.copytree(
        source, target, ignore=lambda folder, names: ["diffusers"] if Path(folder).resolve() == top else []
    )
    rewrite_model(target / "unet" / "model.onnx", retype_unet_timestep)
    rewrite_model(target / "text_encoder" / "model.onnx", retype_input_ids)


def check_legacy_matches(source: Path, legacy: Path, seed: int, timesteps=(1, 500, 981)) -> None:
    """Run both contracts on the same inputs and require bit-identical outputs."""
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(0, VOCAB_SIZE, size=(2, CONTEXT_LENGTH), dtype=np.int64)
    original = session(source / "text_encoder").run(None, {"input_ids": input_ids})
    retyped = session(legacy / "text_encoder").run(None, {"input_ids": input_ids.astype(np.int32)})
    require_equal("text_encoder", original, retyped)

    hidden_size = original[0].shape[-1]
    unet_inputs = {
        "sample": rng.standard_normal((2, 4, 8, 8), dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((2, CONTEXT_LENGTH, hidden_size), dtype=np.float32),
    }
    original_unet, legacy_unet = session(source / "unet"), session(legacy / "unet")
    for timestep in timesteps:
        original = original_unet.run(None, {**unet_inputs, "timestep": np.array(timestep, dtype=np.float32)})
        retyped = legacy_unet.run(None, {**unet_inputs, "timestep": np.full(2, timestep, dtype=np.int64)})
        require_equal(f"unet at timestep {timestep}", original, retyped)


def require_equal(name: str, expected: list[np.ndarray], actual: list[np.ndarray]) -> None:
    for want, got in zip(expected, actual, strict=True):
        if not np.array_equal(want, got):
            raise RuntimeError(
                f"legacy {name} differs from the original: max |diff| {np.abs(want - got).max()}"
            )
