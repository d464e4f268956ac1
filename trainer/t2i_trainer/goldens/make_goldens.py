"""Write the golden files that the Rust tests compare against.

Every number comes from the reference implementation (transformers' CLIPTokenizer, diffusers' schedulers,
optimum's ORTStableDiffusionPipeline) run on the tiny model that build_test_model.py exports. Run that first.

Files written under --output (default tests/golden):

* tokenizer.json: CLIP token ids for prompts with awkward text (case, whitespace, unicode, truncation).
* schedulers.json: full denoising loops of DDIM, Euler, Euler ancestral, DPM-Solver++ 2M, PNDM and LCM with a
  fake, seeded model output, recording every step's inputs and outputs; and, under "guidance_rescale",
  diffusers' rescale_noise_cfg on a small guided prediction.
* e2e_ddim.json, e2e_euler.json: a whole text-to-image run with fixed latents.
* e2e_wide_default.json, e2e_wide_56x40.json: the same on models/tiny-sd-wide (build_wide_model.py), a
  non-square model whose UNet has its weights in external data: at the size optimum picks when none is given
  (the model's own, 72×104), and at 56×40, a multiple of 8 that is not one of the UNet's downsampling.
* img2img.json: optimum's ORTStableDiffusionImg2ImgPipeline on models/tiny-sd: DDIM, PNDM and DPM-Solver++
  from a 32x32 image (no resize), Euler from a 50x37 image that it resizes to 48x32, with the two noises each
  run draws (the latent sample's, then add_noise's) recorded, and the output as 8-bit RGB. (diffusers' img2img
  pipeline cannot load tiny-sd-wide: it compares a list sample_size with an int.)
* sdxl.json: whole runs of optimum's ORTStableDiffusionXLPipeline on models/tiny-sdxl and tiny-sdxl-turbo
  (build_tiny_sdxl.py): with a negative prompt at the model's own size, without one (zeros, by
  force_zeros_for_empty_prompt) at a non-square size, Turbo's one step without guidance, and Euler with
  trailing spacing over 4 unguided steps; and the second tokenizer's ids for prompts where its `!` pad token
  differs from BPE.
* sdxl_img2img.json: optimum's ORTStableDiffusionXLImg2ImgPipeline on models/tiny-sdxl-refiner
  (build_tiny_sdxl.py --refiner-output: text_encoder_2 only, five time ids ending in an aesthetic score) with
  a negative prompt and the default aesthetic scores, and at 40x24 with scores 7 and 2; and on
  models/tiny-sdxl (six time ids). Each run records its starting image, its two noises, its timesteps and
  its 8-bit output.
* lcm.json: optimum's ORTLatentConsistencyModelPipeline on models/tiny-lcm (build_tiny_lcm.py): one step at
  guidance 8.5 and at 2 (non-square), from recorded latents, with the guidance-scale embedding the UNet takes
  as timestep_cond.

Tensors are flattened row-major next to a "shape" field. Floats are float32 values written in their shortest
decimal form, so parsing a number as f64 and casting it to f32 gives the exact float32 back.

Usage:
    python -m t2i_trainer.goldens.make_goldens --model models/tiny-sd --output tests/golden
"""

import argparse
import json
import logging
import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path

# Nothing here needs the model hub; huggingface_hub reads this variable when it is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import onnxruntime as ort
import torch
import transformers
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
)
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from optimum.onnxruntime import (
    ORTLatentConsistencyModelPipeline,
    ORTStableDiffusionImg2ImgPipeline,
    ORTStableDiffusionPipeline,
    ORTStableDiffusionXLImg2ImgPipeline,
    ORTStableDiffusionXLPipeline,
)
from transformers import CLIPTokenizer, CLIPTokenizerFast

SCHEDULER_CLASSES = {
    cls.__name__: cls
    for cls in (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        LCMScheduler,
        PNDMScheduler,
    )
}
LATENT_SHAPE = (1, 4, 8, 8)
# The LCM cases' latents: every scheduler works elementwise, and the top-level golden files have a size cap.
SMALL_LATENT_SHAPE = (1, 4, 4, 4)
PARTS = ("tokenizer", "schedulers", "e2e", "wide", "sdxl", "img2img", "lcm", "sdxl_img2img")
# (golden name, height, width) on the wide model; None lets optimum pick the model's default size.
WIDE_RUNS = (("e2e_wide_default", None, None), ("e2e_wide_56x40", 56, 40))

