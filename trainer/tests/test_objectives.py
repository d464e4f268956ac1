"""t2i_trainer.jobs.objectives (issue #26): the Diffusion-DPO and Diffusion-KTO losses against their formulas
written out in scalar math, the pairing and labelling rules, and a short real fine-tune per objective from
models/tiny-sd/diffusers.

At the first step the trained UNet is still the reference, so every implicit reward is 0: dpo's loss is
exactly log 2 and kto's exactly 1 - σ(0) = 0.5. After a few steps the losses move away from those values,
which they could not if the reference were not a frozen copy.
"""

import json
import math
import socket
from pathlib import Path

import numpy as np
import pytest

from repo_files import require_folder
from t2i_trainer.build.shapes_world import parse_prompt, render, sample_rng

DPO_PAIR_SAMPLES = [
    # (prompt, reward): ratings are 1 and 0, the rest reward-model scores.
    ("a red circle", 1.0),
    ("a red circle", 0.0),
    ("a red circle", 0.9),
    ("three triangles", 0.8),
    ("three triangles", 0.3),
    ("a star on a black background", 0.6),
]


@pytest.fixture(scope="session")
def tiny_base(tiny_sd) -> Path:
    return require_folder(tiny_sd / "diffusers")


@pytest.fixture
def restore_sigterm():
    """finetune.main installs a SIGTERM handler; put pytest's back afterwards."""
    import signal

    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def tensor(values):
    import torch

    return torch.tensor(values, dtype=torch.float64)


# ------------------------------------------------------------------------------------------------------------
# The losses, against the formulas
# ------------------------------------------------------------------------------------------------------------


def test_dpo_loss_is_the_papers_formula(trainer_packages):
    """-log σ(-β/2 · ((e_w - e_l) - (e_ref,w - e_ref,l))), averaged over pairs."""
    from t2i_trainer.jobs import objectives

    model_w, model_l = [0.30, 0.10, 0.50], [0.20, 0.40, 0.50]
    ref_w, ref_l = [0.25, 0.20, 0.45], [0.25, 0.30, 0.55]
    beta = 10.0
    expected = []
    for mw, ml, rw, rl in zip(model_w, model_l, ref_w, ref_l, strict=True):
        # The paper's grouping: how much the model improved on the reference for x_w, minus for x_l.
        inside = -beta / 2 * ((mw - rw) - (ml - rl))
        expected.append(-math.log(sigmoid(inside)))
    args = [tensor(v) for v in (model_w, model_l, ref_w, ref_l)]
    loss = objectives.dpo_loss(*args, beta)
    assert float(loss) == pytest.approx(sum(expected) / 3, rel=1e-12)
    logits = objectives.dpo_logits(*args, beta)
    assert [float(x) for x in logits] == pytest.approx([-0.5, 1.0, -0.5], rel=1e-12)


def test_dpo_loss_falls_as_the_model_favours_the_preferred_image(trainer_packages):
    import torch

    from t2i_trainer.jobs import objectives

    model_w = tensor([0.3]).requires_grad_(True)
    model_l = tensor([0.3]).requires_grad_(True)
    loss = objectives.dpo_loss(model_w, model_l, tensor([0.3]), tensor([0.3]), 100.0)
    assert float(loss.detach()) == pytest.approx(math.log(2))
    loss.backward()
    # d/d e_w of -log σ(-β/2 (e_w - e_l)) at 0 is β/2 · σ(0) = 25; the reverse for e_l.
    assert float(model_w.grad) == pytest.approx(25.0)
    assert float(model_l.grad) == pytest.approx(-25.0)
    # Saturated: once the gap is large the term stops pulling (the KL leash of a large β).
    far = objectives.dpo_loss(tensor([0.0]), tensor([1.0]), tensor([0.5]), tensor([0.5]), 100.0)
    assert float(far) < 1e-20
    assert torch.isfinite(
        objectives.dpo_loss(tensor([0.0]), tensor([1.0]), tensor([1.0]), tensor([0.0]), 1e6)
    )


