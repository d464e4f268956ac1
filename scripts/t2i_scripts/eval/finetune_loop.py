"""The whole feedback loop of issue #5, measured through the running service on the shapes world:

1. Serve: `t2i-align serve` with shapes-sd and shapes-reward, on a fresh data directory.
2. Rounds of feedback, as the paper's loop would run repeatedly. In each round:
   a. Rate: generate images for training prompts through POST /generate from the round's base model (the
      pretrained one, then the previous round's version), and let the simulated rater label them through
      POST /feedback (t2i_scripts.eval.simulate_raters), as people would.
   b. Fine-tune: POST /fine-tunes with `base_model` the round's base. The job samples more images from it,
      scores them with the reward model, trains on ratings plus scores (reward-weighted likelihood with the
      pre-training term, cosine learning rate), evaluates base and candidate on held-out prompts, registers
      the version and activates it if the gate passes. The job is followed through GET /fine-tunes/{id}.
   The 45-minute budget is for the rounds together.
3. Compare, through /generate with `model`, on the prompts and seeds of t2i_scripts.bench.bench_reward: the
   pretrained model, each round's version, and best-of-16 on the pretrained model (models/reward-serving.json,
   measured by `make bench-reward`), on alignment and on seconds per image.
4. Ablation: round 1's job with beta = 0 (no pre-training term), for the quality proxy and diversity. It runs
   right after round 1, on the same ratings and samples, and its time is left out of the loop's.
5. The gate: a job with a learning rate far too high, whose version the gate must refuse.
6. Every held-out prompt: the rounds' versions and the ablation's are copied out of the data directory
   (--keep-versions) and t2i_scripts.eval.heldout_eval judges them against the pretrained model on all 282
   held-out prompts, with bootstrap intervals (models/heldout-eval.json and its own section of the report).

Writes models/fine-tune.json and the section between the markers below in models/REPORT.md.

Usage:
    make finetune-rounds    (once `make finetune-loop`, which now runs t2i_scripts.eval.alignment, #26)
    .venv-trainer/bin/python -m t2i_scripts.eval.finetune_loop --binary target/release/t2i-align
    .venv-trainer/bin/python -m t2i_scripts.eval.finetune_loop --smoke    # a few minutes, for a dry run
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from itertools import accumulate, pairwise
from pathlib import Path
from urllib.parse import quote

from t2i_scripts.bench import bench_reward
from t2i_scripts.eval import heldout_eval, simulate_raters
from t2i_scripts.eval.heldout_eval import percent
from t2i_scripts.report import write_report
from t2i_scripts.server import NO_RATE_LIMITS, ROOT, ServerProcess, serve_command
from t2i_trainer.build.shapes_world import choose_prompts

ROUND_TRIP = ROOT / "models" / "vae-round-trip.json"
BEGIN = "<!-- fine-tune:begin -->"
END = "<!-- fine-tune:end -->"
CONTINUED_BEGIN = "<!-- fine-tune-continued:begin -->"
CONTINUED_END = "<!-- fine-tune-continued:end -->"
ABLATION = "beta 0 (ablation)"
MAX_N = 8  # the server's limit on `n` per /generate request

# The measured run. The job's settings were chosen by the trials reported in the section this writes (trials v
# and w are two such rounds in PyTorch, on the rater's labels). Each round the rater labels `rated_images` of
# every training prompt served by the round's base, and the job scores 2 more per prompt with the reward
# model: 4/5 of each round's samples are rated, near the paper's 23k rated and 16k scored. Each job trains on
# the ratings of its own base's images (`feedback_filter`), as trial w did: round 2 learns from what round 1's
# version draws, not again from the pretrained model's images.
FULL = {
    "rated_prompts": 528,
    "rounds": [
        {"rated_images": 9, "job_prompts": 528, "images_per_prompt": 2},
        {"rated_images": 8, "job_prompts": 528, "images_per_prompt": 2},
    ],
    "steps": 1500,
    "batch_size": 32,
    "learning_rate": 3e-4,
    "lr_schedule": "cosine",
    "beta": 0.1,
    "pretrain_fraction": 0.25,
    "pretrain_images": 4096,
    "ema_decay": 0.999,
    "train_text_encoder": True,
    "bad_learning_rate": 5e-3,
    "bad_prompts": 100,
    "bad_images_per_prompt": 4,
    "bad_steps": 500,
    "eval_per_category": 16,
    "eval_images": 16,
}
SMOKE = {
    "rated_prompts": 4,
    "rounds": [
        {"rated_images": 2, "job_prompts": 6, "images_per_prompt": 2},
        {"rated_images": 2, "job_prompts": 6, "images_per_prompt": 1},
    ],
    "steps": 5,
    "batch_size": 8,
    "learning_rate": 3e-4,
    "lr_schedule": "cosine",
    "beta": 0.1,
    "pretrain_fraction": 0.25,
    "pretrain_images": 16,
    "ema_decay": 0.999,
    "train_text_encoder": True,
    "bad_learning_rate": 5e-3,
    "bad_prompts": 4,
    "bad_images_per_prompt": 2,
    "bad_steps": 5,
    "eval_per_category": 1,
    "eval_images": 2,
}


def loop_arguments(description: str, port: int, json_name: str) -> argparse.ArgumentParser:
    """The flags of the scripts that run the loop through a server they start: the binary, the served and the
    reward model, a port, threads, a seed, --smoke, the report, the JSON (models/`json_name`) and
    --render-only."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--binary", default="target/release/t2i-align", help="the t2i-align binary")
    parser.add_argument("--model", default="models/shapes-sd")
    parser.add_argument("--reward-model", default="models/shapes-reward")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op and trainer threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny settings: checks the script, measures nothing"
    )
    parser.add_argument("--report", type=Path, default=ROOT / "models" / "REPORT.md")
    parser.add_argument("--json", type=Path, default=ROOT / "models" / json_name)
    parser.add_argument(
        "--render-only", action="store_true", help="rewrite the report's section from --json; run nothing"
    )
    return parser