# Stable Diffusion 1.5's noise schedule, shared by most cases below.
SD15_BETAS = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=Path("models/tiny-sd"),
        help="Folder written by build_test_model.py (default: %(default)s).",
    )
    parser.add_argument(
        "--output",
        "--out",
        type=Path,
        default=Path("tests/golden"),
        help="Folder for the golden files (default: %(default)s).",
    )
    parser.add_argument(
        "--wide-model",
        type=Path,
        default=Path("models/tiny-sd-wide"),
        help="Folder written by build_wide_model.py (default: %(default)s).",
    )
    parser.add_argument(
        "--sdxl-model",
        type=Path,
        default=Path("models/tiny-sdxl"),
        help="Folder written by build_tiny_sdxl.py (default: %(default)s).",
    )
    parser.add_argument(
        "--sdxl-turbo-model",
        type=Path,
        default=Path("models/tiny-sdxl-turbo"),
        help="Its Turbo variant, from build_tiny_sdxl.py --turbo-output (default: %(default)s).",
    )
    parser.add_argument(
        "--sdxl-refiner-model",
        type=Path,
        default=Path("models/tiny-sdxl-refiner"),
        help="The refiner from build_tiny_sdxl.py --refiner-output (default: %(default)s).",
    )
    parser.add_argument(
        "--lcm-model",
        type=Path,
        default=Path("models/tiny-lcm"),
        help="Folder written by build_tiny_lcm.py (default: %(default)s).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Base seed for every random tensor (default: 0).")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="Which goldens to write (default: all of them).",
    )
    parser.add_argument(
        "--keep-scheduler-cases",
        action="store_true",
        help=(
            "schedulers: copy the cases the existing schedulers.json already records, unchanged, and run "
            "only the cases it lacks. torch's float32 rounding differs from one CPU to another (a 0-d "
            "`** 0.5` can land one ulp apart), so rerunning recorded cases elsewhere rewrites their last bit."
        ),
    )
    return parser.parse_args()


# ----------------------------------------------------------------------------------------------------
# JSON helpers
# ----------------------------------------------------------------------------------------------------


