"""optimum's UNet export config with one timestep per batch row: `timestep` is a float32 of shape [batch_size]
instead of optimum's scalar, so that the service can run requests at different denoising steps in one UNet
call. export_sd.py exports the service's models with it, and the GPU check's SD-1.5-sized export
(scripts/t2i_scripts/gpu/build_sd15.py) too. Only torch and optimum are imported here: the GPU machine has
those and not the rest of the trainer's environment.

Use it as `main_export(..., custom_onnx_configs={"unet": BatchTimestepUNetOnnxConfig(unet_config,
task="semantic-segmentation")})`, the task optimum gives its own UNet config.
"""

from __future__ import annotations

import torch
from optimum.exporters.onnx.model_configs import UNetOnnxConfig
from optimum.utils.input_generators import DTYPE_MAPPER, DummyTimestepInputGenerator

# The range of the dummy timesteps the exporter traces and validates with (Stable Diffusion's training range).
NUM_TRAIN_TIMESTEPS = 1000


class PerRowTimestepGenerator(DummyTimestepInputGenerator):
    """optimum's timestep generator, but `timestep` is a float of shape [batch_size] with a different value in
    every row (distinct integer parts plus a random fraction), so the exporter's own validation runs the graph
    on per-row timesteps."""

    def generate(
        self, input_name: str, framework: str = "pt", int_dtype: str = "int64", float_dtype: str = "fp32"
    ):
        if input_name != "timestep":
            return super().generate(input_name, framework, int_dtype, float_dtype)
        if framework != "pt":
            raise ValueError(f"only PyTorch dummy inputs are supported, not {framework!r}")
        whole = torch.randperm(max(self.batch_size, NUM_TRAIN_TIMESTEPS))[: self.batch_size]
        return (whole + torch.rand(self.batch_size)).to(DTYPE_MAPPER.pt(float_dtype))


class BatchTimestepUNetOnnxConfig(UNetOnnxConfig):
    """optimum's UNet config with `timestep` of shape [batch_size] (float32) instead of a scalar."""

    DUMMY_INPUT_GENERATOR_CLASSES = tuple(
        PerRowTimestepGenerator if generator is DummyTimestepInputGenerator else generator
        for generator in UNetOnnxConfig.DUMMY_INPUT_GENERATOR_CLASSES
    )

    @property
    def inputs(self) -> dict[str, dict[int, str]]:
        inputs = super().inputs
        inputs["timestep"] = {0: "batch_size"}
        return inputs