def parse_args() -> argparse.Namespace:
    parser = loop_arguments(__doc__, 18095, "fine-tune.json")
    parser.add_argument("--skip-ablations", action="store_true", help="run the main loop and comparison only")
    parser.add_argument(
        "--trials", type=Path, default=ROOT / "models" / "fine-tune-trials.jsonl",
        help="t2i_trainer.trials.finetune_trials's results, shown in the report when the file exists",
    )  # fmt: skip
    parser.add_argument(
        "--keep-versions", type=Path, default=ROOT / "build" / "finetune-loop" / "versions",
        help="where the rounds' and the ablation's versions are copied, for the held-out evaluation",
    )  # fmt: skip
    parser.add_argument(
        "--skip-heldout-eval", action="store_true", help="do not judge the versions on every held-out prompt"
    )
    parser.add_argument(
        "--rounds", type=int,
        help="rounds of feedback (default: the settings' 2); rounds past the settings' list repeat its last",
    )  # fmt: skip
    parser.add_argument(
        "--first-round", type=int, default=1,
        help="the first round's number, to go on from a kept version: --model build/finetune-loop/versions/"
        "round-2 --first-round 3 (each round's prompts and seeds follow its number)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.render_only:
        return args
    if not Path(args.binary).is_file():
        parser.error(f"--binary {args.binary} does not exist; run `make build` first")
    if not (Path(args.model) / "model_index.json").is_file():
        hint = " (`make finetune-more` goes on from the version `make finetune-rounds` keeps)"
        parser.error(f"--model {args.model} is not a model folder{hint if args.first_round > 1 else ''}")
    settings = SMOKE if args.smoke else FULL
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.first_round < 1:
        parser.error(f"--first-round must be at least 1, got {args.first_round}")
    count = args.rounds or len(settings["rounds"])
    listed = settings["rounds"]
    args.settings = settings | {"rounds": [listed[min(i, len(listed) - 1)] for i in range(count)]}
    if args.smoke:
        args.report = (
            args.report.with_name("REPORT-smoke.md") if args.report.name == "REPORT.md" else args.report
        )
        args.json = (
            args.json.with_name("fine-tune-smoke.json") if args.json.name == "fine-tune.json" else args.json
        )
    return args


class Server(ServerProcess):
    def __init__(self, args: argparse.Namespace):
        command = serve_command(
            args.binary, args.model, threads=args.threads, reward_model=args.reward_model,
            trainer_python=sys.executable,
            # A measured loop runs its jobs one after another for hours: no per-tenant job-time quota.
            flags=["--max-best-of", "16", "--max-candidates", "128", "--tenant-job-minutes-per-day", "0",
                   *NO_RATE_LIMITS],
        )  # fmt: skip
        super().__init__(command, args.port, image_retention=1_000_000)


def emit(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def rate_served_images(
    server: Server, args: argparse.Namespace, model: str, number: int, round_settings: dict
) -> dict:
    """Images that `model` serves for training prompts, labelled by the simulated rater through
    POST /feedback. Every round draws new seeds; images the rater already rated are left alone."""
    settings = args.settings
    prompts = choose_prompts("train", settings["rated_prompts"], None, args.seed + 17 * number)
    per_prompt = round_settings["rated_images"]

    def generate(index: int) -> None:
        # Image i of a request uses seed + i, so the prompts' seed ranges must not overlap. /generate serves
        # at most MAX_N images per request.
        seed = 1_000_000 * (args.seed + number) + index * per_prompt
        for first in range(0, per_prompt, MAX_N):
            n = min(MAX_N, per_prompt - first)
            body = {"prompt": prompts[index].text, "n": n, "seed": seed + first, "model": model}
            server.post("/generate", body)

    started = time.perf_counter()
    # A few requests in flight, as several users would send them: the server batches their denoising steps.
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(generate, range(len(prompts))))
    generated = time.perf_counter() - started
    started = time.perf_counter()
    simulate_raters.main(["--url", server.url, "--rater", "simulated"])
    rated = time.perf_counter() - started
    # The round's base drew these images and no others: its ratings are this round's.
    labels = feedback_labels(server, model)
    return {
        "model": model,
        "prompts": len(prompts),
        "images": len(prompts) * per_prompt,
        "labels": {label: count for label, count in labels.items() if count},
        "generate_seconds": round(generated, 1),
        "rate_seconds": round(rated, 1),
    }


def feedback_labels(server: Server, model: str) -> dict:
    """The stored ratings of images `model` generated, counted by label (GET /feedback?model=, paged)."""
    labels = defaultdict(int)
    after = None
    while True:
        page = server.get(f"/feedback?limit=1000&model={quote(model)}" + (f"&after={after}" if after else ""))
        for rating in page["data"]:
            labels[rating["label"]] += 1
        if not page["has_more"]:
            return dict(labels)
        after = page["last_id"]


# The settings a measured job copies into its `hyperparameters` as they are (alignment.py's jobs too).
JOB_HYPERPARAMETERS = (
    "lr_schedule",
    "steps",
    "batch_size",
    "pretrain_fraction",
    "ema_decay",
    "train_text_encoder",
)


def job_body(
    args: argparse.Namespace,
    base_model: str,
    round_settings: dict,
    beta: float,
    learning_rate: float,
    activate: bool = True,
) -> dict:
    settings = args.settings
    return {
        "base_model": base_model,
        "prompts": {"generator": "shapes_world", "split": "train", "count": round_settings["job_prompts"]},
        "images_per_prompt": round_settings["images_per_prompt"],
        "use_feedback": True,
        # The ratings of the base's own images: each round learns from what the model it starts from draws.
        "feedback_filter": {"model": base_model},
        "hyperparameters": {
            "beta": beta,
            "learning_rate": learning_rate,
            **{key: settings[key] for key in JOB_HYPERPARAMETERS},
        },
        "pretrain_data": {"kind": "shapes_world", "images": settings["pretrain_images"]},
        # The same prompts and the same seeds (the job's seed) in every job, so that every version is
        # evaluated on the same images' noise as the pretrained model.
        "eval_prompts": {
            "generator": "shapes_world",
            "split": "heldout",
            "per_category": settings["eval_per_category"],
            "seed": args.seed,
        },
        "eval_images_per_prompt": settings["eval_images"],
        "seed": args.seed,
        "activate_on_success": activate,
    }


def run_job(server: Server, body: dict, name: str, must_succeed: bool = True) -> dict:
    """Creates a job and follows it until it ends; returns it with its stage times. A job that does not
    succeed stops the script unless `must_succeed` is false (then the caller reads `job["status"]`)."""
    started = time.perf_counter()
    _, job = server.post("/fine-tunes", body)
    job_id = job["id"]
    emit("job_created", name=name, id=job_id)
    last_stage = None
    while job["status"] in ("queued", "running"):
        time.sleep(5)
        job = server.get(f"/fine-tunes/{job_id}")
        if job["stage"] != last_stage:
            last_stage = job["stage"]
            emit("job_stage", name=name, stage=last_stage, seconds=round(time.perf_counter() - started, 1))
    seconds = time.perf_counter() - started
    stages = {}
    after = None
    while True:
        page = server.get(f"/fine-tunes/{job_id}/events?limit=1000" + (f"&after={after}" if after else ""))
        for event in page["data"]:
            data = event.get("data") or {}
            if event["kind"] == "stage" and "seconds" in data:
                stages[data["stage"]] = round(data["seconds"], 1)
        if not page["has_more"]:
            break
        after = page["last_id"]
    emit("job_done", name=name, status=job["status"], seconds=round(seconds, 1), error=job["error"])
    if must_succeed and job["status"] != "succeeded":
        sys.exit(f"job {name} ({job_id}) {job['status']}: {job['error']}")
    return {"id": job_id, "seconds": round(seconds, 1), "stages": stages, "job": job}


def seconds_per_image(server: Server, model: str | None) -> float:
    """Median latency of a one-image request, as bench_reward.cost measures one image."""
    body = {"prompt": "three red circles", "seed": 1}
    if model:
        body["model"] = model
    server.post("/generate", body)
    times = [server.post("/generate", body | {"seed": 10 + i})[0] for i in range(9)]
    return statistics.median(times)


def attribute_shares(result: dict) -> dict:
    return {name: good / total for name, (good, total) in result["attributes"].items() if total}


def good_shares(result: dict) -> dict:
    return {name: good / total for name, (good, total) in result["good"].items() if total}


def points(value: float) -> str:
    return f"{100 * value:+.1f}"


ATTRIBUTES = ("count", "colour", "background", "shape")


def evaluation_row(name: str, evaluation: dict) -> list[str]:
    return (
        [name]
        + [percent(evaluation["attributes"].get(key)) for key in ATTRIBUTES]
        + [
            percent(evaluation["good"]),
            percent(evaluation["quality"]),
            f"{evaluation['diversity']:.3f}",
            f"{evaluation['mean_reward']:.3f}",
        ]
    )


def evaluation_rows(jobs: dict, base_name: str = "pretrained (shapes-sd)") -> list[list[str]]:
    """The jobs' own evaluations (held-out prompts, the same seeds in every job): the first job's base, then
    each job's candidate."""
    base = next(iter(jobs.values()))["job"]["metrics"]["evaluation"]["base"]
    rows = [evaluation_row(base_name, base)]
    # The rounds first, then the other jobs, whatever order they ran in.
    ordered = sorted(jobs.items(), key=lambda item: not is_round(item[0]))
    for name, record in ordered:
        job = record["job"]
        label = f"{name}: `{job['result_model']}`, from `{job['base_model']}`"
        rows.append(evaluation_row(label, job["metrics"]["evaluation"]["candidate"]))
    return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def is_round(job_name: str) -> bool:
    return job_name.startswith("round ")


def rounds(data: dict) -> list[tuple[str, dict]]:
    return [(name, record) for name, record in data["jobs"].items() if is_round(name)]


def is_continued(data: dict) -> bool:
    """Whether the run's rounds went on from a kept version (--first-round > 1)."""
    return rounds(data)[0][0] != "round 1"


def heldout_lines(heldout: dict | None, last_round: str, job_prompts: int | None, job: dict) -> list[str]:
    """The last round on every held-out prompt (t2i_scripts.eval.heldout_eval), beside the job's own figures
    (`job`: points gained per measure, as fractions)."""
    summary = (heldout or {}).get("summary", {})
    if last_round not in summary:
        return []
    gains = summary[last_round]["gains"]
    shown = ", ".join(
        f"{name} {heldout_eval.interval(gains[name])}" for name in job if gains.get(name) is not None
    )
    read = ", ".join(f"{name} {points(change)}" for name, change in job.items())
    apart = [abs(change - gains[name]["gain"]) for name, change in job.items() if gains.get(name) is not None]
    outside = [
        name
        for name, change in job.items()
        if gains.get(name) is not None and not gains[name]["low"] <= change <= gains[name]["high"]
    ]
    judged = (
        f"{', '.join(outside)} outside the whole split's 95% interval"
        if outside
        else "every one inside the whole split's 95% interval"
    )
    return [
        f"- **On every held-out prompt** ({heldout['prompts']} × {heldout['images_per_prompt']} images, "
        f"section below), {last_round} against the pretrained model: {shown} points (95% intervals). "
        f"The jobs' evaluation above, on {job_prompts or 'some'} of those prompts, read {read}: up to "
        f"{100 * max(apart, default=0):.1f} points from the whole split's figures, {judged}."
    ]


def describe_rounds(data: dict) -> list[str]:
    """One line per round: what the rater labelled, the job's stages and its version."""
    lines = []
    for (name, record), rated, job_settings in zip(
        rounds(data), data["rated"], data["settings"]["rounds"], strict=True
    ):
        job = record["job"]
        stage_times = ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in record["stages"].items())
        gate = "passed, activated" if job["metrics"]["gate"]["passed"] else "refused"
        labels = ", ".join(f"{count} {label}" for label, count in sorted(rated["labels"].items()))
        which = (
            "these ratings (`feedback_filter`: the base's own images)"
            if (record["job"].get("spec", {}).get("feedback_filter") or {}).get("model")
            else "every rating so far"
        )
        lines.append(
            f"- **{name.capitalize()}**, from `{rated['model']}`: {rated['prompts']} training prompts × "
            f"{rated['images'] // rated['prompts']} served images rated by the simulated rater through "
            f"POST /feedback ({labels}; "
            f"{rated['generate_seconds'] + rated['rate_seconds']:.0f} s). Then a job on {which} plus "
            f"{job_settings['job_prompts']} training prompts × {job_settings['images_per_prompt']} "
            f"samples scored by shapes-reward: {record['seconds']:.0f} s ({stage_times}). Version "
            f"`{job['result_model']}`; gate: {gate}."
        )
    return lines


