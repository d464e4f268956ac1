"""The fine-tune job's objectives for the model's samples (issue #26): which term `finetune.py` adds to
beta × the pre-training loss.

    rwr  reward-weighted regression, the paper's E_model[r · L] (Lee et al. 2023, §3.3; the default).
    dpo  Diffusion-DPO (Wallace et al. 2023, arXiv 2311.12908) on pairs of images of one prompt.
    kto  Diffusion-KTO (Li et al. 2024, arXiv 2404.04465) on images labelled desirable or undesirable.

dpo and kto measure the trained UNet against a reference: a frozen copy of the base UNet (no gradients, eval
mode), and the base text encoder's states. Both use the plain per-sample denoising error

    e(x, t) = mean over latent elements of (eps - eps_theta(x_t, t, c))^2

(no Min-SNR weight: Diffusion-DPO's ω(λ_t) is constant, and both reference implementations average the squared
error over the latent's elements), written e for the trained UNet and e_ref for the reference.

Diffusion-DPO (the paper's eq. 14 with T·ω(λ_t) folded into β; its authors' train.py, SalesforceAIResearch/
DiffusionDPO, computes exactly this): both images of a pair get the same noise, timestep and caption, and

    loss = -log σ( -β/2 · ((e_w - e_l) - (e_ref,w - e_ref,l)) )

averaged over the pairs: the trained UNet must denoise the preferred image x_w better, relative to the
reference, than the dispreferred x_l. β (`objective_beta`) sets how far it may move: the term saturates once
β/2 · the gap is a few units, so a larger β holds the model closer to the reference.

Diffusion-KTO (the sigmoid value function of the authors' train_kto_sd_v1.5.py, jacklishufan/diffusion-kto):
each image's implicit reward is g = e_ref - e (the reference's error minus the trained UNet's, the diffusion
stand-in for log π_θ/π_ref), the reference point z0 = max(0, mean of g over the batch) with no gradient (over
every process of a data-parallel run, as theirs reduces it), and

    loss = mean over rows of λ_y · (1 - σ(s_y · β · (g - z0)))

with s_y = +1, λ_y = λ_D for a desirable image and s_y = -1, λ_y = λ_U for an undesirable one (λ_D = λ_U = 1,
their defaults). KTO rows are drawn class-balanced (half desirable, half undesirable when both exist), so
λ_D·n_D / (λ_U·n_U) = 1, inside the range the KTO paper recommends for imbalanced data.

Which samples each objective trains on (a sample's reward is in [0, 1]: a rating is 1 for good and 0 for bad,
the reward model's score is its probability of good, or a min-max rescaled similarity):
    dpo  every ordered pair (w, l) of images of the same prompt (exact string) whose rewards differ by at
         least DPO_MIN_MARGIN: a good and a bad rating of one prompt always pair; reward-scored images pair
         when the reward model separates them by the margin, and a rating can pair with a scored image. Pairs
         are drawn uniformly, `model_rows // 2` of them per step (at least one), each taking two rows.
    kto  desirable when the reward is at least KTO_THRESHOLD, undesirable otherwise: ratings keep their labels
         (1 and 0), and the reward model's scores are split at its decision boundary.
A job that forms no pair (dpo) or no desirable sample (kto) is refused (NothingToTrain) before training.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

OBJECTIVES = ("rwr", "dpo", "kto")
# `objective_beta`'s range, and its defaults: a tenth of the reference implementations' values for Stable
# Diffusion, 5000 (Diffusion-DPO's SD 1.5 and SDXL launchers) and 1000 (Diffusion-KTO's default). β should put
# a typical pair's β/2 · gap (dpo) in the sigmoid's responsive range, around 1, by the end of a job. shapes-sd
# moves further per step than Stable Diffusion at its papers' learning rates: 200 dpo steps at this trainer's
# default learning rate (1e-4, batch 16, 256 pairs of a clean render and a wrong one) left a median gap of
# 0.0028 at β 5000, β/2 · gap = 7 (saturated; a tenth of pairs above 100), and 0.0061 at β 500, β/2 · gap =
# 1.5, with the same share of pairs on the right side (76%). kto on the same images (clean ones desirable) at
# β 1000 left a median β · |g - z0| of 4.1 and desirable images' mean g 0.009 above undesirable ones'; at
# β 100, 0.47 and 0.021.
BETA_RANGE = (1.0, 1e6)
DEFAULT_BETA = {"dpo": 500.0, "kto": 100.0}
# Smallest reward gap that makes two images of one prompt a dpo pair.
DPO_MIN_MARGIN = 0.25
# Reward at or above which a sample is desirable for kto.
KTO_THRESHOLD = 0.5
KTO_LAMBDA_DESIRABLE = 1.0
KTO_LAMBDA_UNDESIRABLE = 1.0


class NothingToTrain(ValueError):
    """The objective forms nothing to train on from the job's samples; the message says why."""