def test_kto_loss_is_the_papers_formula(trainer_packages):
    """mean of λ_y (1 - σ(s_y β (g - z0))), g = e_ref - e, z0 = max(0, mean g)."""
    import torch

    from t2i_trainer.jobs import objectives

    model = [0.20, 0.50, 0.30, 0.40]
    ref = [0.30, 0.45, 0.30, 0.10]
    desirable = [True, False, True, False]
    beta, lambda_d, lambda_u = 4.0, 1.5, 0.5
    g = [r - m for m, r in zip(model, ref, strict=True)]  # 0.1, -0.05, 0, -0.3
    z0 = max(0.0, sum(g) / len(g))
    assert z0 == 0.0  # the batch's mean is negative here, so the reference point clamps to 0
    expected = [
        (lambda_d if good else lambda_u) * (1 - sigmoid((1 if good else -1) * beta * (gi - z0)))
        for gi, good in zip(g, desirable, strict=True)
    ]
    m, r = tensor(model), tensor(ref)
    point = objectives.kto_reference_point(objectives.kto_implicit_rewards(m, r))
    assert float(point) == 0.0
    loss = objectives.kto_loss(m, r, torch.tensor(desirable), beta, point, lambda_d, lambda_u)
    assert float(loss) == pytest.approx(sum(expected) / 4, rel=1e-12)

    # A positive mean implicit reward is the reference point, and is subtracted.
    ref_up = [0.50, 0.60, 0.40, 0.45]
    g_up = [r - m for m, r in zip(model, ref_up, strict=True)]  # 0.3, 0.1, 0.1, 0.05
    z0_up = sum(g_up) / 4
    point_up = objectives.kto_reference_point(objectives.kto_implicit_rewards(m, tensor(ref_up)))
    assert float(point_up) == pytest.approx(z0_up, rel=1e-12)
    expected_up = [
        1 - sigmoid((1 if good else -1) * beta * (gi - z0_up))
        for gi, good in zip(g_up, desirable, strict=True)
    ]
    loss_up = objectives.kto_loss(m, tensor(ref_up), torch.tensor(desirable), beta, point_up)
    assert float(loss_up) == pytest.approx(sum(expected_up) / 4, rel=1e-12)


def test_kto_pulls_desirable_errors_down_and_undesirable_errors_up(trainer_packages):
    import torch

    from t2i_trainer.jobs import objectives

    model = tensor([0.3, 0.3]).requires_grad_(True)
    ref = tensor([0.3, 0.3])
    point = objectives.kto_reference_point(objectives.kto_implicit_rewards(model, ref))
    loss = objectives.kto_loss(model, ref, torch.tensor([True, False]), 10.0, point)
    assert float(loss.detach()) == pytest.approx(0.5)
    loss.backward()
    # d/d e of (1 - σ(s β (e_ref - e)))/2 at 0 is s β σ'(0) / 2 = s · 10 · 0.25 / 2.
    assert [float(x) for x in model.grad] == pytest.approx([1.25, -1.25])
    # The reference point carries no gradient.
    assert not point.requires_grad


def _reduce_worker(rank: int, port: int, values: list[float], results) -> None:
    import torch
    import torch.distributed as dist

    from t2i_trainer.jobs import objectives

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        point = objectives.kto_reference_point(torch.tensor([values[rank]], dtype=torch.float64))
        results[rank] = float(point)
    finally:
        dist.destroy_process_group()


def test_the_kto_reference_point_is_the_mean_over_every_process(trainer_packages):
    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_reduce_worker, args=(port, [0.3, 0.1], results), nprocs=2, join=True)
    assert dict(results) == {0: pytest.approx(0.2), 1: pytest.approx(0.2)}


# ------------------------------------------------------------------------------------------------------------
# The rules
# ------------------------------------------------------------------------------------------------------------


def test_pairs_are_images_of_one_prompt_a_margin_apart(trainer_packages):
    from t2i_trainer.jobs import objectives

    prompts = [prompt for prompt, _ in DPO_PAIR_SAMPLES]
    rewards = np.array([reward for _, reward in DPO_PAIR_SAMPLES])
    pairs = objectives.preference_pairs(prompts, rewards)
    # good > bad; 0.9 > bad (the 0.1 gap between good and 0.9 is under the margin); 0.8 > 0.3; nothing for
    # the prompt with one image.
    assert pairs.tolist() == [[0, 1], [2, 1], [3, 4]]
    assert pairs.dtype == np.int64