def round_minutes(data: dict) -> dict[str, float]:
    """Each round's minutes: rating its base's images, then its job."""
    return {
        name: (rated["generate_seconds"] + rated["rate_seconds"] + record["seconds"]) / 60
        for (name, record), rated in zip(rounds(data), data["rated"], strict=True)
    }


def continued_markdown(data: dict, earlier: dict | None, heldout: dict | None) -> str:
    """The section for rounds that go on from a kept version (--first-round > 1): how far more rounds carry
    the count past the budget, and what they cost, on every held-out prompt."""
    loop = rounds(data)
    names = [name for name, _ in loop]
    minutes = round_minutes(earlier) if earlier else {}
    minutes.update(round_minutes(data))
    base = loop[0][1]["job"]["base_model"]
    lines = [
        CONTINUED_BEGIN,
        f"## Past the budget: {' and '.join(names)} (issue #5)",
        "",
        f"Measured by `{data['command']}` on {data['machine']}: the loop's job settings again, going on from "
        f"the version `{base}` that the measured loop above made and kept, to see how far more rounds of "
        "feedback carry the count and what they cost. These rounds are outside the 45-minute budget.",
        "",
        *describe_rounds(data),
        "",
        f"**These {len(loop)} rounds took {data['loop_seconds'] / 60:.1f} min.**",
    ]
    summary = (heldout or {}).get("summary", {})
    ordered = [name for name in minutes if name in summary]
    if ordered:
        so_far = dict(zip(ordered, accumulate(minutes[name] for name in ordered), strict=True))
        rows = [
            [name, f"{so_far[name]:.1f}"]
            + [
                heldout_eval.interval(summary[name]["gains"][key])
                if summary[name]["gains"].get(key)
                else "n/a"
                for key in HELDOUT_GAINS
            ]
            for name in ordered
        ]
        lines += [
            "",
            f"Every round on every held-out prompt ({heldout['prompts']} × {heldout['images_per_prompt']} "
            "images, the section above): points gained over the pretrained model, with 95% intervals, and "
            "the minutes the rounds took on this machine up to that one (rating and job).",
            "",
            table(["round", "minutes so far", *HELDOUT_GAINS], rows),
            "",
            *target_verdict(so_far, summary),
            *round_steps(ordered, summary),
            *gate_on_the_whole_split(data, summary),
        ]
    rows = comparison_rows(data)
    lines += [
        "",
        "The jobs' own evaluations (the same held-out sample and seeds as above):",
        "",
        table(
            ["model", *ATTRIBUTES, "all right", "quality", "diversity", "reward"],
            evaluation_rows(data["jobs"], f"`{base}`"),
        ),
        "",
        "On the prompts and seeds of `make bench-reward`, one image per request:",
        "",
        table(["", *ATTRIBUTES, "seconds per image"], rows),
        "",
        CONTINUED_END,
    ]
    return "\n".join(lines)


