"""The golden files must be well formed and agree with the reference implementation they come from."""

import sys

import numpy as np
import pytest

from repo_files import GOLDEN_DIR, read_golden

# A guard against writing tensors nobody reads, not a budget: raised from 3 MiB when SDXL's and img2img's
# goldens joined the scheduler and SD 1.x ones (their images are 32x32, and img2img's 8-bit).
MAX_GOLDEN_BYTES = 3.5 * 1024 * 1024
SCHEDULER_CLASSES = {
    "DDIMScheduler",
    "DPMSolverMultistepScheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "LCMScheduler",
    "PNDMScheduler",
}


# torch picks its elementwise kernels and libm paths by CPU, so the same diffusers code gives results
# that differ in the last bits from one CPU to another (measured: up to 7.2e-7 of the sample's largest
# magnitude, on a Sapphire Rapids Xeon against the goldens' machine). A wrong formula is off by far more.
REPLAY_TOLERANCE = 4e-6


def assert_replays(actual, desired) -> None:
    """`actual` equals `desired` to within REPLAY_TOLERANCE of desired's largest magnitude, or of 1 if that
    is smaller."""
    desired = np.float32(desired)
    scale = max(float(np.max(np.abs(desired))), 1.0)
    np.testing.assert_allclose(actual, desired, rtol=0, atol=REPLAY_TOLERANCE * scale)


def scheduler_case_names() -> list[str]:
    if not (GOLDEN_DIR / "schedulers.json").exists():
        return []
    return [case["name"] for case in read_golden("schedulers.json")["cases"]]


def test_goldens_are_small():
    assert sum(path.stat().st_size for path in GOLDEN_DIR.glob("*.json")) < MAX_GOLDEN_BYTES


def test_tokenizer_golden_is_well_formed():
    golden = read_golden("tokenizer.json")
    bos, eos = golden["bos_token_id"], golden["eos_token_id"]
    assert golden["model_max_length"] == 77
    assert golden["pad_token_id"] == eos == 49407
    assert len(golden["cases"]) >= 70
    for case in golden["cases"]:
        ids = case["input_ids"]
        assert len(ids) == 77 and ids[0] == bos, case["prompt"]
        kept = min(case["num_tokens_untruncated"], 77)
        assert ids[kept - 1] == eos, case["prompt"]
        assert ids[kept:] == [golden["pad_token_id"]] * (77 - kept), case["prompt"]
    by_prompt = {case["prompt"]: case for case in golden["cases"]}
    assert by_prompt["a photo of a cat"]["input_ids"][:7] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert by_prompt[""]["num_tokens_untruncated"] == 2
    assert any(case["num_tokens_untruncated"] > 77 for case in golden["cases"])
    assert any(case["prompt"] and not case["prompt"].strip() for case in golden["cases"])


def test_scheduler_golden_covers_the_brief():
    cases = read_golden("schedulers.json")["cases"]
    assert len(cases) >= 14
    assert {case["class"] for case in cases} == SCHEDULER_CLASSES
    assert {case["config"]["beta_schedule"] for case in cases} == {
        "scaled_linear",
        "linear",
        "squaredcos_cap_v2",
    }
    stochastic = [case["name"] for case in cases if case["steps"][0]["noise"] is not None]
    assert stochastic == [
        "ddim_trailing_vpred_eta05",
        "euler_ancestral_leading_sd15",
        "euler_ancestral_trailing",
        "lcm_eps_sd15_4steps",
        "lcm_eps_8steps",
        "lcm_vpred_zero_snr",
        "lcm_original_steps_20_clip",
    ]
    # Noise at every step, except LCM's last, whose clean estimate is the result.
    for case in cases:
        drawn = [step["noise"] is not None for step in case["steps"]]
        if case["class"] == "LCMScheduler":
            assert drawn == [True] * (len(drawn) - 1) + [False], case["name"]
        else:
            assert len(set(drawn)) == 1, case["name"]
    for case in cases:
        assert [step["step_index"] for step in case["steps"]] == list(range(len(case["timesteps"])))
        assert [step["timestep"] for step in case["steps"]] == case["timesteps"]