def test_the_pairing_margin_is_inclusive_and_ties_never_pair(trainer_packages):
    from t2i_trainer.jobs import objectives

    assert objectives.DPO_MIN_MARGIN == 0.25
    prompts = ["p"] * 4 + ["q"] * 2
    rewards = np.array([0.75, 0.5, 0.51, 0.75, 1.0, 1.0])
    assert objectives.preference_pairs(prompts, rewards).tolist() == [[0, 1], [3, 1]]
    # Two good ratings, or two bad ones, never pair; one of each of two prompts neither.
    assert objectives.preference_pairs(["a", "b"], np.array([1.0, 0.0])).shape == (0, 2)
    assert objectives.preference_pairs(["a", "a"], np.array([0.0, 0.0])).shape == (0, 2)


def test_labels_split_at_the_threshold_and_ratings_keep_theirs(trainer_packages):
    from t2i_trainer.jobs import objectives

    assert objectives.KTO_THRESHOLD == 0.5
    rewards = np.array([1.0, 0.0, 0.5, 0.4999, 0.93])
    assert objectives.desirable_labels(rewards).tolist() == [True, False, True, False, True]


def test_kto_rows_are_drawn_class_balanced(trainer_packages):
    from t2i_trainer.jobs import objectives

    desirable = np.array([True] * 9 + [False])
    term = objectives.Utility(desirable, 100.0)
    rows = term.draw(np.random.default_rng(0), 4000)
    assert abs(desirable[rows].mean() - 0.5) < 0.03
    assert set(rows[~desirable[rows]].tolist()) == {9}
    only_good = objectives.Utility(np.array([True, True]), 100.0)
    assert set(only_good.draw(np.random.default_rng(1), 50).tolist()) == {0, 1}


def test_each_objective_reports_what_it_formed_or_refuses(trainer_packages):
    from t2i_trainer.jobs import objectives

    prompts = [prompt for prompt, _ in DPO_PAIR_SAMPLES]
    rewards = np.array([reward for _, reward in DPO_PAIR_SAMPLES])
    assert objectives.model_term("rwr", None, prompts, rewards).summary() == {"name": "rwr"}
    dpo = objectives.model_term("dpo", None, prompts, rewards)
    assert dpo.summary() == {"name": "dpo", "beta": 500.0, "pairs": 3, "prompts": 2, "min_margin": 0.25}
    kto = objectives.model_term("kto", 250.0, prompts, rewards)
    assert kto.summary() == {"name": "kto", "beta": 250.0, "desirable": 4, "undesirable": 2, "threshold": 0.5}
    with pytest.raises(objectives.NothingToTrain, match="dpo has nothing to train on: no prompt of the 2"):
        objectives.model_term("dpo", None, ["a red circle", "three triangles"], np.array([1.0, 0.0]))
    with pytest.raises(objectives.NothingToTrain, match="kto has nothing to train towards"):
        objectives.model_term("kto", None, ["a", "b"], np.array([0.2, 0.49]))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"objective": "ppo"}, "`objective` must be one of rwr, dpo, kto"),
        ({"objective_beta": 0.5}, "`objective_beta` must be between 1.0 and 1000000.0"),
        ({"objective_beta": 2e6}, "`objective_beta` must be between"),
        ({"objective_beta": "5000"}, "`objective_beta` must be a finite number"),
        ({"objective_beta": math.inf}, "`objective_beta` must be a finite number"),
    ],
)
def test_bad_objective_fields_are_refused(trainer_packages, tiny_base, tmp_path, change, message):
    from t2i_trainer.jobs import finetune

    samples = tmp_path / "samples.jsonl"
    samples.write_text("")
    spec = {"base": str(tiny_base), "out": str(tmp_path / "out"), "samples": str(samples)}
    assert finetune.parse_spec(spec).objective == "rwr"
    assert finetune.parse_spec({**spec, "objective": "kto", "objective_beta": None}).objective_beta is None
    with pytest.raises(finetune.SpecError, match=message.replace("(", r"\(")):
        finetune.parse_spec({**spec, **change})