HELDOUT_GAINS = ("count", "colour", "background", "quality")


def target_verdict(so_far: dict[str, float], summary: dict) -> list[str]:
    """When, if ever, the rounds meet the count target and whether colour and background stay within their
    limit there, on the whole held-out split. `so_far`: each round's minutes of rounds up to it, in order."""

    def gain(name: str, key: str) -> float:
        return summary[name]["gains"][key]["gain"]

    def span(name: str, key: str) -> tuple[float, float]:
        entry = summary[name]["gains"][key]
        return entry["low"], entry["high"]

    # Met only when the whole 95% interval is past +15 points.
    met = [name for name in so_far if span(name, "count")[0] >= 0.15]
    last = list(so_far)[-1]
    costs = f"colour {points(gain(last, 'colour'))}, background {points(gain(last, 'background'))}"
    if not met:
        low, high = span(last, "count")
        settled = "is not met" if high < 0.15 else "is not settled: its 95% interval spans +15"
        return [
            f"- **Count**: {points(gain(last, 'count'))} points after {last} ({so_far[last]:.0f} min of "
            f"rounds, 95% interval {points(low)} to {points(high)}); the target, +15, {settled}. At that "
            f"point {costs} points (limit: 5)."
        ]
    first = met[0]
    lows = [span(first, key)[0] for key in ("colour", "background")]
    highs = [span(first, key)[1] for key in ("colour", "background")]
    if min(lows) >= -0.05:
        limit = "within the 5-point limit, whole intervals"
    elif min(highs) < -0.05:
        limit = "past the 5-point limit, whole intervals"
    else:
        limit = "the 5-point limit not settled: an interval spans it"
    return [
        f"- **Count**: the target, +15 points, is first met after {first} (its whole 95% interval), "
        f"{so_far[first]:.0f} min of rounds on this machine (budget: 45): {points(gain(first, 'count'))} "
        f"points, with colour {points(gain(first, 'colour'))} and background "
        f"{points(gain(first, 'background'))} ({limit})."
    ]


def round_steps(ordered: list[str], summary: dict) -> list[str]:
    """What each round adds over the one before it, on the whole held-out split."""

    def share(name: str, key: str) -> float:
        entry = summary[name]
        return entry["quality"] if key == "quality" else entry["attributes"][key]

    keys = ("count", "colour", "shape", "quality")
    steps = [
        f"{current} {', '.join(f'{key} {points(share(current, key) - share(before, key))}' for key in keys)}"
        for before, current in pairwise(["pretrained", *ordered])
        if all(name in summary for name in (before, current))
    ]
    if not steps:
        return []
    return [f"- **Each round over the one before**, on the whole split (points): {'; '.join(steps)}."]


def gate_on_the_whole_split(data: dict, summary: dict) -> list[str]:
    """The rounds' gate verdicts, on the jobs' evaluation sample, beside the quality the whole split measures
    against the same base."""
    lines = []
    names = list(summary)
    for name, record in rounds(data):
        job = record["job"]
        gate = job["metrics"]["gate"]
        index = names.index(name) if name in names else -1
        if index < 1 or "max_quality_drop" not in gate:
            continue
        before = names[index - 1]
        drop = summary[before]["quality"] - summary[name]["quality"]
        sample = gate.get("quality_drop", 0.0)
        limit = gate["max_quality_drop"]
        if drop > limit >= sample:
            lines.append(
                f"- **The gate** passed {name} on the jobs' evaluation sample (quality down "
                f"{100 * sample:.1f} points from its base, at most {100 * limit:.0f} allowed); on the whole "
                f"split its quality fell {100 * drop:.1f} points from {before}'s, which that gate would have "
                "refused."
            )
    return lines


def comparison_rows(data: dict) -> list[list[str]]:
    """One image per request from each version, on bench-reward's prompts and seeds, with its cost."""
    return [
        [name]
        + [percent(row["attributes"].get(key)) for key in ATTRIBUTES]
        + [f"{row['seconds_per_image']:.3f}"]
        for name, row in data["comparison"].items()
    ]