# ----------------------------------------------------------------------------------------------------------
# The losses: pure functions of per-sample denoising errors
# ----------------------------------------------------------------------------------------------------------


def dpo_logits(
    model_w: torch.Tensor, model_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor, beta: float
) -> torch.Tensor:
    """Per pair, -β/2 · ((e_w - e_l) - (e_ref,w - e_ref,l)): positive when the trained UNet favours the
    preferred image more than the reference does."""
    return -0.5 * beta * ((model_w - model_l) - (ref_w - ref_l))


def dpo_loss(
    model_w: torch.Tensor, model_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor, beta: float
) -> torch.Tensor:
    """Diffusion-DPO's loss, -log σ(dpo_logits), averaged over the pairs."""
    return -F.logsigmoid(dpo_logits(model_w, model_l, ref_w, ref_l, beta)).mean()


def kto_implicit_rewards(model: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """g = e_ref - e per sample: how much better than the reference the trained UNet denoises it."""
    return ref - model


def kto_reference_point(implicit_rewards: torch.Tensor) -> torch.Tensor:
    """z0 = max(0, mean g), without gradient; the mean is over every process of a data-parallel run."""
    mean = implicit_rewards.detach().mean()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        mean = mean.clone()
        torch.distributed.all_reduce(mean)
        mean = mean / torch.distributed.get_world_size()
    return mean.clamp(min=0)


def kto_loss(
    model: torch.Tensor,
    ref: torch.Tensor,
    desirable: torch.Tensor,
    beta: float,
    reference_point: torch.Tensor | float,
    lambda_desirable: float = KTO_LAMBDA_DESIRABLE,
    lambda_undesirable: float = KTO_LAMBDA_UNDESIRABLE,
) -> torch.Tensor:
    """Diffusion-KTO's loss, mean of λ_y · (1 - σ(s_y · β · (g - z0))) over the rows (`desirable` a bool
    tensor)."""
    sign = torch.where(desirable, 1.0, -1.0)
    weight = torch.where(desirable, lambda_desirable, lambda_undesirable)
    value = torch.sigmoid(sign * beta * (kto_implicit_rewards(model, ref) - reference_point))
    return (weight * (1 - value)).mean()


# ----------------------------------------------------------------------------------------------------------
# The rules: which samples pair (dpo) and which are desirable (kto)
# ----------------------------------------------------------------------------------------------------------


def preference_pairs(
    prompts: Sequence[str], rewards: np.ndarray, min_margin: float = DPO_MIN_MARGIN
) -> np.ndarray:
    """Every (preferred, dispreferred) pair of sample indices with the same prompt whose rewards differ by at
    least `min_margin`, as an int array [pairs, 2] in order of the samples."""
    by_prompt: dict[str, list[int]] = {}
    for index, prompt in enumerate(prompts):
        by_prompt.setdefault(prompt, []).append(index)
    pairs = [
        (winner, loser)
        for indices in by_prompt.values()
        for winner in indices
        for loser in indices
        if rewards[winner] - rewards[loser] >= min_margin
    ]
    return np.asarray(sorted(pairs), dtype=np.int64).reshape(-1, 2)


def desirable_labels(rewards: np.ndarray, threshold: float = KTO_THRESHOLD) -> np.ndarray:
    """A bool per sample: desirable when its reward is at least `threshold`."""
    return np.asarray(rewards) >= threshold


# ----------------------------------------------------------------------------------------------------------
# The terms finetune.py trains with
# ----------------------------------------------------------------------------------------------------------


class Denoising:
    """The forward process and the denoising error every term is built from: captions (each dropped to the
    empty caption with probability `caption_dropout`) to text states, fresh noise and timesteps, and the
    per-sample error of a UNet's prediction. `reference_text_encoder` is the base's frozen text encoder when
    the text encoder trains (dpo and kto condition the reference on it); otherwise the states are shared."""

    def __init__(
        self,
        *,
        tokenizer,
        text_encoder,
        scheduler,
        snr_weight: torch.Tensor,
        rng: np.random.Generator,
        generator: torch.Generator,
        caption_dropout: float,
        train_text_encoder: bool,
        device: str,
        reference_text_encoder=None,
    ):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.scheduler = scheduler
        self.snr_weight = snr_weight
        self.rng = rng
        self.generator = generator
        self.caption_dropout = caption_dropout
        self.train_text_encoder = train_text_encoder
        self.device = device
        self.reference_text_encoder = reference_text_encoder

    def condition(
        self, captions: list[str], reference: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text states for the trained UNet and, with `reference`, for the reference UNet."""
        from t2i_trainer.build.train_sd import padded_ids

        dropped = self.rng.random(len(captions)) < self.caption_dropout
        captions = ["" if drop else caption for caption, drop in zip(captions, dropped, strict=True)]
        input_ids = padded_ids(self.tokenizer, captions, self.device)
        with torch.set_grad_enabled(self.train_text_encoder):
            states = self.text_encoder(input_ids)[0]
        if not reference:
            return states, None
        if self.reference_text_encoder is None:
            return states, states.detach()
        with torch.no_grad():
            return states, self.reference_text_encoder(input_ids)[0]

    def noise(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian noise shaped as `latents`, and a uniform timestep per row."""
        noise = torch.randn(latents.shape, generator=self.generator, device=self.device)
        timesteps = torch.randint(
            0,
            self.scheduler.config.num_train_timesteps,
            (len(latents),),
            generator=self.generator,
            device=self.device,
        )
        return noise, timesteps

    def errors(
        self, unet, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, states: torch.Tensor
    ) -> torch.Tensor:
        """e(x, t) per row: the mean squared error of `unet`'s noise prediction at x_t."""
        predicted = unet(self.scheduler.add_noise(latents, noise, timesteps), timesteps, states).sample
        return F.mse_loss(predicted, noise, reduction="none").mean(dim=(1, 2, 3))

    def weighted_losses(self, unet, latents: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """The pretraining's loss per row: e(x, t) with its Min-SNR weight (rwr and the pre-training term)."""
        states, _ = self.condition(captions)
        noise, timesteps = self.noise(latents)
        return self.errors(unet, latents, noise, timesteps, states) * self.snr_weight[timesteps]

    def anchored_losses(self, unet, reference, latents: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """The pre-training term anchored to the base (`pretrain_target` base), per row: the mean squared
        distance between `unet`'s noise prediction and the frozen `reference`'s at the same x_t, timestep and
        caption (the reference conditioned on its own text encoder's states), with the Min-SNR weight.
        Zero while the trained UNet is the base; its gradient pulls the prediction back to the base's."""
        states, reference_states = self.condition(captions, reference=True)
        noise, timesteps = self.noise(latents)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        predicted = unet(noisy, timesteps, states).sample
        with torch.no_grad():
            target = reference(noisy, timesteps, reference_states).sample
        errors = F.mse_loss(predicted, target, reduction="none").mean(dim=(1, 2, 3))
        return errors * self.snr_weight[timesteps]


@dataclass
class Context:
    """What a term needs at each step: the encoded samples (`draw`), the denoising, the trained UNet (wrapped
    for data parallelism when it is) and the frozen reference UNet (dpo and kto)."""

    samples: object
    denoising: Denoising
    unet: object
    reference: object | None


class RewardWeighted:
    """rwr: E_model[r · L], samples drawn in proportion to r and their loss scaled by the mean reward."""

    name = "rwr"

    def __init__(self, rewards: np.ndarray):
        self.draw_probability = rewards / rewards.sum()
        self.mean_reward = float(rewards.mean())

    def summary(self) -> dict:
        return {"name": self.name}

    def loss(self, context: Context, rows: int) -> tuple[torch.Tensor, dict]:
        rng = context.denoising.rng
        indices = rng.choice(len(self.draw_probability), size=rows, p=self.draw_probability)
        latents, captions = context.samples.draw(indices, context.denoising.generator)
        return self.mean_reward * context.denoising.weighted_losses(
            context.unet, latents, captions
        ).mean(), {}


def reference_errors(context: Context, latents, noise, timesteps, states) -> torch.Tensor:
    with torch.no_grad():
        return context.denoising.errors(context.reference, latents, noise, timesteps, states)


class Preference:
    """dpo: Diffusion-DPO on `pairs` (preferred, dispreferred) of sample indices."""

    name = "dpo"

    def __init__(self, pairs: np.ndarray, prompts: Sequence[str], beta: float):
        self.pairs = pairs
        self.beta = beta
        self.prompts = len({prompts[winner] for winner in pairs[:, 0]})

    def summary(self) -> dict:
        return {
            "name": self.name,
            "beta": self.beta,
            "pairs": len(self.pairs),
            "prompts": self.prompts,
            "min_margin": DPO_MIN_MARGIN,
        }

    def loss(self, context: Context, rows: int) -> tuple[torch.Tensor, dict]:
        denoising = context.denoising
        chosen = self.pairs[denoising.rng.integers(len(self.pairs), size=max(1, rows // 2))]
        winners, captions = context.samples.draw(chosen[:, 0], denoising.generator)
        losers, _ = context.samples.draw(chosen[:, 1], denoising.generator)
        # One caption (dropped or not), noise and timestep per pair, shared by both of its images.
        states, reference_states = denoising.condition(captions, reference=True)
        noise, timesteps = denoising.noise(winners)
        latents = torch.cat([winners, losers])
        noise, timesteps = noise.repeat(2, 1, 1, 1), timesteps.repeat(2)
        model = denoising.errors(context.unet, latents, noise, timesteps, states.repeat(2, 1, 1))
        ref = reference_errors(context, latents, noise, timesteps, reference_states.repeat(2, 1, 1))
        model_w, model_l = model.chunk(2)
        ref_w, ref_l = ref.chunk(2)
        logits = dpo_logits(model_w, model_l, ref_w, ref_l, self.beta)
        figures = {"implicit_accuracy": round(float((logits > 0).float().mean()), 4)}
        return dpo_loss(model_w, model_l, ref_w, ref_l, self.beta), figures


class Utility:
    """kto: Diffusion-KTO on samples labelled desirable (True) or undesirable."""

    name = "kto"

    def __init__(self, desirable: np.ndarray, beta: float):
        self.desirable = desirable
        self.beta = beta
        self.classes = [np.flatnonzero(desirable), np.flatnonzero(~desirable)]

    def summary(self) -> dict:
        return {
            "name": self.name,
            "beta": self.beta,
            "desirable": len(self.classes[0]),
            "undesirable": len(self.classes[1]),
            "threshold": KTO_THRESHOLD,
        }

    def draw(self, rng: np.random.Generator, rows: int) -> np.ndarray:
        """Row indices, each row desirable or undesirable with even odds (all from one class when the other is
        empty), then uniform within its class."""
        desirable, undesirable = self.classes
        share = 0.5 if len(undesirable) else 1.0
        take_desirable = rng.random(rows) < share
        picks = [group[rng.integers(len(group), size=rows)] if len(group) else None for group in self.classes]
        return picks[0] if picks[1] is None else np.where(take_desirable, picks[0], picks[1])

    def loss(self, context: Context, rows: int) -> tuple[torch.Tensor, dict]:
        denoising = context.denoising
        indices = self.draw(denoising.rng, rows)
        latents, captions = context.samples.draw(indices, denoising.generator)
        states, reference_states = denoising.condition(captions, reference=True)
        noise, timesteps = denoising.noise(latents)
        model = denoising.errors(context.unet, latents, noise, timesteps, states)
        ref = reference_errors(context, latents, noise, timesteps, reference_states)
        desirable = torch.from_numpy(self.desirable[indices]).to(model.device)
        reference_point = kto_reference_point(kto_implicit_rewards(model, ref))
        loss = kto_loss(model, ref, desirable, self.beta, reference_point)
        sign = torch.where(desirable, 1.0, -1.0)
        right = (sign * (kto_implicit_rewards(model, ref) - reference_point) > 0).float().mean()
        figures = {
            "implicit_accuracy": round(float(right), 4),
            "reference_point": round(float(reference_point), 8),
        }
        return loss, figures


def model_term(
    objective: str, beta: float | None, prompts: Sequence[str], rewards: np.ndarray
) -> RewardWeighted | Preference | Utility:
    """The term for `objective` over the job's samples; NothingToTrain when it has nothing to train on."""
    if objective == "rwr":
        return RewardWeighted(rewards)
    beta = DEFAULT_BETA[objective] if beta is None else beta
    if objective == "dpo":
        pairs = preference_pairs(prompts, rewards)
        if not len(pairs):
            raise NothingToTrain(
                f"objective dpo has nothing to train on: no prompt of the {len(prompts)} samples has two "
                f"images whose rewards differ by at least {DPO_MIN_MARGIN} (with ratings: a good and a bad "
                "image of one prompt)"
            )
        return Preference(pairs, prompts, beta)
    desirable = desirable_labels(rewards)
    if not desirable.any():
        raise NothingToTrain(
            f"objective kto has nothing to train towards: none of the {len(prompts)} samples is desirable "
            f"(a reward of at least {KTO_THRESHOLD}: a good rating, or a score at or above it)"
        )
    return Utility(desirable, beta)