@pytest.mark.parametrize(
    "name", ["e2e_ddim.json", "e2e_euler.json", "e2e_wide_default.json", "e2e_wide_56x40.json"]
)
def test_e2e_golden_is_consistent(name):
    golden = read_golden(name)
    image = np.float32(golden["image"])
    assert golden["image_shape"] == [golden["height"], golden["width"], 3]
    assert image.size == np.prod(golden["image_shape"])
    assert 0.0 <= image.min() and image.max() <= 1.0
    np.testing.assert_array_equal(np.round(image * 255).astype(np.uint8), np.uint8(golden["image_u8"]))
    assert len(golden["latents"]) == np.prod(golden["latents_shape"])
    # VAE factor 8: the latents are the image's size over 8, non-square on the wide model.
    assert [side * 8 for side in golden["latents_shape"][2:]] == [golden["height"], golden["width"]]
    assert golden["prompt_embeds"]["shape"] == golden["negative_prompt_embeds"]["shape"] == [1, 77, 32]


def test_tokenizer_golden_matches_clip_tokenizer(trainer_packages, tiny_sd):
    from transformers import CLIPTokenizer

    from t2i_trainer.goldens.make_goldens import TOKENIZER_PROMPTS

    golden = read_golden("tokenizer.json")
    tokenizer = CLIPTokenizer.from_pretrained(str(tiny_sd / "tokenizer"))
    assert [case["prompt"] for case in golden["cases"]] == TOKENIZER_PROMPTS
    for case in golden["cases"]:
        padded = tokenizer(case["prompt"], padding="max_length", max_length=77, truncation=True).input_ids
        assert case["input_ids"] == padded, case["prompt"]
        assert case["num_tokens_untruncated"] == len(tokenizer(case["prompt"]).input_ids)


@pytest.mark.parametrize("case_name", scheduler_case_names())
def test_scheduler_golden_replays(trainer_packages, monkeypatch, case_name):
    import torch

    from t2i_trainer.goldens.make_goldens import SCHEDULER_CLASSES as CLASSES

    case = next(case for case in read_golden("schedulers.json")["cases"] if case["name"] == case_name)
    scheduler = CLASSES[case["class"]].from_config(case["config"])
    scheduler.set_timesteps(case["num_inference_steps"])
    np.testing.assert_array_equal(
        scheduler.timesteps.to(torch.float32).numpy(), np.float32(case["timesteps"])
    )
    assert np.float32(scheduler.init_noise_sigma) == np.float32(case["init_noise_sigma"])

    def as_tensor(values):
        return torch.tensor(np.float32(values).reshape(case["shape"]))

    # Stochastic steps must reproduce from the recorded noise alone.
    recorded_noise = []
    module = sys.modules[type(scheduler).__module__]
    if hasattr(module, "randn_tensor"):
        monkeypatch.setattr(module, "randn_tensor", lambda *args, **kwargs: recorded_noise[0])

    sample = as_tensor(case["sample"])
    for step in case["steps"]:
        timestep = scheduler.timesteps[step["step_index"]]
        scaled = scheduler.scale_model_input(sample, timestep)
        assert_replays(scaled.numpy().reshape(-1), step["scaled_input"])
        recorded_noise[:] = [as_tensor(step["noise"] or np.zeros(case["shape"]))]
        model_output = as_tensor(step["model_output"])
        prev_sample = scheduler.step(model_output, timestep, sample, **case["step_kwargs"]).prev_sample
        assert_replays(prev_sample.numpy().reshape(-1), step["prev_sample"])
        sample = prev_sample


def test_guidance_rescale_golden_replays(trainer_packages):
    import torch
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    golden = read_golden("schedulers.json")["guidance_rescale"]

    def as_tensor(values):
        return torch.tensor(np.float32(values).reshape(golden["shape"]))

    uncond, text = as_tensor(golden["noise_pred_uncond"]), as_tensor(golden["noise_pred_text"])
    guided = uncond + golden["guidance_scale"] * (text - uncond)
    assert_replays(guided.numpy().reshape(-1), golden["noise_pred_guided"])
    assert [case["guidance_rescale"] for case in golden["cases"]] == [0.3, 0.7, 1.0]
    for case in golden["cases"]:
        rescaled = rescale_noise_cfg(guided, text, guidance_rescale=case["guidance_rescale"])
        assert_replays(rescaled.numpy().reshape(-1), case["noise_pred"])


def test_scheduler_golden_lists_the_scripted_cases(trainer_packages):
    from t2i_trainer.goldens.make_goldens import scheduler_cases

    assert scheduler_case_names() == [spec["name"] for spec in scheduler_cases()]