def markdown(data: dict, trials: list[str], heldout: dict | None = None) -> str:
    loop = rounds(data)
    base = loop[0][1]["job"]["metrics"]["evaluation"]["base"]
    last = loop[-1][1]["job"]["metrics"]["evaluation"]["candidate"]
    first = loop[0][1]["job"]["metrics"]["evaluation"]["candidate"]
    count_gain = last["attributes"]["count"] - base["attributes"]["count"]
    changes = {
        name: last["attributes"][name] - base["attributes"][name]
        for name in ("colour", "background")
        if name in base["attributes"]
    }
    s = data["settings"]
    round_lines = describe_rounds(data)
    lines = [
        BEGIN,
        "## Fine-tuning from feedback (issue #5)",
        "",
        f"Measured by `{data['command']}` on {data['machine']}, through the service: {len(loop)} rounds of "
        "feedback, each starting from the previous round's version. Each job trains "
        f"{s['steps']} steps of batch {s['batch_size']}, {s['pretrain_fraction']:.0%} of it pre-training "
        f"renders ({s['pretrain_images']} of them, with the pretraining's noisy captions); learning rate "
        f"{s['learning_rate']} with the {s['lr_schedule']} schedule, beta {s['beta']}, text encoder "
        f"{'trained' if s['train_text_encoder'] else 'frozen'}, EMA {s['ema_decay']}, 10% empty captions.",
        "",
        *round_lines,
        "",
        f"**The loop took {data['loop_seconds'] / 60:.1f} min** (budget: 45), its {len(loop)} rounds together"
        + ("; the ablation ran after round 1 and is not counted." if ABLATION in data["jobs"] else "."),
        "",
        "The jobs' own evaluations, on held-out prompts with the same prompts and seeds for every model: "
        f"{s['eval_per_category']} per category × {s['eval_images']} images. The held-out split has no "
        "background-only prompts, so background is judged on combination prompts. An attribute's share is "
        "over the images whose prompt states it.",
        "",
        table(
            ["model", *ATTRIBUTES, "all right", "quality", "diversity", "reward"],
            evaluation_rows(data["jobs"]),
        ),
        "",
        f"- **Alignment**: count {points(count_gain)} points on held-out prompts after round {len(loop)} "
        f"(target: at least +15); round 1 alone: "
        f"{points(first['attributes']['count'] - base['attributes']['count'])}.",
        "- **Cost**: "
        + ", ".join(f"{name} {points(change)} points" for name, change in changes.items())
        + " (target: no drop beyond 5 points).",
        *heldout_lines(
            heldout,
            loop[-1][0],
            base.get("prompts"),
            {"count": count_gain, **changes, "quality": last["quality"] - base["quality"]},
        ),
    ]
    if ABLATION in data["jobs"]:
        ablation = data["jobs"][ABLATION]["job"]["metrics"]["evaluation"]["candidate"]
        lines.append(
            f"- **Ablation, beta = 0** (the paper's Table 3 analogue): round 1's job again without the "
            f"pre-training term. Quality proxy {percent(ablation['quality'])}, against "
            f"{percent(first['quality'])} at beta = {s['beta']} and {percent(base['quality'])} before; "
            f"diversity {ablation['diversity']:.3f}, against {first['diversity']:.3f} and "
            f"{base['diversity']:.3f}; colour accuracy {percent(ablation['attributes']['colour'])}, against "
            f"{percent(first['attributes']['colour'])} and {percent(base['attributes']['colour'])}; count "
            f"{percent(ablation['attributes']['count'])}, against {percent(first['attributes']['count'])} "
            f"and {percent(base['attributes']['count'])}."
        )
    if "learning rate too high" in data["jobs"]:
        bad = data["jobs"]["learning rate too high"]["job"]
        verdict = bad["metrics"]["gate"]
        reasons = f" ({'; '.join(verdict['reasons'])})" if verdict["reasons"] else ""
        lines.append(
            f"- **The gate**: a job at learning rate {s['bad_learning_rate']} ({s['bad_prompts']} prompts × "
            f"{s['bad_images_per_prompt']} samples, {s['bad_steps']} steps) made `{bad['result_model']}`; "
            f"the gate {'passed' if verdict['passed'] else 'refused'} it{reasons}, and the active version "
            f"stayed `{data['active_after_bad']}`."
        )
    rows = comparison_rows(data)
    lines += [
        "",
        "Against best-of-16 on the pretrained model, on the prompts and seeds of `make bench-reward` "
        "(held-out colour, count and combination prompts, seen background prompts; 8 images each), judged by "
        "the rater. Best-of-16's row is the committed models/reward-serving.json; the others are measured "
        "here.",
        "",
        table(["", *ATTRIBUTES, "seconds per image"], rows),
        *trials,
        "",
        END,
    ]
    return "\n".join(lines)


def trial_row(trial: dict) -> list[str]:
    spec = trial["spec"] or {}
    pretrain = spec.get("pretrain", {})
    if not spec:
        samples, captions, trained = "-", "-", "-"
    else:
        samples = trial_samples(spec)
        captions = "exact" if pretrain.get("count_noise", 0.5) == 0 else "noisy"
        trained = "cross-attention" if spec.get("unet_layers") == "cross_attention" else "UNet"
        if spec.get("train_text_encoder"):
            trained += " + text encoder"
    return (
        [
            trial["name"],
            samples,
            str(spec.get("steps", "-")),
            str(spec.get("learning_rate", "-")) + (", cosine" if spec.get("lr_schedule") == "cosine" else ""),
            str(spec.get("beta", "-")),
            trained,
            str(spec.get("ema_decay", 0)) if spec else "-",
            # Trials a to g ran before the trainer had caption dropout: they trained with none. Trials that
            # record their split ran after it became the default (0.1).
            str(spec.get("caption_dropout", 0.1 if "split" in trial else 0)) if spec else "-",
            f"{spec.get('pretrain_fraction', 0.5)}, {captions}" if spec else "-",
        ]
        + [percent(trial["attributes"].get(key)) for key in ATTRIBUTES]
        + [
            percent(trial["good"]),
            percent(trial["quality"]),
            f"{trial['diversity']:.3f}",
        ]
    )


def trial_samples(spec: dict) -> str:
    """What a trial trained on, from its samples file (and its base, when that is another trial)."""
    path = spec.get("samples", "")
    if path.endswith("samples-rater-latent.jsonl"):
        return "8,448 drawn in PyTorch, their latents"
    if "train-latents" in path:
        return "8,448 drawn in PyTorch"
    if "train-samples-" in path:
        start = Path(spec.get("base", "")).parent.name.removeprefix("run-")
        return f"4,224 served by {start}, starting from {start}"
    if path.endswith("samples-count.jsonl"):
        return "8,448 served, count-only oracle"
    if path.endswith("samples-reward.jsonl"):
        return "8,448 served, reward-model scores"
    if "train-samples" in path:
        return "8,448 served"
    return "4,224 `make models`"


def caption_dropout_trial(trials: list[dict]) -> str:
    """Trial h against e, which it repeats with caption dropout: the held-out changes, from the figures."""
    held = {
        trial["name"]: trial["attributes"] for trial in trials if trial.get("split", "heldout") == "heldout"
    }
    if "h" not in held or "e" not in held:
        return ""
    moves = ", ".join(
        f"{key} {points(held['h'][key] - held['e'][key])}"
        for key in ("colour", "background")
        if key in held["h"]
    )
    return (
        f" Trial h repeats e with it: against e, {moves} points held-out (one evaluation each, no interval)."
    )


