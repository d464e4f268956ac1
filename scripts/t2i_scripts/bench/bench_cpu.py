"""CPU speed (issue #29), side by side in one run: what the transformer optimiser's graphs give, and where
a single image stands against Optimum. Written to BENCHMARKS.md between its markers (`make bench`, which
rewrites that file, keeps the section).

Four sides load the same export with the same onnxruntime library and intra-op thread count:
* t2i-align with the optimised graphs (`--optimize-graphs on`, which makes `<model>/optimized/` when missing);
* the same with `--resident-loop on` (the device-resident loop);
* t2i-align with the export's own graphs (`--optimize-graphs off`);
* Optimum's ORTStableDiffusionPipeline on the export's own graphs.

Each makes one image (DDIM, guidance 7.5, so the UNet runs at batch 2). The sides take turns, with a pause of
quiet before each turn so that no side's ONNX Runtime threads are still spinning. In its turn a side makes two
calls, both timed: the first after the quiet (`cold`: on this virtual machine the cores' wake-up after an idle
spell costs every side tens of milliseconds, which varies with the machine's state) and the second at once
after it (`warm`, as on a server under steady load). A round is `--runs` turns; each round's medians give its
ratios, and the report gives the median ratio over `--rounds` rounds with its range, for each kind of call.
The share of time outside ONNX Runtime is computed from the medians (client time minus the server's
`inference_ms`, over client time), not as a median of ratios.

Run with `make bench-cpu` (the trainer's environment has diffusers and optimum-onnx).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from t2i_scripts import targets
from t2i_scripts.bench.bench import PROMPT, optimum_pipeline, run_optimum
from t2i_scripts.report import command_line, ratio_interval, repo_relative, write_report
from t2i_scripts.server import ServerProcess, recorded_library, serve_command

# The warm call of a turn uses the cold call's seed plus this, so the two draw different noise.
WARM_SEEDS = 500_000
BEGIN = "<!-- cpu:begin -->"
END = "<!-- cpu:end -->"
ROOT = Path(__file__).resolve().parents[3]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--binary", default="target/release/t2i-align", help="the t2i-align binary")
    parser.add_argument("--model", default="models/shapes-sd", help="an Optimum ONNX export folder")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads on every side")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps per image")
    parser.add_argument("--size", type=int, default=64, help="image width and height")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each gives one ratio")
    parser.add_argument("--runs", type=int, default=15, help="timed turns per side in a round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed turns per side before the first round")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds of quiet before each timed call")
    parser.add_argument("--port", type=int, default=18090, help="loopback port (+1 for the other server)")
    parser.add_argument("--trainer-python", default=str(ROOT / ".venv-trainer/bin/python"))
    parser.add_argument("--out", default="BENCHMARKS.md", help="where to write the section")
    parser.add_argument("--json", default="BENCHMARKS-cpu.json", help="where to write the figures")
    parser.add_argument("--job-requests", type=int, default=21, help="timed requests in each job phase")
    parser.add_argument(
        "--job-flags", default="", help="extra serve flags for the job measurement, e.g. '--job-call-rows 4'"
    )
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: latency, job")
    args = parser.parse_args(argv)
    args.job_flags = args.job_flags.split()
    args.skip = {part for part in args.skip.split(",") if part}
    for name in ("threads", "steps", "size", "rounds", "runs", "job_requests"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1. Given: {getattr(args, name)}")
    return args


def generate(server: ServerProcess, args: argparse.Namespace, seed: int) -> tuple[float, float, float]:
    """Client seconds around the request, the server's seconds inside ONNX Runtime, and the server's own
    seconds for the request (`total_ms`: from the handler's start to the answer, HTTP and client excluded)."""
    elapsed, payload = server.post("/generate", {
        "prompt": PROMPT, "n": 1, "steps": args.steps, "guidance_scale": 7.5, "scheduler": "ddim",
        "seed": seed, "width": args.size, "height": args.size,
    })  # fmt: skip
    timings = payload["timings"]
    return elapsed, timings["inference_ms"] / 1e3, timings["total_ms"] / 1e3


def measure(args: argparse.Namespace) -> dict:
    library = recorded_library()
    common = dict(threads=args.threads, trainer_python=args.trainer_python)
    flags = ["--no-reward-model", "--optimize-graphs"]
    optimised = ServerProcess(
        serve_command(args.binary, args.model, **common, flags=[*flags, "on"]),
        args.port,
        library,
        ready_timeout=600,
    )
    try:
        log = "".join(optimised.log)
        plain = ServerProcess(
            serve_command(args.binary, args.model, **common, flags=[*flags, "off"]),
            args.port + 1,
            library,
        )
        resident = ServerProcess(
            serve_command(args.binary, args.model, **common, flags=[*flags, "on", "--resident-loop", "on"]),
            args.port + 2,
            library,
        )
        try:
            pipe = optimum_pipeline(args.model, args.threads)
            sides = {
                "optimised": lambda seed: generate(optimised, args, seed),
                "original": lambda seed: generate(plain, args, seed),
                "resident": lambda seed: generate(resident, args, seed),
                "optimum": lambda seed: optimum_turn(pipe, args, seed),
            }
            for seed in range(args.warmup):
                for run in sides.values():
                    run(seed)
            rounds, warm_rounds = [], []
            for index in range(args.rounds):
                times = {name: [] for name in sides}
                warm = {name: [] for name in sides}
                for turn in range(args.runs):
                    seed = 1000 * index + turn
                    for name, run in sides.items():
                        time.sleep(args.pause)
                        times[name].append(run(seed))
                        warm[name].append(run(seed + WARM_SEEDS))
                rounds.append(times)
                warm_rounds.append(warm)
                for kind, figures in (("cold", times), ("warm", warm)):
                    medians = {k: median_of(v) for k, v in figures.items()}
                    print(json.dumps({"round": index, "calls": kind, **medians}), flush=True)
        finally:
            plain.stop()
            resident.stop()
    finally:
        optimised.stop()
    manifest = json.loads((Path(args.model) / "optimized" / "optimized.json").read_text())
    return {
        "rounds": rounds,
        "warm_rounds": warm_rounds,
        "optimized": manifest,
        "log_made_graphs": "graphs optimised" in log,
    }


# A fine-tune job that samples long enough to time users' requests beside it, then trains for a while.
JOB = {
    "prompts": {"generator": "shapes_world", "split": "train", "count": 400},
    "images_per_prompt": 2,
    "use_feedback": False,
    "hyperparameters": {"steps": 200, "batch_size": 4},
    "eval_prompts": {"generator": "shapes_world", "split": "heldout", "count": 4},
    "eval_images_per_prompt": 1,
    "seed": 0,
}


def measure_job(args: argparse.Namespace) -> dict:
    """`/generate` p50 (one client, one request at a time) on an idle server, then while a fine-tune job on
    the same server samples, then while its trainer trains; the job is cancelled at the end."""
    library = recorded_library()
    reward = ROOT / "models" / "shapes-reward"
    command = serve_command(
        args.binary, args.model, threads=args.threads, reward_model=reward,
        trainer_python=args.trainer_python, flags=["--optimize-graphs", "on", *args.job_flags],
    )  # fmt: skip
    server = ServerProcess(command, args.port, library, ready_timeout=600)
    latencies: dict[str, list[float]] = {"idle": [], "sample": [], "train": []}
    try:
        for seed in range(args.warmup):
            generate(server, args, seed)
        for turn in range(args.job_requests):
            time.sleep(args.pause)
            latencies["idle"].append(generate(server, args, turn)[0])
        _, job = server.post("/fine-tunes", JOB)
        job_id = job["id"]
        deadline = time.time() + 1800
        turn = 0
        while time.time() < deadline:
            stage = server.get(f"/fine-tunes/{job_id}")
            if stage["status"] in ("succeeded", "failed", "cancelled"):
                break
            key = stage.get("stage")
            if key not in latencies or len(latencies[key]) >= args.job_requests:
                if all(len(latencies[k]) >= args.job_requests for k in ("sample", "train")):
                    break
                time.sleep(0.2)
                continue
            time.sleep(args.pause)
            elapsed, _ = generate(server, args, 10_000 + turn)
            turn += 1
            # Counted only when the job was in the same stage before and after the request.
            if server.get(f"/fine-tunes/{job_id}").get("stage") == key:
                latencies[key].append(elapsed)
        server.post(f"/fine-tunes/{job_id}/cancel", {})
    finally:
        server.stop()
    return latencies


def optimum_turn(pipe, args: argparse.Namespace, seed: int) -> tuple[float, float, float]:
    """Optimum's pipeline call, its sessions' time in `run`, and the call again (it has no HTTP around it)."""
    seconds = run_optimum(pipe, args.steps, args.size, seed)
    return seconds, pipe.ort_seconds, seconds


def median_of(turns: list) -> dict:
    """Medians in ms of a side's turns: (client, inside ONNX Runtime, server) seconds; older figures have no
    server time."""
    medians = {
        "total_ms": statistics.median(turn[0] for turn in turns) * 1e3,
        "ort_ms": statistics.median(turn[1] for turn in turns) * 1e3,
    }
    if all(len(turn) > 2 for turn in turns):
        medians["server_ms"] = statistics.median(turn[2] for turn in turns) * 1e3
    return medians


def summarise(data: dict) -> dict:
    per_round = [{name: median_of(pairs) for name, pairs in times.items()} for times in data["rounds"]]

    def ratios(top: str, bottom: str) -> list[float]:
        return [r[top]["total_ms"] / r[bottom]["total_ms"] for r in per_round]

    def outside(side: str) -> float:
        total = statistics.median(r[side]["total_ms"] for r in per_round)
        ort = statistics.median(r[side]["ort_ms"] for r in per_round)
        return (total - ort) / total

    def split(side: str) -> dict | None:
        """The time outside ONNX Runtime, as shares of the client's time: in the server, and in HTTP and the
        client (from the medians)."""
        if not all("server_ms" in r[side] for r in per_round):
            return None
        total = statistics.median(r[side]["total_ms"] for r in per_round)
        ort = statistics.median(r[side]["ort_ms"] for r in per_round)
        server = statistics.median(r[side]["server_ms"] for r in per_round)
        return {"server": (server - ort) / total, "http_and_client": (total - server) / total}

    return {
        "per_round": per_round,
        "optimised_vs_optimum": ratios("optimised", "optimum"),
        "original_vs_optimum": ratios("original", "optimum"),
        "optimised_vs_original": ratios("optimised", "original"),
        "resident_vs_host_loop": ratios("resident", "optimised") if "resident" in per_round[0] else None,
        "outside_ort": {
            side: outside(side) for side in ("optimised", "original", "resident") if side in per_round[0]
        },
        "outside_ort_split": {side: split(side) for side in ("optimised", "original")},
    }


def span(values: list[float]) -> str:
    return f"{statistics.median(values):.3f}x (rounds {min(values):.3f}x to {max(values):.3f}x)"


def outside_split(summary: dict) -> str:
    split = (summary.get("outside_ort_split") or {}).get("optimised")
    if not split:
        return ""
    server, http = split["server"] * 100, split["http_and_client"] * 100
    return (
        f" Of the optimised side's share, {server:.1f}% of the request's time is in the server outside ONNX "
        f"Runtime (its `total_ms` minus `inference_ms`) and {http:.1f}% in HTTP and the Python client."
    )


def resident_row(summary: dict) -> str:
    """The device-resident loop (`--resident-loop on`) against the host loop (the optimised side: `auto` keeps
    the loop on the host on the CPU), on the same graphs."""
    ratios = summary.get("resident_vs_host_loop")
    if not ratios:
        return "| resident loop / host loop | not measured |"
    outside = summary["outside_ort"]["resident"] * 100
    return (
        f"| resident loop / host loop, optimised graphs | {span(ratios)}; the resident loop spends "
        f"{outside:.1f}% outside ONNX Runtime (its step graphs count as inside) |"
    )


def job_markdown(job: dict | None) -> str:
    if not job:
        return "The job measurement has not been run (`--skip job`)."
    idle = statistics.median(job["idle"])
    rows = []
    verdicts = {}
    for phase, label in (("idle", "idle server"), ("sample", "a job samples"), ("train", "a job trains")):
        values = job[phase]
        if not values:
            rows.append(f"| {label} | 0 | | |")
            continue
        p50 = statistics.median(values)
        if phase == "idle":
            rows.append(f"| {label} | {len(values)} | {p50 * 1e3:.1f} | 1 |")
            continue
        low, high = ratio_interval(values, job["idle"])
        verdicts[phase] = (p50 / idle, low, high)
        rows.append(
            f"| {label} | {len(values)} | {p50 * 1e3:.1f} | {p50 / idle:.2f}x ({low:.2f}x to {high:.2f}x) |"
        )
    text = [
        "| while | requests | p50 ms | p50 / idle p50 (95% interval) |",
        "|---|---|---|---|",
        *rows,
        "",
    ]
    if "sample" in verdicts:
        ratio, low, high = verdicts["sample"]
        target = targets.JOB_P50_MAX_STRETCH
        judged = "met" if high <= target else ("not met" if low > target else "not settled by the interval")
        text.append(
            f"While the job samples, `/generate`'s p50 is {ratio:.2f}x idle "
            f"(target <= {target:.2f}x: {judged})."
        )
    if "train" in verdicts:
        ratio, low, high = verdicts["train"]
        text.append(
            f"While its trainer trains on the same 2 cores, it is {ratio:.2f}x ({low:.2f}x to {high:.2f}x): "
            "the cost of training beside the server."
        )
    return "\n".join(text)


def calls_markdown(summary: dict, heading: str) -> str:
    """The ratio table, the optimiser's gain, the time outside ONNX Runtime and the rounds, for one kind of
    call (cold or warm)."""
    rows = []
    for index, r in enumerate(summary["per_round"]):
        ours, theirs, plain = (r[side]["total_ms"] for side in ("optimised", "optimum", "original"))
        rows.append(
            f"| {index} | {ours:.1f} | {plain:.1f} | {theirs:.1f} | "
            f"{ours / theirs:.3f}x | {ours / plain:.3f}x |"
        )
    best = statistics.median(summary["optimised_vs_optimum"])
    gain = statistics.median(summary["optimised_vs_original"])
    outside = summary["outside_ort"]["optimised"]
    met = best <= targets.LATENCY_MAX_RATIO
    outside_met = outside <= targets.OUTSIDE_ORT_MAX_SHARE
    judged = f"target <= {targets.LATENCY_MAX_RATIO}x: {'met' if met else 'not met'}"
    change = f"{(1 - gain) * 100:.1f}% less" if gain <= 1 else f"{(gain - 1) * 100:.1f}% more"
    return f"""{heading}

| ratio of medians | median over rounds |
|---|---|
| t2i-align (optimised graphs) / Optimum | **{span(summary["optimised_vs_optimum"])}**, {judged} |
| t2i-align (export's graphs) / Optimum | {span(summary["original_vs_optimum"])} |
| optimised / export's graphs, t2i-align | {span(summary["optimised_vs_original"])} |
{resident_row(summary)}

The optimised graphs make a request take {gain:.3f}x the time of the export's own ({change}).
Time outside ONNX Runtime `run` calls, from the medians: **{outside * 100:.1f}%** with the optimised graphs
(target <= {targets.OUTSIDE_ORT_MAX_SHARE:.0%}: {"met" if outside_met else "not met"}),
{summary["outside_ort"]["original"] * 100:.1f}% with the export's own.{outside_split(summary)}

| round | optimised ms | export's graphs ms | Optimum ms | optimised / Optimum | optimised / export's |
|---|---|---|---|---|---|
{chr(10).join(rows)}
"""


def markdown(args: argparse.Namespace, figures: dict) -> str:
    summary = figures["summary"]
    import onnxruntime

    command = command_line("t2i_scripts.bench.bench_cpu", sys.argv[1:])
    fused = []
    for component, record in figures["optimized"]["components"].items():
        if record["kept"]:
            ops = ", ".join(f"{count} {op}" for op, count in record["fusions"].items())
            fused.append(
                f"| {component} | kept | {ops} | {record['relative_error']:.1e} | "
                f"{record['original_ms']:.2f} | {record['optimized_ms']:.2f} |"
            )
        else:
            fused.append(f"| {component} | not kept: {record.get('reason', '')} | | | | |")
    cold = calls_markdown(summary, f"**Cold calls** (the first of each turn, after {args.pause} s of quiet):")
    warm_heading = "**Warm calls** (the second of each turn, at once after the first):"
    warm = (
        calls_markdown(figures["summary_warm"], warm_heading)
        if figures.get("summary_warm")
        else "Warm calls: not measured in this run."
    )
    return f"""{BEGIN}
## CPU: the optimised graphs, and one image against Optimum (#29)

Measured by `make bench-cpu` (`{command}`), in one run, side by side. Four sides load
`{repo_relative(args.model)}` with onnxruntime {onnxruntime.__version__} on the CPU execution provider with
{args.threads} intra-op threads:
t2i-align with the transformer optimiser's graphs (`--optimize-graphs on`; `--resident-loop auto` keeps the
loop's latents on the host on the CPU), the same with `--resident-loop on` (the device-resident loop, whose
device is host memory here), t2i-align with the export's own graphs, and Optimum's
`ORTStableDiffusionPipeline` on the export's own graphs. Each makes one {args.size}x{args.size} image with
{args.steps} DDIM steps at guidance 7.5 (UNet at batch 2). The sides take
turns with {args.pause} s of quiet before each turn: {args.rounds} rounds of {args.runs} turns after
{args.warmup} warm-up turns. In its turn a side makes two timed calls: a cold one after the quiet, and a warm
one at once after it. On this virtual machine an idle spell makes the next call slower on every side (the
cores' wake-up), by an amount that varies with the machine's state; the warm calls show the sides without it.
Each round's medians give its ratios.

{cold}
{warm}
What the optimiser did (`{repo_relative(args.model)}/optimized/optimized.json`; its own check: each graph on
the same random inputs, the two taking turns in blocks of 5 calls after a pause and an untimed call, median of
20, the UNet at the model's own latent size, ms):

| graph | verdict | fusions | relative error | original ms | optimised ms |
|---|---|---|---|---|---|
{chr(10).join(fused)}

### `/generate` while a fine-tune job runs on the same server

One client sends one request at a time ({args.steps} DDIM steps, {args.size}x{args.size}, {args.pause} s
apart) to a server that also runs a fine-tune job (`JOB` in bench_cpu.py: 400 prompts x 2 images sampled
through the same batcher, then 200 training steps in the trainer's own process). A request counts for a phase
when the job was in that phase before and after it. The job's samples are background work: users' requests
anchor every UNet call, and the job's rows ride beside them only up to `--job-spare-rows` (0 on the CPU by
default).
Serve flags added: `{" ".join(args.job_flags) or "none"}`.

{job_markdown(figures.get("job"))}

Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}.
{END}"""


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    previous = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else {}
    figures = dict(previous)
    if "latency" in args.skip and "summary" not in figures:
        sys.exit(f"no latency figures in {args.json}: run without --skip latency first")
    if "latency" not in args.skip:
        data = measure(args)
        figures.update(
            summary=summarise(data),
            summary_warm=summarise({"rounds": data["warm_rounds"]}),
            optimized=data["optimized"],
        )
    if "job" not in args.skip:
        figures["job"] = measure_job(args)
    Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    text = markdown(args, figures)
    write_report(Path(args.out), text, BEGIN, END)
    print(text)


if __name__ == "__main__":
    main()