def float32_list(values) -> list[float]:
    """Flatten to float32 and write each value in the shortest decimal that round-trips through float32."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    flat = np.asarray(values, dtype=np.float32).reshape(-1)
    if not np.isfinite(flat).all():
        raise ValueError("golden tensors must be finite")
    written = [float(str(value)) for value in flat]
    if not np.array_equal(np.asarray(written, dtype=np.float32), flat):
        raise AssertionError("shortest-decimal float32 encoding did not round-trip")
    return written


def float32_scalar(value) -> float:
    return float32_list(np.asarray([float(value)]))[0]


def tensor_record(values) -> dict:
    shape = list(values.shape)
    return {"shape": shape, "data": float32_list(values)}


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n")
    print(json.dumps({"event": "wrote", "path": str(path), "bytes": path.stat().st_size}))


# ----------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------

LONG_PROMPT = (
    "a highly detailed matte painting of a sprawling futuristic city at dusk, towering glass skyscrapers, "
    "flying cars weaving between neon billboards, crowded market streets below, "
    "steam rising from food stalls, "
    "reflections on wet pavement after the rain, volumetric light, cinematic composition, wide angle lens, "
    "dramatic clouds, ultra realistic, 8k, trending on artstation, by greg rutkowski and alphonse mucha"
)

TOKENIZER_PROMPTS = [
    # plain
    "a photo of a cat",
    "a painting of a fox in the snow",
    "an astronaut riding a horse on mars",
    "a red circle on a white background",
    "blurry",
    "cat",
    "a",
    "the quick brown fox jumps over the lazy dog",
    "portrait of an old man, oil on canvas",
    "watercolor landscape with mountains and a lake",
    # case
    "A Photo Of A Cat",
    "A PHOTO OF A CAT",
    "aN aStRoNaUt",
    "NASA Rocket Launch",
    # whitespace
    "  a photo of a cat  ",
    "a  photo   of    a cat",
    "a\tphoto\tof\ta\tcat",
    "a photo\nof a cat",
    "a photo\r\nof a cat\n",
    "\n\n\ta cat\t\n",
    "a\u00a0photo\u2003of a cat",
    # punctuation
    "hello, world!",
    "a cat... a dog?!",
    "(masterpiece:1.2), [ugly], {best quality}",
    "cat/dog|bird;fish",
    "#hashtag @mention $100 50% a&b",
    "a-b_c=d+e*f^g~h`i",
    '"quoted" text',
    "!!!!!!!!!!!!",
    "<|startoftext|> is not special here",
    "<|endoftext|>",
    # digits
    "3 red cubes",
    "1,000",
    "12:30",
    "1234567890",
    "3.14159",
    "the year 2024",
    "4k 8k 16k",
    "a 1920x1080 wallpaper",
    # apostrophes and contractions
    "the cat's toy",
    "don't stop",
    "we're here",
    "they've gone",
    "I'm happy",
    "we'll see",
    "she'd know",
    "CAT'S TOY",
    "rock 'n' roll",
    "don\u2019t stop",
    # unicode
    "café au lait",
    "cafe\u0301 au lait",
    "naïve façade",
    "Straße in München",
    "東京の夜景",
    "一只猫",
    "고양이 사진",
    "кошка на крыше",
    "ΑΒΓ αβγ",
    "a cat 🐱 with a hat 🎩",
    "👨‍👩‍👧 family",
    "🇯🇵 flag",
    "résumé",
    "Ω ohm µ micro",
    "ﬁne ligature",
    "full\uff37idth ＡＢＣ",
    "zero\u200bwidth space",
    "em—dash – en-dash",
    "«guillemets»",
    # URLs and code
    "https://example.com/cat.png?size=large",
    "www.example.org",
    "user@example.com",
    "snake_case_name and CamelCaseName",
    # long (truncated)
    LONG_PROMPT,
    " ".join(["cat"] * 100),
    "a" * 300,
    " ".join(str(number) for number in range(80)),
    # empty and whitespace-only
    "",
    " ",
    "     ",
    "\t\n  \r\n",
]


def tokenizer_golden(tokenizer_dir: Path) -> dict:
    slow = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    fast = CLIPTokenizerFast.from_pretrained(str(tokenizer_dir))
    cases = []
    for prompt in TOKENIZER_PROMPTS:
        padded = dict(padding="max_length", max_length=slow.model_max_length, truncation=True)
        cases.append(
            {
                "prompt": prompt,
                "input_ids": slow(prompt, **padded).input_ids,
                "num_tokens_untruncated": len(slow(prompt).input_ids),
                "input_ids_fast": fast(prompt, **padded).input_ids,
            }
        )
    return {
        "model_max_length": slow.model_max_length,
        "pad_token_id": slow.pad_token_id,
        "bos_token_id": slow.bos_token_id,
        "eos_token_id": slow.eos_token_id,
        "vocab_size": len(slow),
        "reference": f"transformers {transformers.__version__} CLIPTokenizer (slow, ftfy.fix_text)",
        "note": (
            "input_ids come from the slow CLIPTokenizer that diffusers pipelines load. input_ids_fast "
            "come from CLIPTokenizerFast (the `tokenizers` library) on the same files; the two differ where "
            "ftfy rewrites text (curly quotes, ligatures, width variants) or unicode normalisation differs."
        ),
        "cases": cases,
    }


# ----------------------------------------------------------------------------------------------------
# Schedulers
# ----------------------------------------------------------------------------------------------------


def scheduler_cases() -> list[dict]:
    """Each case: scheduler class, config overrides, step count, step kwargs, whether it draws noise.
    New cases go at the end: a case's seeds follow from its position."""
    sd15 = {**SD15_BETAS, "set_alpha_to_one": False, "steps_offset": 1, "clip_sample": False}
    return [
        # DDIM
        case("ddim_leading_eps_sd15", "DDIMScheduler", sd15, 20),
        case(
            "ddim_trailing_vpred_eta05",
            "DDIMScheduler",
            {
                **SD15_BETAS,
                "timestep_spacing": "trailing",
                "prediction_type": "v_prediction",
                "clip_sample": False,
            },
            10,
            step_kwargs={"eta": 0.5},
            stochastic=True,
        ),
        case(
            "ddim_linspace_linear_clip",
            "DDIMScheduler",
            {
                "beta_schedule": "linear",
                "timestep_spacing": "linspace",
                "clip_sample": True,
                "set_alpha_to_one": True,
            },
            10,
        ),
        # Euler
        # Euler's own default spacing is linspace; SD 1.5's config (and so its pipelines) say leading.
        case(
            "euler_leading_eps_sd15",
            "EulerDiscreteScheduler",
            {**SD15_BETAS, "timestep_spacing": "leading", "steps_offset": 1},
            20,
        ),
        case(
            "euler_linspace_eps", "EulerDiscreteScheduler", {**SD15_BETAS, "timestep_spacing": "linspace"}, 10
        ),
        case(
            "euler_trailing_vpred",
            "EulerDiscreteScheduler",
            {**SD15_BETAS, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
            10,
        ),
        case(
            "euler_leading_vpred_squaredcos",
            "EulerDiscreteScheduler",
            {
                "beta_schedule": "squaredcos_cap_v2",
                "timestep_spacing": "leading",
                "prediction_type": "v_prediction",
            },
            10,
        ),
        # Euler ancestral
        case(
            "euler_ancestral_leading_sd15",
            "EulerAncestralDiscreteScheduler",
            {**SD15_BETAS, "timestep_spacing": "leading", "steps_offset": 1},
            20,
            stochastic=True,
        ),
        case(
            "euler_ancestral_trailing",
            "EulerAncestralDiscreteScheduler",
            {**SD15_BETAS, "timestep_spacing": "trailing"},
            10,
            stochastic=True,
        ),
        # DPM-Solver++ 2M
        dpmpp_2m("dpmpp2m_leading_eps_sd15", "leading", "epsilon", 20),
        dpmpp_2m("dpmpp2m_trailing_eps", "trailing", "epsilon", 10),
        dpmpp_2m("dpmpp2m_leading_vpred", "leading", "v_prediction", 10),
        dpmpp_2m("dpmpp2m_trailing_vpred_4steps", "trailing", "v_prediction", 4),
        # PNDM (PLMS only, as Stable Diffusion ships it)
        case(
            "pndm_leading_sd15",
            "PNDMScheduler",
            {**sd15, "skip_prk_steps": True},
            20,
        ),
        case(
            "pndm_linspace",
            "PNDMScheduler",
            {**SD15_BETAS, "skip_prk_steps": True, "timestep_spacing": "linspace", "set_alpha_to_one": False},
            10,
        ),
        case(
            "pndm_leading_sd15_4steps",
            "PNDMScheduler",
            {**sd15, "skip_prk_steps": True},
            4,
        ),
        # LCM draws noise at every step but the last. Few steps, small latents: the goldens have a size cap.
        # SD 1.5's own config, as LCM-LoRA's instructions build the scheduler from it.
        lcm("lcm_eps_sd15_4steps", sd15, 4),
        lcm("lcm_eps_8steps", SD15_BETAS, 8),
        # A zero-SNR v-prediction model: ᾱ is exactly 0 at the first timestep, 999.
        lcm(
            "lcm_vpred_zero_snr",
            {**SD15_BETAS, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True},
            2,
        ),
        lcm(
            "lcm_original_steps_20_clip",
            {**SD15_BETAS, "original_inference_steps": 20, "timestep_scaling": 5.0, "clip_sample": True},
            3,
        ),
    ]


def case(
    name,
    class_name,
    config,
    steps,
    step_kwargs=None,
    stochastic=False,
    noise_at_last_step=True,
    shape=LATENT_SHAPE,
) -> dict:
    """`stochastic` cases draw noise at every step, or, without `noise_at_last_step`, at all but the last."""
    return {
        "name": name,
        "class": class_name,
        "overrides": config,
        "num_inference_steps": steps,
        "step_kwargs": step_kwargs or {},
        "stochastic": stochastic,
        "noise_at_last_step": noise_at_last_step,
        "shape": shape,
    }


def lcm(name: str, config: dict, steps: int) -> dict:
    small = SMALL_LATENT_SHAPE
    return case(name, "LCMScheduler", config, steps, stochastic=True, noise_at_last_step=False, shape=small)


def dpmpp_2m(name: str, spacing: str, prediction: str, steps: int) -> dict:
    config = {
        **SD15_BETAS,
        "algorithm_type": "dpmsolver++",
        "solver_order": 2,
        "lower_order_final": True,
        "timestep_spacing": spacing,
        "prediction_type": prediction,
        "steps_offset": 1 if spacing == "leading" else 0,
    }
    return case(name, "DPMSolverMultistepScheduler", config, steps)


def json_config(config) -> dict:
    """scheduler.config without diffusers' bookkeeping keys. Non-finite numbers are left out, so a reader's
    default applies: DPMSolverMultistepScheduler's lambda_min_clipped defaults to -inf, which diffusers itself
    writes as the non-JSON token `-Infinity`."""
    cleaned = {}
    for key, value in dict(config).items():
        if key.startswith("_"):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        cleaned[key] = list(value) if isinstance(value, tuple) else value
    return cleaned


@contextmanager
def recorded_noise(scheduler):
    """Record every tensor the scheduler's module draws with randn_tensor."""
    module = sys.modules[type(scheduler).__module__]
    drawn: list[torch.Tensor] = []
    original = getattr(module, "randn_tensor", None)
    if original is None:  # this scheduler never draws noise
        yield drawn
        return

    def recording_randn_tensor(*args, **kwargs):
        noise = original(*args, **kwargs)
        drawn.append(noise.clone())
        return noise

    module.randn_tensor = recording_randn_tensor
    try:
        yield drawn
    finally:
        module.randn_tensor = original


def run_scheduler_case(spec: dict, seed: int) -> dict:
    scheduler_class = SCHEDULER_CLASSES[spec["class"]]
    scheduler = scheduler_class.from_config(spec["overrides"])
    scheduler.set_timesteps(spec["num_inference_steps"])

    model_rng = torch.Generator().manual_seed(seed)
    noise_rng = torch.Generator().manual_seed(seed + 1)
    init_noise_sigma = float(scheduler.init_noise_sigma)
    shape = spec["shape"]
    sample = torch.randn(shape, generator=model_rng, dtype=torch.float32) * init_noise_sigma
    initial_sample = sample.clone()

    steps = []
    with recorded_noise(scheduler) as drawn:
        for step_index, timestep in enumerate(scheduler.timesteps):
            scaled = scheduler.scale_model_input(sample, timestep)
            # A stand-in for the UNet: seeded noise plus a little of the sample, as real predictions carry.
            model_output = 0.5 * torch.randn(shape, generator=model_rng, dtype=torch.float32) + 0.1 * sample
            drawn.clear()
            kwargs = dict(spec["step_kwargs"])
            if spec["stochastic"]:
                kwargs["generator"] = noise_rng
            prev_sample = scheduler.step(model_output, timestep, sample, **kwargs).prev_sample
            last_step = step_index == len(scheduler.timesteps) - 1
            draws = int(spec["stochastic"] and (spec["noise_at_last_step"] or not last_step))
            if len(drawn) != draws:
                raise RuntimeError(
                    f"{spec['name']}: expected {draws} noise draws at step {step_index}, saw {len(drawn)}"
                )
            steps.append(
                {
                    "step_index": step_index,
                    "timestep": float32_scalar(timestep),
                    "scaled_input": float32_list(scaled),
                    "model_output": float32_list(model_output),
                    "noise": float32_list(drawn[0]) if draws else None,
                    "prev_sample": float32_list(prev_sample),
                }
            )
            sample = prev_sample

    sigmas = getattr(scheduler, "sigmas", None)
    return {
        "name": spec["name"],
        "class": spec["class"],
        "config": json_config(scheduler.config),
        "num_inference_steps": spec["num_inference_steps"],
        "step_kwargs": spec["step_kwargs"],
        "timesteps": float32_list(scheduler.timesteps.to(torch.float32)),
        "sigmas": float32_list(sigmas) if sigmas is not None else None,
        "init_noise_sigma": float32_scalar(init_noise_sigma),
        "shape": list(shape),
        "sample": float32_list(initial_sample),
        "steps": steps,
    }


def schedulers_golden(seed: int, recorded: dict | None = None) -> dict:
    """`recorded`: cases by name, copied instead of run (--keep-scheduler-cases)."""
    recorded = recorded or {}
    cases = [
        recorded.get(spec["name"]) or run_scheduler_case(spec, seed + 10 * index)
        for index, spec in enumerate(scheduler_cases())
    ]
    return {
        "reference": "diffusers schedulers, float32 on CPU",
        "note": (
            "sample = randn * init_noise_sigma; per step: scaled_input = scale_model_input(sample, t); "
            "model_output = 0.5 * randn + 0.1 * sample; "
            "prev_sample = step(model_output, t, sample, **step_kwargs, "
            "noise drawn as recorded). noise is null where the scheduler uses none "
            "(LCMScheduler draws none at its last step)."
        ),
        "cases": cases,
        "guidance_rescale": guidance_rescale_golden(seed),
    }


GUIDANCE_RESCALE_SHAPE = (2, 4, 2, 4)
GUIDANCE_RESCALES = (0.3, 0.7, 1.0)


def guidance_rescale_golden(seed: int) -> dict:
    """Classifier-free guidance at scale 7.5, then rescale_noise_cfg at a few guidance_rescale values, on two
    images whose predictions differ in scale, so that the standard deviations must be taken per image."""
    rng = torch.Generator().manual_seed(seed + 7)
    image_scale = torch.tensor([1.0, 3.0]).reshape(2, 1, 1, 1)
    uncond = torch.randn(GUIDANCE_RESCALE_SHAPE, generator=rng, dtype=torch.float32) * image_scale
    text = uncond + 0.3 * torch.randn(GUIDANCE_RESCALE_SHAPE, generator=rng, dtype=torch.float32)
    guidance_scale = 7.5
    # The same expression as StableDiffusionPipeline's denoising loop.
    guided = uncond + guidance_scale * (text - uncond)
    return {
        "reference": "diffusers StableDiffusionPipeline guidance and rescale_noise_cfg, float32 on CPU",
        "shape": list(GUIDANCE_RESCALE_SHAPE),
        "guidance_scale": guidance_scale,
        "noise_pred_uncond": float32_list(uncond),
        "noise_pred_text": float32_list(text),
        "noise_pred_guided": float32_list(guided),
        "cases": [
            {
                "guidance_rescale": rescale,
                "noise_pred": float32_list(rescale_noise_cfg(guided, text, guidance_rescale=rescale)),
            }
            for rescale in GUIDANCE_RESCALES
        ],
    }


# ----------------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------------

E2E_PROMPT = "a red circle on a white background"
E2E_NEGATIVE_PROMPT = "blurry"
E2E_RUNS = {
    "ddim": (DDIMScheduler, 20),
    "euler": (EulerDiscreteScheduler, 15),
}


def load_onnx_pipeline(model_dir: Path, pipeline_class=ORTStableDiffusionPipeline):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    pipeline = pipeline_class.from_pretrained(
        str(model_dir), session_options=options, provider="CPUExecutionProvider", local_files_only=True
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def e2e_golden(
    pipeline: ORTStableDiffusionPipeline,
    scheduler_name: str,
    seed: int,
    height: int | None = 64,
    width: int | None = 64,
) -> dict:
    """One whole run from seeded latents. With `height` and `width` None, optimum picks the size itself (the
    model's default, from the UNet's sample_size); the golden records the size it rendered."""
    scheduler_class, steps = E2E_RUNS[scheduler_name]
    pipeline.scheduler = scheduler_class.from_config(pipeline.scheduler.config)
    guidance_scale = 7.5
    sample_size = pipeline.unet.config.sample_size
    default_cells = sample_size if isinstance(sample_size, list | tuple) else (sample_size, sample_size)
    factor = pipeline.vae_scale_factor
    latent_height = height // factor if height else default_cells[0]
    latent_width = width // factor if width else default_cells[1]
    latent_shape = (1, 4, latent_height, latent_width)

    latents = torch.randn(latent_shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    prompt_embeds, negative_prompt_embeds = pipeline.encode_prompt(
        E2E_PROMPT,
        device=torch.device("cpu"),
        num_images_per_prompt=1,
        do_classifier_free_guidance=True,
        negative_prompt=E2E_NEGATIVE_PROMPT,
    )
    # The pipeline multiplies the latents by init_noise_sigma itself; a copy keeps the record untouched.
    image = pipeline(
        prompt=E2E_PROMPT,
        negative_prompt=E2E_NEGATIVE_PROMPT,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        width=width,
        height=height,
        num_images_per_prompt=1,
        latents=latents.clone(),
        output_type="np",
    ).images[0]
    return {
        "prompt": E2E_PROMPT,
        "negative_prompt": E2E_NEGATIVE_PROMPT,
        "scheduler": scheduler_name,
        "scheduler_class": scheduler_class.__name__,
        "scheduler_config": json_config(pipeline.scheduler.config),
        "steps": steps,
        "guidance_scale": guidance_scale,
        "requested_size": None if height is None else [height, width],
        "width": image.shape[1],
        "height": image.shape[0],
        "init_noise_sigma": float32_scalar(pipeline.scheduler.init_noise_sigma),
        "timesteps": float32_list(pipeline.scheduler.timesteps.to(torch.float32)),
        "latents": float32_list(latents),
        "latents_shape": list(latents.shape),
        "prompt_embeds": tensor_record(prompt_embeds),
        "negative_prompt_embeds": tensor_record(negative_prompt_embeds),
        "image": float32_list(image),
        "image_shape": list(image.shape),
        "image_u8": image_u8(image),
    }


# (name, model: "base" or "turbo", scheduler class, timestep spacing override, steps, guidance,
# negative prompt, height, width). None for the size lets optimum pick the model's own. None for the
# negative prompt is diffusers' "no negative prompt", which force_zeros_for_empty_prompt turns into zeros.
SDXL_RUNS = (
    ("euler_negative", "base", EulerDiscreteScheduler, None, 15, 5.0, E2E_NEGATIVE_PROMPT, None, None),
    ("euler_zeros_24x40", "base", EulerDiscreteScheduler, None, 8, 5.0, None, 24, 40),
    ("turbo_one_step", "turbo", EulerAncestralDiscreteScheduler, None, 1, 0.0, None, None, None),
    ("turbo_euler_trailing", "turbo", EulerDiscreteScheduler, "trailing", 4, 0.0, None, None, None),
)
SDXL_TOKENIZER_PROMPTS = ("wow!", "a red circle!! on blue", "hello ! world", "no exclamation here")


def sdxl_run(pipeline, name, scheduler_class, spacing, steps, guidance_scale, negative, height, width, seed):
    config = dict(pipeline.scheduler.config)
    if spacing is not None:
        config["timestep_spacing"] = spacing
    pipeline.scheduler = scheduler_class.from_config(config)
    factor = pipeline.vae_scale_factor
    cells = pipeline.unet.config.sample_size
    latent_shape = (1, 4, (height or cells * factor) // factor, (width or cells * factor) // factor)
    latents = torch.randn(latent_shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    image = pipeline(
        prompt=E2E_PROMPT,
        negative_prompt=negative,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        height=height,
        width=width,
        latents=latents.clone(),
        # A stochastic scheduler's noise is torch's; the runs use only steps where it is multiplied by zero.
        generator=torch.Generator().manual_seed(seed + 1),
        output_type="np",
    ).images[0]
    return {
        "name": name,
        "prompt": E2E_PROMPT,
        "negative_prompt": negative,
        "scheduler_class": scheduler_class.__name__,
        "scheduler_config": json_config(pipeline.scheduler.config),
        "steps": steps,
        "guidance_scale": guidance_scale,
        "requested_size": None if height is None else [height, width],
        "height": image.shape[0],
        "width": image.shape[1],
        "timesteps": float32_list(pipeline.scheduler.timesteps.to(torch.float32)),
        "latents": float32_list(latents),
        "latents_shape": list(latents.shape),
        "image": float32_list(image),
        "image_shape": list(image.shape),
    }


def sdxl_golden(base: Path, turbo: Path, seed: int) -> dict:
    pipelines = {
        "base": load_onnx_pipeline(base, ORTStableDiffusionXLPipeline),
        "turbo": load_onnx_pipeline(turbo, ORTStableDiffusionXLPipeline),
    }
    runs = []
    for index, (name, model, scheduler_class, spacing, steps, guidance, negative, height, width) in enumerate(
        SDXL_RUNS
    ):
        pipeline = pipelines[model]
        original = pipeline.scheduler
        run = sdxl_run(
            pipeline, name, scheduler_class, spacing, steps, guidance, negative, height, width, seed + index
        )
        run["model"] = model
        runs.append(run)
        pipeline.scheduler = original
    tokenizer_2 = CLIPTokenizer.from_pretrained(str(base / "tokenizer_2"))
    return {
        "reference": f"optimum ORTStableDiffusionXLPipeline (diffusers {diffusers_version()}), CPU",
        "runs": runs,
        "tokenizer_2": [
            {"prompt": prompt, "input_ids": tokenizer_2(prompt, padding="max_length").input_ids}
            for prompt in SDXL_TOKENIZER_PROMPTS
        ],
    }


# (name, init image, scheduler class, steps, strength, guidance)
IMG2IMG_RUNS = (
    ("ddim", "square", DDIMScheduler, 20, 0.6, 7.5),
    ("pndm", "square", PNDMScheduler, 10, 0.75, 7.5),
    ("dpm", "square", DPMSolverMultistepScheduler, 10, 0.5, 7.5),
    ("euler_resized", "odd", EulerDiscreteScheduler, 12, 0.5, 7.5),
)
# (width, height) of the starting images: one the tiny model renders as it is, one diffusers resizes (to
# 48x32, multiples of its VAE factor of 8 that are also the multiples of 16 tiny-sd renders).
IMG2IMG_IMAGES = {"square": (32, 32), "odd": (50, 37)}


def img2img_image(width: int, height: int, seed: int):
    """A smooth, seeded RGB image: the VAE sees structure, and Lanczos has edges to ring on."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(0.1, 0.5), rng.uniform(0.1, 0.5), rng.uniform(0, 6.28)
        channels.append(127.5 + 120 * np.sin(fx * x + fy * y + phase))
    return Image.fromarray(np.stack(channels, axis=-1).round().astype(np.uint8), "RGB")


def img2img_golden(model: Path, seed: int) -> dict:
    pipeline = load_onnx_pipeline(model, ORTStableDiffusionImg2ImgPipeline)
    images = {
        name: img2img_image(width, height, seed + index)
        for index, (name, (width, height)) in enumerate(IMG2IMG_IMAGES.items())
    }
    runs = []
    for index, (name, image_name, scheduler_class, steps, strength, guidance) in enumerate(IMG2IMG_RUNS):
        original = pipeline.scheduler
        pipeline.scheduler = scheduler_class.from_config(original.config)
        run_seed = seed + 100 + index
        image = images[image_name]
        factor = pipeline.vae_scale_factor
        # diffusers' image processor rounds the size down to the VAE factor, then resizes with Lanczos.
        width, height = (side - side % factor for side in image.size)
        latent_shape = (1, 4, height // factor, width // factor)
        recorded = img2img_run(
            pipeline,
            image,
            latent_shape,
            run_seed,
            prompt=E2E_PROMPT,
            negative_prompt=E2E_NEGATIVE_PROMPT,
            strength=strength,
            num_inference_steps=steps,
            guidance_scale=guidance,
        )
        runs.append(
            {
                "name": name,
                "image": image_name,
                "scheduler_class": scheduler_class.__name__,
                "steps": steps,
                "strength": strength,
                "guidance_scale": guidance,
                "prompt": E2E_PROMPT,
                "negative_prompt": E2E_NEGATIVE_PROMPT,
                **recorded,
            }
        )
        pipeline.scheduler = original
    return {
        "reference": f"optimum ORTStableDiffusionImg2ImgPipeline (diffusers {diffusers_version()}), CPU",
        "images": {
            name: {"width": image.size[0], "height": image.size[1], "rgb": list(image.tobytes())}
            for name, image in images.items()
        },
        "runs": runs,
    }


def img2img_run(pipeline, image, latent_shape: tuple, run_seed: int, **arguments) -> dict:
    """One img2img run from `image` with its generator seeded `run_seed`, and what every img2img golden
    records of it: the output's size, the timesteps, the generator's two draws in the pipeline's order (the
    encoded image's latent sample, then the noise that add_noise mixes in), replayed from the same seed, and
    the 8-bit output."""
    replay = torch.Generator().manual_seed(run_seed)
    posterior = torch.randn(latent_shape, generator=replay, dtype=torch.float32)
    noise = torch.randn(latent_shape, generator=replay, dtype=torch.float32)
    output = pipeline(
        image=image, generator=torch.Generator().manual_seed(run_seed), output_type="np", **arguments
    ).images[0]
    return {
        "width": output.shape[1],
        "height": output.shape[0],
        "timesteps": float32_list(pipeline.scheduler.timesteps.to(torch.float32)),
        "posterior_noise": float32_list(posterior),
        "noise": float32_list(noise),
        "image_u8": image_u8(output),
    }


def image_u8(output: np.ndarray) -> list[int]:
    """A pipeline's float image as the 8-bit values diffusers' PIL output rounds it to, flattened."""
    return (output * 255).round().astype(np.uint8).reshape(-1).tolist()


# (name, model: "base" or "refiner", image (width, height), steps, strength, guidance, negative prompt,
# aesthetic score, negative aesthetic score). None for a score is diffusers' default (6.0 and 2.5).
SDXL_IMG2IMG_RUNS = (
    ("refiner_negative", "refiner", (32, 32), 10, 0.6, 5.0, E2E_NEGATIVE_PROMPT, None, None),
    ("refiner_scores_40x24", "refiner", (40, 24), 8, 0.5, 4.0, None, 7.0, 2.0),
    ("base_img2img", "base", (32, 32), 10, 0.5, 5.0, E2E_NEGATIVE_PROMPT, None, None),
)


def sdxl_img2img_golden(base: Path, refiner: Path, seed: int) -> dict:
    """optimum's ORTStableDiffusionXLImg2ImgPipeline: on the refiner (only text_encoder_2, aesthetic-score
    time ids, the negative prompt's own scores, no zeros for an empty negative prompt) and on the base model
    (time ids of sizes). Euler draws no noise per step; the two draws of each run are recorded."""
    pipelines = {
        "base": load_onnx_pipeline(base, ORTStableDiffusionXLImg2ImgPipeline),
        "refiner": load_onnx_pipeline(refiner, ORTStableDiffusionXLImg2ImgPipeline),
    }
    runs = []
    for index, (name, model, size, steps, strength, guidance, negative, score, negative_score) in enumerate(
        SDXL_IMG2IMG_RUNS
    ):
        pipeline = pipelines[model]
        run_seed = seed + index
        image = img2img_image(*size, run_seed)
        factor = pipeline.vae_scale_factor
        latent_shape = (1, 4, size[1] // factor, size[0] // factor)
        scores = {}
        if score is not None:
            scores = {"aesthetic_score": score, "negative_aesthetic_score": negative_score}
        recorded = img2img_run(
            pipeline,
            image,
            latent_shape,
            run_seed,
            prompt=E2E_PROMPT,
            negative_prompt=negative,
            strength=strength,
            num_inference_steps=steps,
            guidance_scale=guidance,
            **scores,
        )
        runs.append(
            {
                "name": name,
                "model": model,
                "prompt": E2E_PROMPT,
                "negative_prompt": negative,
                "steps": steps,
                "strength": strength,
                "guidance_scale": guidance,
                "aesthetic_score": score,
                "negative_aesthetic_score": negative_score,
                "init_image": {"width": size[0], "height": size[1], "rgb": list(image.tobytes())},
                **recorded,
            }
        )
    return {
        "reference": f"optimum ORTStableDiffusionXLImg2ImgPipeline (diffusers {diffusers_version()}), CPU",
        "runs": runs,
    }


# (name, guidance scale, height, width). One step each: LCMScheduler draws no noise at its last step, so the
# run is deterministic given the latents, and the timestep_cond embedding of the guidance is what is tested.
LCM_RUNS = (("lcm_guidance_8_5", 8.5, 32, 32), ("lcm_guidance_2_48x32", 2.0, 48, 32))


def lcm_golden(model: Path, seed: int) -> dict:
    """optimum's ORTLatentConsistencyModelPipeline: no classifier-free guidance, the guidance scale embedded
    and fed to the UNet as timestep_cond. Records the embedding too, for the Rust unit test."""
    pipeline = load_onnx_pipeline(model, ORTLatentConsistencyModelPipeline)
    dim = pipeline.unet.config.time_cond_proj_dim
    runs = []
    for index, (name, guidance, height, width) in enumerate(LCM_RUNS):
        factor = pipeline.vae_scale_factor
        latent_shape = (1, 4, height // factor, width // factor)
        generator = torch.Generator().manual_seed(seed + index)
        latents = torch.randn(latent_shape, generator=generator, dtype=torch.float32)
        # The pipeline's own expression (LatentConsistencyModelPipeline.__call__).
        w = torch.tensor(guidance - 1).repeat(1)
        embedding = pipeline.get_guidance_scale_embedding(w, embedding_dim=dim)
        output = pipeline(
            prompt=E2E_PROMPT,
            num_inference_steps=1,
            guidance_scale=guidance,
            height=height,
            width=width,
            latents=latents.clone(),
            output_type="np",
        ).images[0]
        runs.append(
            {
                "name": name,
                "prompt": E2E_PROMPT,
                "steps": 1,
                "guidance_scale": guidance,
                "height": output.shape[0],
                "width": output.shape[1],
                "timesteps": float32_list(pipeline.scheduler.timesteps.to(torch.float32)),
                "timestep_cond": float32_list(embedding),
                "latents": float32_list(latents),
                "latents_shape": list(latents.shape),
                "image_u8": image_u8(output),
            }
        )
    return {
        "reference": f"optimum ORTLatentConsistencyModelPipeline (diffusers {diffusers_version()}), CPU",
        "time_cond_proj_dim": dim,
        "runs": runs,
    }


def diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def main() -> None:
    args = parse_args()
    torch.set_num_threads(2)
    transformers.logging.set_verbosity_error()  # the long prompts are meant to overflow 77 tokens
    logging.getLogger("optimum").setLevel(logging.ERROR)

    if "tokenizer" in args.parts:
        write_json(args.output / "tokenizer.json", tokenizer_golden(args.model / "tokenizer"))
    if "schedulers" in args.parts:
        path = args.output / "schedulers.json"
        recorded = {}
        if args.keep_scheduler_cases and path.exists():
            recorded = {case["name"]: case for case in json.loads(path.read_text(encoding="utf-8"))["cases"]}
        write_json(path, schedulers_golden(args.seed, recorded))
    if "e2e" in args.parts:
        pipeline = load_onnx_pipeline(args.model)
        for scheduler_name in E2E_RUNS:
            golden = e2e_golden(pipeline, scheduler_name, args.seed + 1000)
            write_json(args.output / f"e2e_{scheduler_name}.json", golden)
    if "wide" in args.parts:
        pipeline = load_onnx_pipeline(args.wide_model)
        for name, height, width in WIDE_RUNS:
            golden = e2e_golden(pipeline, "ddim", args.seed + 2000, height=height, width=width)
            write_json(args.output / f"{name}.json", golden)
    if "sdxl" in args.parts:
        golden = sdxl_golden(args.sdxl_model, args.sdxl_turbo_model, args.seed + 3000)
        write_json(args.output / "sdxl.json", golden)
    if "img2img" in args.parts:
        write_json(args.output / "img2img.json", img2img_golden(args.model, args.seed + 4000))
    if "sdxl_img2img" in args.parts:
        golden = sdxl_img2img_golden(args.sdxl_model, args.sdxl_refiner_model, args.seed + 6000)
        write_json(args.output / "sdxl_img2img.json", golden)
    if "lcm" in args.parts:
        write_json(args.output / "lcm.json", lcm_golden(args.lcm_model, args.seed + 5000))


if __name__ == "__main__":
    main()