def trials_table(path: Path) -> list[str]:
    """The trials that chose the job's settings (t2i_trainer.trials.finetune_trials), against the base model,
    and the trials that tell what limits the count gain."""
    if not path.is_file():
        return []
    trials = [json.loads(line) for line in path.read_text().splitlines()]
    heldout = [trial_row(trial) for trial in trials if trial.get("split", "heldout") == "heldout"]
    seen = [trial_row(trial) for trial in trials if trial.get("split") == "seen"]
    header = ["trial", "samples", "steps", "lr", "beta", "trained", "EMA", "empty captions"]
    header += ["pre-training share, captions", *ATTRIBUTES]
    header += ["all right", "quality", "diversity"]
    lines = [
        "",
        "The trials that chose these settings (`t2i_trainer.trials.finetune_trials`, models/fine-tune-"
        "trials.jsonl): each fine-tunes shapes-sd in PyTorch on rated training samples with the rater's "
        "labels as rewards (good 1, bad 0), then rates 28 held-out prompts × 16 images. `base` is the "
        "pretrained model. Trials a to i train on the 4,224 samples `make models` drew (18.7% good); j to"
        " o and q on 8,448 images served for every one of the 528 training prompts, 16 each "
        "(`t2i_scripts.eval.sample_train_set`, 1,553 good, 18.4%; m and q with other rewards, see below); "
        "p on "
        "4,224 images served by n's model. `trained` names the weights a trial changes. Batches are 32 "
        "rows; `pre-training share` is the share of each batch from pre-training renders, whose captions "
        "are the pretraining's noisy ones (half with a wrong or missing count) or, in the control k "
        "alone, exact.",
        "",
        table(header, heldout),
        "",
        "`empty captions` is the share of rows trained with the empty caption, as the pretraining did "
        "(10%). Without it the unconditional prediction that guidance subtracts is never trained and may "
        f"drift.{caption_dropout_trial(trials)} The trainer drops 10% of captions by default, in the loop's "
        "jobs too.",
    ]
    if seen:
        lines += [
            "",
            "The same models on seen prompts (`--split seen`: 16 per category of the training split, "
            "8 images each; background-only prompts count for background here):",
            "",
            table(header, seen),
        ]
    lines += count_limit(trials)
    return lines


def schedule_findings(found: dict, both, seen_part, versus, meets_both) -> list[str]:
    """Trials r to v: whether re-encoded PNGs or the learning rate cost the colour."""
    paragraphs = []
    if all((name, "heldout") in found for name in ("r", "r0")):
        round_trip = ""
        if ROUND_TRIP.is_file():
            rounds = json.loads(ROUND_TRIP.read_text())
            first, second = rounds["rounds"][0]["attributes"], rounds["rounds"][1]["attributes"]
            round_trip = (
                f" Encoding the model's own images with its VAE and decoding them again costs "
                f"{points(first['colour'] - second['colour']).lstrip('+')} points of colour accuracy and "
                f"{points(first['shape'] - second['shape']).lstrip('+')} of shape "
                f"(`t2i_trainer.trials.vae_round_trip` on {rounds['images']:,} served samples, "
                "models/vae-round-trip.json), so a fine-tune on re-encoded PNGs could learn that loss."
            )
        paragraphs.append(
            f"Trials r to v look for where the colour goes.{round_trip} Trials r and r0 train with n's "
            "settings on 8,448 images the base drew in PyTorch (`t2i_trainer.trials.sample_train_latents`): "
            "r on the "
            "latents the images were decoded from (the trainer's `latent` field), r0 on the PNGs encoded "
            f"again, as the job does: r {both('r', 'count')}, {both('r', 'colour')}; r0 "
            f"{both('r0', 'count')}, {both('r0', 'colour')}: the latents move count "
            f"{versus('r', 'r0', 'count')} and colour {versus('r', 'r0', 'colour')} points against the PNGs "
            "(one evaluation each, no interval). The job encodes its PNGs."
        )
    if ("s", "heldout") in found:
        paragraphs.append(
            "Trial s trains on pre-training renders alone (31 of every 32 rows, beta 1) at the same constant "
            f"learning rate, 3e-4: {both('s', 'count')}, {both('s', 'colour')}, {both('s', 'background')}, "
            "without any feedback. The base's pretraining ended with its learning rate decayed to a tenth of "
            "its 1e-3 peak."
        )
    if ("u", "heldout") in found and ("r0", "heldout") in found:
        paragraphs.append(
            "Trial u is r0 with the learning rate decayed along a cosine to a tenth by the last step "
            f"(`lr_schedule: cosine`): {both('u', 'count')}, {both('u', 'colour')}, {both('u', 'background')}"
            f" (r0: {both('r0', 'count')}, {both('r0', 'colour')}, {both('r0', 'background')}): against r0 "
            f"the cosine moves count {versus('u', 'r0', 'count')} and colour {versus('u', 'r0', 'colour')} "
            "points. The job's `lr_schedule` defaults to cosine."
        )
    if ("v", "heldout") in found and ("n", "heldout") in found:
        paragraphs.append(
            f"Trial v is n with the cosine: {both('v', 'count')}, {both('v', 'colour')}, "
            f"{both('v', 'background')} (n: {both('n', 'count')}, {both('n', 'colour')}){seen_part('v')}."
        )
    if ("w", "heldout") in found and ("v", "heldout") in found:
        paragraphs.append(
            "Trial w is a second round from v, as p was from n: v's model served 8 images of every training "
            "prompt, the rater labelled them, and w trained from v with v's settings: "
            f"{both('w', 'count')}, {both('w', 'colour')}, {both('w', 'background')} against the base"
            f"{seen_part('w')}. On these figures (one evaluation, no interval) w "
            f"{'meets' if meets_both('w') else 'does not meet'} both targets (count +15, colour within 5 "
            "points); the service's loop above runs two such rounds through the job API, with the rater "
            "labelling 3/4 of each round's samples and the reward model scoring the rest."
        )
    return paragraphs