# ------------------------------------------------------------------------------------------------------------
# Real fine-tunes from models/tiny-sd/diffusers
# ------------------------------------------------------------------------------------------------------------


def write_rated_samples(folder: Path, records: list[tuple[str, float]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for index, (prompt, reward) in enumerate(records):
        render(parse_prompt(prompt), sample_rng(6, index)).save(folder / f"{index}.png")
        lines.append(json.dumps({"image": f"{index}.png", "prompt": prompt, "reward": reward}))
    path = folder / "samples.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_finetune(finetune, tmp_path: Path, capsys, **fields) -> tuple[int, list[dict]]:
    samples = write_rated_samples(tmp_path / "job", fields.pop("records", DPO_PAIR_SAMPLES))
    spec = {"base": str(fields.pop("base")), "out": str(tmp_path / "candidate"), "samples": str(samples),
            "device": "cpu", "threads": 2, "pretrain": {"kind": "shapes_world", "images": 8}, "steps": 4,
            "batch_size": 6, "log_every": 1, "learning_rate": 1e-3, "export": False, **fields}  # fmt: skip
    path = tmp_path / "job.json"
    path.write_text(json.dumps(spec))
    status = finetune.main(["--spec", str(path)])
    return status, [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


def unet_changed(base: Path, out: Path) -> bool:
    from safetensors.torch import load_file

    before = load_file(next((base / "unet").glob("*.safetensors")))
    after = load_file(next((out / "diffusers" / "unet").glob("*.safetensors")))
    return any(not bool((before[name] == after[name]).all()) for name in before)


@pytest.mark.parametrize(
    "objective, counts, first_loss, train_text_encoder",
    [
        ("dpo", {"pairs": 3, "prompts": 2}, math.log(2), False),
        ("kto", {"desirable": 4, "undesirable": 2}, 0.5, False),
        # The reference keeps the base's text encoder while the trained one moves.
        ("dpo", {"pairs": 3, "prompts": 2}, math.log(2), True),
    ],
)
def test_a_short_fine_tune_trains_against_the_frozen_base(
    trainer_packages,
    tiny_base,
    tmp_path,
    capsys,
    restore_sigterm,
    objective,
    counts,
    first_loss,
    train_text_encoder,
):
    from t2i_trainer.jobs import finetune

    status, events = run_finetune(
        finetune, tmp_path, capsys, base=tiny_base, objective=objective, train_text_encoder=train_text_encoder
    )
    assert status == 0, events[-1]
    assert [event["event"] for event in events] == ["start", "data", "step", "step", "step", "step", "done"]
    summary = events[1]["objective"]
    assert summary["name"] == objective and summary["beta"] > 0
    assert {name: summary[name] for name in counts} == counts
    steps = [event for event in events if event["event"] == "step"]
    # Step 1: the trained UNet is the reference, so every implicit reward is 0.
    assert steps[0]["model_loss"] == pytest.approx(first_loss, abs=1e-6)
    assert steps[0]["implicit_accuracy"] == 0.0
    # Later steps: the trained UNet has moved and the reference has not.
    assert all(abs(step["model_loss"] - first_loss) > 1e-6 for step in steps[1:])
    assert all(math.isfinite(step["loss"]) and step["pretrain_loss"] > 0 for step in steps)
    assert all(
        step["loss"] == pytest.approx(step["model_loss"] + step["pretrain_loss"], abs=2e-6) for step in steps
    )
    assert unet_changed(tiny_base, tmp_path / "candidate")


@pytest.mark.parametrize(
    "objective, records, message",
    [
        ("dpo", [("a red circle", 1.0), ("three triangles", 0.0), ("a red circle", 0.9)], "dpo has nothing"),
        ("kto", [("a red circle", 0.2), ("three triangles", 0.45)], "kto has nothing to train towards"),
    ],
)
def test_an_objective_with_nothing_to_train_on_exits_2(
    trainer_packages, tiny_base, tmp_path, capsys, restore_sigterm, objective, records, message
):
    from t2i_trainer.jobs import finetune

    status, events = run_finetune(
        finetune, tmp_path, capsys, base=tiny_base, objective=objective, records=records
    )
    assert status == 2
    assert events[-1]["event"] == "error"
    assert events[-1]["message"].startswith("bad spec: objective ") and message in events[-1]["message"]
    assert not (tmp_path / "candidate").exists()
    assert not (tmp_path / "candidate.partial").exists()


# ------------------------------------------------------------------------------------------------------------
# The pre-training term anchored to the base (`pretrain_target` base)
# ------------------------------------------------------------------------------------------------------------


def test_a_bad_pretrain_target_is_refused_naming_the_field(trainer_packages, tiny_base, tmp_path):
    from t2i_trainer.jobs import finetune

    samples = tmp_path / "samples.jsonl"
    samples.write_text("")
    spec = {"base": str(tiny_base), "out": str(tmp_path / "out"), "samples": str(samples)}
    assert finetune.parse_spec(spec).pretrain_target == "data"
    assert finetune.parse_spec({**spec, "pretrain_target": "base"}).pretrain_target == "base"
    with pytest.raises(finetune.SpecError, match="`pretrain_target` must be one of data, base. Given: 'ema'"):
        finetune.parse_spec({**spec, "pretrain_target": "ema"})


def test_the_anchored_term_is_the_distance_to_the_references_prediction(trainer_packages, tiny_base):
    import copy

    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    from t2i_trainer.jobs import objectives

    pipeline = StableDiffusionPipeline.from_pretrained(tiny_base, safety_checker=None)
    unet = pipeline.unet.train()
    reference = copy.deepcopy(unet).eval().requires_grad_(False)
    scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    steps = scheduler.config.num_train_timesteps

    def denoising(seed: int) -> objectives.Denoising:
        return objectives.Denoising(
            tokenizer=pipeline.tokenizer, text_encoder=pipeline.text_encoder, scheduler=scheduler,
            snr_weight=torch.ones(steps), rng=np.random.default_rng(seed),
            generator=torch.Generator().manual_seed(seed), caption_dropout=0.0, train_text_encoder=False,
            device="cpu",
        )  # fmt: skip

    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    captions = ["a red circle", "two blue squares", ""]
    # While the trained UNet is the base, its prediction is the target: the term is zero.
    assert torch.equal(denoising(0).anchored_losses(unet, reference, latents, captions), torch.zeros(3))
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.add_(0.01 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(2)))
    losses = denoising(0).anchored_losses(unet, reference, latents, captions)
    # The formula: same noise, timestep and caption for both UNets, the mean squared distance per row.
    draw = denoising(0)
    states, reference_states = draw.condition(captions, reference=True)
    noise, timesteps = draw.noise(latents)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    with torch.no_grad():
        expected = (
            (unet(noisy, timesteps, states).sample - reference(noisy, timesteps, states).sample) ** 2
        ).mean(dim=(1, 2, 3))
    assert torch.allclose(losses.detach(), expected, rtol=1e-5, atol=1e-9) and (expected > 0).all()
    # Its gradient pulls the trained UNet back to the reference: a small step along it shrinks the term.
    losses.mean().backward()
    before = float(losses.mean().detach())
    with torch.no_grad():
        for parameter in unet.parameters():
            if parameter.grad is not None:
                parameter.sub_(1e-2 * parameter.grad)
    assert float(denoising(0).anchored_losses(unet, reference, latents, captions).mean()) < before


@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_a_fine_tune_anchored_to_the_base_starts_at_zero_pretraining_loss(
    trainer_packages, tiny_base, tmp_path, capsys, restore_sigterm, train_text_encoder
):
    from t2i_trainer.jobs import finetune

    records = [("a red circle", 1.0), ("three triangles", 0.0), ("two blue squares", 0.6)]
    status, events = run_finetune(
        finetune, tmp_path, capsys, base=tiny_base, pretrain_target="base",
        train_text_encoder=train_text_encoder, records=records,
    )  # fmt: skip
    assert status == 0, events[-1]
    steps = [event for event in events if event["event"] == "step"]
    assert len(steps) == 4
    # Step 1: the trained UNet is the base, so the anchored term is 0; then it has moved and the base has not.
    assert steps[0]["pretrain_loss"] == 0.0
    assert all(step["pretrain_loss"] > 0 for step in steps[1:])
    assert unet_changed(tiny_base, tmp_path / "candidate")