def count_limit(trials: list[dict]) -> list[str]:
    """What the trials say about the count target: the feedback trial j, the exact-caption control k, and
    the diagnostic trials m to q when they are there."""
    found = {(trial["name"], trial.get("split", "heldout")): trial["attributes"] for trial in trials}
    needed = [(name, split) for name in ("base", "j", "k") for split in ("heldout", "seen")] + [
        ("h", "heldout")
    ]
    if not all(key in found for key in needed):
        return []

    def delta(name: str, split: str, attribute: str) -> float:
        return found[(name, split)][attribute] - found[("base", split)][attribute]

    def gain(name: str, split: str, attribute: str) -> str:
        return points(delta(name, split, attribute))

    def both(name: str, attribute: str) -> str:
        return f"{attribute} {gain(name, 'heldout', attribute)}"

    def versus(name: str, other: str, attribute: str) -> str:
        return points(found[(name, "heldout")][attribute] - found[(other, "heldout")][attribute])

    def meets_both(name: str) -> bool:
        return delta(name, "heldout", "count") >= 0.15 and delta(name, "heldout", "colour") >= -0.05

    def seen_part(name: str) -> str:
        if (name, "seen") not in found or ("base", "seen") not in found:
            return ""
        return f"; on seen prompts count {gain(name, 'seen', 'count')}, colour {gain(name, 'seen', 'colour')}"

    longer = ""
    if ("l", "heldout") in found and ("l", "seen") in found:
        longer = (
            " Trial l is j with twice the steps (3,000): count "
            f"{gain('l', 'heldout', 'count')} held-out and {gain('l', 'seen', 'count')} seen, colour "
            f"{gain('l', 'heldout', 'colour')} held-out and {gain('l', 'seen', 'colour')} seen."
        )
    later = []
    if all((name, "heldout") in found for name in ("m", "n", "o")):
        later.append(
            "Trial m keeps j's settings but rewards the count alone, an oracle no rater gives: reward 1 for "
            "every served image with the stated number of objects, whatever else is wrong (2,403 images "
            f"instead of 1,553): {both('m', 'count')}, {both('m', 'colour')} held-out, count "
            f"{versus('m', 'j', 'count')} points against j. Trial n gives the samples more "
            f"weight, 3/4 of each batch at beta 0.1: {both('n', 'count')}, {both('n', 'colour')} held-out"
            f"{seen_part('n')}. Trial o trains only the "
            "UNet's cross-attention layers (`unet_layers`), at learning rate 1e-3 with the text encoder "
            f"frozen: {both('o', 'count')}, {both('o', 'colour')}."
        )
    if ("p", "heldout") in found:
        later.append(
            "Trial p is a second round on the model's own images: n's model served 8 images of every "
            "training prompt (`t2i_scripts.eval.sample_train_set --model`), the rater labelled them, and p "
            f"trained from n with n's settings: {both('p', 'count')}, {both('p', 'colour')} held-out against "
            f"the base (n alone: {both('n', 'count')}, {both('n', 'colour')}){seen_part('p')}."
        )
    if ("q", "heldout") in found:
        later.append(
            "Trial q is j with the reward model's scores as rewards instead of the rater's labels: "
            f"{both('q', 'count')}, {both('q', 'colour')} (j: "
            f"{both('j', 'count')}, {both('j', 'colour')}): count {versus('q', 'j', 'count')} and colour "
            f"{versus('q', 'j', 'colour')} points against the rater's labels. The job uses the reward "
            "model's scores for the images nobody rated."
        )
    later.extend(schedule_findings(found, both, seen_part, versus, meets_both))
    feedback = [name for name, split in found if split == "heldout" and name not in ("base", "k", "s")]
    if later and feedback:

        def change(name: str, attribute: str) -> float:
            return delta(name, "heldout", attribute)

        best = max(feedback, key=lambda name: change(name, "count"))
        kept = [name for name in feedback if change(name, "colour") >= -0.05]
        sentence = (
            f"Of the feedback trials (all but k), the largest held-out count gain is "
            f"{both(best, 'count')} (trial {best}), with {both(best, 'colour')}"
        )
        if kept:
            safe = max(kept, key=lambda name: change(name, "count"))
            sentence += (
                f"; the largest that keeps colour within 5 points is {both(safe, 'count')} "
                f"(trial {safe}, {both(safe, 'colour')})"
            )
        meets = [name for name in kept if change(name, "count") >= 0.15]
        if meets:
            sentence += f". Trials meeting both targets on these figures: {', '.join(sorted(meets))}."
        else:
            sentence += ". None meets both targets (count +15, colour within 5 points) on these figures."
        sentence = sentence[:-1] + " (one evaluation each, no interval)."
        later.append(sentence)
    return [
        "",
        "**What limits the count gain.** Trial j trains on twice the rated samples of h, covering every "
        f"training prompt: count {gain('j', 'heldout', 'count')} and colour {gain('j', 'heldout', 'colour')} "
        f"points on held-out prompts (h: {gain('h', 'heldout', 'count')} and "
        f"{gain('h', 'heldout', 'colour')}). "
        "On its own training prompts (seen) count moves "
        f"{gain('j', 'seen', 'count')} points while colour moves {gain('j', 'seen', 'colour')}."
        f"{longer} The control k keeps j's settings but gives the "
        "pre-training renders their exact captions, 3/4 of each batch at beta 1: count "
        f"{gain('k', 'heldout', 'count')} points held-out and {gain('k', 'seen', 'count')} seen, colour "
        f"{gain('k', 'heldout', 'colour')} held-out. k is a control, not a fine-tune method: exact "
        "captions are the supervision the feedback is meant to replace.",
        *(["", " ".join(later)] if later else []),
    ]


def main() -> int:
    args = parse_args()
    if args.render_only:
        data = json.loads(args.json.read_text())
        heldout_json = held_out_json(args.json, is_continued(data))
        heldout = json.loads(heldout_json.read_text()) if heldout_json.is_file() else None
        render(args, data, heldout)
        return 0
    settings = args.settings
    served = json.loads((ROOT / "models" / "reward-serving.json").read_text())
    started = time.perf_counter()
    server = Server(args)
    try:
        # The served folder's name is its version's id.
        rated, jobs, versions = [], {}, [Path(args.model).name]
        for number, round_settings in enumerate(settings["rounds"], start=args.first_round):
            rated.append(rate_served_images(server, args, versions[-1], number, round_settings))
            emit("rated", round=number, **rated[-1])
            body = job_body(args, versions[-1], round_settings, settings["beta"], settings["learning_rate"])
            jobs[f"round {number}"] = run_job(server, body, f"round {number}")
            versions.append(jobs[f"round {number}"]["job"]["result_model"])
            if number == 1 and not args.skip_ablations:
                # Round 1's job again without the pre-training term, before round 2 adds ratings, so that it
                # trains on exactly round 1's data. Its time is not the loop's.
                ablation = job_body(args, versions[0], round_settings, 0.0, settings["learning_rate"], False)
                jobs[ABLATION] = run_job(server, ablation, "beta0")
        loop_seconds = time.perf_counter() - started - jobs.get(ABLATION, {}).get("seconds", 0.0)
        # The comparison on bench_reward's prompts and seeds.
        bench_args = argparse.Namespace(seed=0, prompts_per_category=8, images_per_prompt=8)
        if args.smoke:
            bench_args.prompts_per_category, bench_args.images_per_prompt = 1, 1
        comparison = {}
        first = "pretrained" if args.first_round == 1 else f"`{versions[0]}`"
        names = [f"{first}, one image"] + [
            f"round {n}, one image" for n in range(args.first_round, args.first_round + len(versions) - 1)
        ]
        for name, model in zip(names, versions, strict=True):
            result, _ = bench_reward.alignment(server, bench_args, best_of=(1,), model=model)
            comparison[name] = {
                "model": model,
                "attributes": attribute_shares(result[1]),
                "good": good_shares(result[1]),
                "seconds_per_image": seconds_per_image(server, model),
            }
        best16 = served["alignment"]["16"]
        comparison["pretrained, best-of-16 (make bench-reward)"] = {
            "attributes": attribute_shares(best16),
            "good": good_shares(best16),
            "seconds_per_image": served["cost"]["best_of_16_seconds"],
        }
        active_after_bad = None
        if not args.skip_ablations:
            # The gate's demonstration needs no more data than it takes to break the model.
            bad_round = {
                "job_prompts": settings["bad_prompts"],
                "images_per_prompt": settings["bad_images_per_prompt"],
            }
            bad = job_body(args, versions[0], bad_round, settings["beta"], settings["bad_learning_rate"])
            bad["hyperparameters"]["steps"] = settings["bad_steps"]
            jobs["learning rate too high"] = run_job(server, bad, "bad")
            active_after_bad = server.get("/models")["active"]
        kept = keep_versions(server, args, jobs)
    finally:
        server.stop()
    data = {
        "machine": f"{os.cpu_count()} CPUs",
        "command": loop_command(args),
        "settings": settings,
        "rated": rated,
        "loop_seconds": round(loop_seconds, 1),
        "jobs": jobs,
        "comparison": comparison,
        "active_after_bad": active_after_bad,
    }
    args.json.write_text(json.dumps(data, indent=2) + "\n")
    heldout = None
    if not args.skip_heldout_eval:
        command = [f"--model={name}={folder}" for name, folder in heldout_models(args, kept)]
        command += ["--binary", args.binary, "--threads", str(args.threads), "--report", str(args.report)]
        command += ["--json", str(held_out_json(args.json, args.first_round > 1))]
        if args.smoke:
            command += ["--prompts", "6", "--images-per-prompt", "1", "--bootstrap", "100"]
        heldout = heldout_eval.run(command)
    render(args, data, heldout)
    emit("done", report=str(args.report), loop_minutes=round(loop_seconds / 60, 1))
    return 0


def held_out_json(run_json: Path, continued: bool) -> Path:
    """Where t2i_scripts.eval.heldout_eval's figures go: beside the run's JSON. Rounds that go on from a kept
    version share the measured loop's file, since they are judged together with its versions."""
    if continued:
        return run_json.with_name("heldout-eval.json")
    return run_json.with_name(run_json.name.replace("fine-tune", "heldout-eval"))


def heldout_models(args: argparse.Namespace, kept: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The versions to judge on every held-out prompt: the run's base, then the kept ones. Rounds that go on
    from a kept version are judged with the pretrained model and every version kept before them, so that the
    table shows the whole curve."""
    if args.first_round == 1:
        return [("pretrained", args.model), *kept]
    earlier = [
        (f"round {number}", args.keep_versions / f"round-{number}") for number in range(1, args.first_round)
    ]
    ablation = [("beta 0", args.keep_versions / "beta-0")]
    found = [(name, relative(folder)) for name, folder in earlier + ablation if folder.is_dir()]
    rounds_found = [entry for entry in found if entry[0].startswith("round ")]
    others = [entry for entry in found if not entry[0].startswith("round ")]
    return [("pretrained", "models/shapes-sd"), *rounds_found, *kept, *others]


def relative(path: Path) -> str:
    """A path as the report's commands show it: from the repository's root when it is inside it."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def render(args: argparse.Namespace, data: dict, heldout: dict | None) -> None:
    """Writes the run's section of the report. Rounds that go on from a kept version (--first-round) get their
    own section, after the measured loop's (its fine-tune.json beside their JSON)."""
    if is_continued(data):
        earlier = args.json.with_name("fine-tune.json")
        before = json.loads(earlier.read_text()) if earlier.is_file() else None
        write_report(args.report, continued_markdown(data, before, heldout), CONTINUED_BEGIN, CONTINUED_END)
        return
    write_report(args.report, markdown(data, trials_table(args.trials), heldout), BEGIN, END)


def loop_command(args: argparse.Namespace) -> str:
    """How to run this measurement again."""
    if args.first_round == 1 and args.rounds is None:
        return "make finetune-rounds" + (" (smoke)" if args.smoke else "")
    command = (
        f"python -m t2i_scripts.eval.finetune_loop --model {args.model} --first-round {args.first_round}"
    )
    if args.rounds is not None:
        command += f" --rounds {args.rounds}"
    return command + (" --skip-ablations" if args.skip_ablations else "") + (" --smoke" if args.smoke else "")


def keep_versions(server: Server, args: argparse.Namespace, jobs: dict) -> list[tuple[str, str]]:
    """Copies the rounds' and the ablation's versions out of the server's data directory, which goes with
    the server; returns (name, folder) pairs, the rounds first."""
    kept = []
    for name, record in sorted(jobs.items(), key=lambda item: not is_round(item[0])):
        if not (is_round(name) or name == ABLATION):
            continue
        short = name.split(" (")[0]  # "beta 0 (ablation)" is "beta 0"
        target = args.keep_versions / short.replace(" ", "-")
        kept.append((short, copy_version(server, record["job"]["result_model"], target)))
    return kept


def copy_version(server: Server, version: str, target: Path) -> str:
    """Copies a registered version's folder out of the server's data directory (which goes with the server)
    into `target`, replacing what was there; returns `target` as the report shows it. The folder is the one
    GET /models names in `files` (`models/<id>-<8 hex>` in the default local store, since #25)."""
    listed = {entry["id"]: entry for entry in server.get("/models")["data"]}
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(Path(server.owned_data_dir.name) / listed[version]["files"], target)
    return relative(target)


if __name__ == "__main__":
    sys.exit(main())
