"""Best-of-n by reward, measured through the running service (issue #4), side by side in one run:

1. Alignment: the simulated rater's verdict on images from `/generate` with best_of 1, 4 and 16, per category,
   on held-out prompts (the paper's Table 6 analogue). The held-out split holds out object-colour-count
   combinations, so it has no background-only prompts; background uses seen prompts and says so. The same seed
   is used for every K, so best_of=K chooses among a superset of the candidates best_of=1 returns.
2. Cost: the latency of best_of=16 against one image, and against 16 single-image requests one after another.
3. Scoring throughput: `/score` images per second at 1, 16 and 64 images per request, and 4 clients at once.

Writes models/reward-serving.json and the section between the markers below in models/REPORT.md (report.py
keeps that section when it rewrites the report).

Usage (the light .venv is enough: numpy, Pillow and the trainer's world and rater):
    make bench-reward
    .venv/bin/python -m t2i_scripts.bench.bench_reward --binary target/release/t2i-align
"""

import argparse
import base64
import io
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from t2i_scripts import targets
from t2i_scripts.report import write_report
from t2i_scripts.server import ROOT, ServerProcess, serve_command
from t2i_trainer.build.rater import judge
from t2i_trainer.build.shapes_world import CATEGORIES, eval_prompts, heldout_prompts, train_prompts

BEGIN = "<!-- reward-serving:begin -->"
END = "<!-- reward-serving:end -->"
BEST_OF = (1, 4, 16)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--binary", default="target/release/t2i-align", help="the t2i-align binary")
    parser.add_argument("--model", default="models/shapes-sd")
    parser.add_argument("--reward-model", default="models/shapes-reward")
    parser.add_argument("--port", type=int, default=18093)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default: 2)")
    parser.add_argument("--prompts-per-category", type=int, default=8)
    parser.add_argument("--images-per-prompt", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", type=Path, default=ROOT / "models" / "REPORT.md")
    parser.add_argument("--json", type=Path, default=ROOT / "models" / "reward-serving.json")
    args = parser.parse_args()
    if not Path(args.binary).is_file():
        parser.error(f"--binary {args.binary} does not exist; run `make build` first")
    for flag in ("model", "reward_model"):
        if not Path(getattr(args, flag)).is_dir():
            parser.error(f"--{flag.replace('_', '-')} {getattr(args, flag)} is not a folder")
    if args.prompts_per_category < 1 or args.images_per_prompt < 1:
        parser.error("--prompts-per-category and --images-per-prompt must be at least 1")
    return args


class Server(ServerProcess):
    def __init__(self, args: argparse.Namespace):
        flags = ["--max-best-of", "16", "--max-candidates", "128", "--max-body-bytes", str(64 << 20)]
        command = serve_command(
            args.binary, args.model, threads=args.threads, reward_model=args.reward_model,
            flags=flags + ["--max-images", "8"],
        )  # fmt: skip
        super().__init__(command, args.port)


def png_image(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


def alignment(
    server: ServerProcess, args: argparse.Namespace, best_of=BEST_OF, model: str | None = None
) -> tuple[dict, list[str]]:
    """Per K and category: images judged good, and each stated attribute's matches. `model` picks a version
    (t2i_scripts.eval.finetune_loop compares a fine-tuned one on the same prompts and seeds)."""
    rng = np.random.default_rng(args.seed)
    heldout = eval_prompts(heldout_prompts(), args.prompts_per_category, rng)
    seen_background = [
        p for p in eval_prompts(train_prompts(), args.prompts_per_category, rng) if p.category == "background"
    ]
    prompts = [("held-out", p) for p in heldout] + [("seen", p) for p in seen_background]
    results: dict = {}
    pngs: list[str] = []
    for k in best_of:
        good = defaultdict(lambda: [0, 0])
        attributes = defaultdict(lambda: [0, 0])
        seconds = 0.0
        for number, (split, prompt) in enumerate(prompts):
            body = {
                "prompt": prompt.text,
                "n": args.images_per_prompt,
                "best_of": k,
                "seed": args.seed + 1000 * number,
            }
            if model is not None:
                body["model"] = model
            elapsed, payload = server.post("/generate", body)
            seconds += elapsed
            for image in payload["images"]:
                rating = judge(png_image(image["png_base64"]), prompt)
                key = f"{prompt.category} ({split})"
                good[key][0] += rating.label == "good"
                good[key][1] += 1
                for attribute, check in rating.reasons.items():
                    attributes[attribute][0] += check.ok
                    attributes[attribute][1] += 1
                if k == 1:
                    pngs.append(image["png_base64"])
        results[k] = {
            "good": {key: value for key, value in good.items()},
            "attributes": {key: value for key, value in attributes.items()},
            "seconds": round(seconds, 1),
            "prompts": len(prompts),
        }
        print(json.dumps({"event": "alignment", "best_of": k, "seconds": round(seconds, 1)}), flush=True)
    return results, pngs


def cost(server: Server) -> dict:
    prompt = "three red circles"

    def timed(body: dict) -> float:
        return server.post("/generate", body)[0]

    timed({"prompt": prompt, "seed": 1})  # warm the caches of this size
    timed({"prompt": prompt, "seed": 1, "best_of": 16})
    single = [timed({"prompt": prompt, "seed": 10 + i}) for i in range(9)]
    best16 = [timed({"prompt": prompt, "best_of": 16, "seed": 100 + i * 16}) for i in range(5)]
    started = time.perf_counter()
    for i in range(16):
        timed({"prompt": prompt, "seed": 1000 + i})
    separate = time.perf_counter() - started
    one = statistics.median(single)
    return {
        "one_image_seconds": round(one, 4),
        "best_of_16_seconds": round(statistics.median(best16), 4),
        "sixteen_requests_seconds": round(separate, 4),
        "best_of_16_over_one": round(statistics.median(best16) / one, 2),
        "sixteen_requests_over_one": round(separate / one, 2),
    }


def unet_scaling(model: str, threads: int) -> dict:
    """ONNX Runtime alone: one UNet call at 2 rows (one image with guidance) against 32 (16 candidates).

    The floor under best_of=16's cost: whatever the service does around it, 16 candidates need 20 of the
    32-row calls where one image needs 20 of the 2-row ones. Run with the server stopped.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        str(Path(model) / "unet" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    inputs = {spec.name: spec for spec in session.get_inputs()}
    hidden = inputs["encoder_hidden_states"].shape[-1]
    rng = np.random.default_rng(0)
    seconds = {}
    for rows in (2, 32):
        feed = {
            "sample": rng.standard_normal((rows, 4, 16, 16), dtype=np.float32),
            "encoder_hidden_states": rng.standard_normal((rows, 77, hidden), dtype=np.float32),
        }
        timestep = inputs["timestep"]
        dtype = np.int64 if "int64" in timestep.type else np.float32
        feed["timestep"] = (
            np.array(500, dtype=dtype) if not timestep.shape else np.full((rows,), 500, dtype=dtype)
        )
        for _ in range(5):
            session.run(None, feed)
        runs = []
        for _ in range(30):
            started = time.perf_counter()
            session.run(None, feed)
            runs.append(time.perf_counter() - started)
        seconds[rows] = statistics.median(runs)
    return {
        "rows_2_ms": round(1000 * seconds[2], 2),
        "rows_32_ms": round(1000 * seconds[32], 2),
        "ratio": round(seconds[32] / seconds[2], 2),
    }


def throughput(server: Server, pngs: list[str]) -> dict:
    prompt = "two blue stars on a white background"
    results = {}
    for batch in (1, 16, 64):
        images = [pngs[i % len(pngs)] for i in range(batch)]
        server.post("/score", {"prompt": prompt, "images": images})  # warm-up
        repeats = max(3, 256 // batch)
        started = time.perf_counter()
        for _ in range(repeats):
            server.post("/score", {"prompt": prompt, "images": images})
        elapsed = time.perf_counter() - started
        results[f"batch_{batch}"] = {
            "images_per_second": round(batch * repeats / elapsed, 1),
            "latency_ms": round(1000 * elapsed / repeats, 2),
        }
    # Four clients sending 16 images each at once: the scorer packs their images into shared calls.
    images = [pngs[i % len(pngs)] for i in range(16)]
    batch_sizes: list[int] = []

    def client(_: int) -> None:
        for _ in range(16):
            batch_sizes.extend(
                server.post("/score", {"prompt": prompt, "images": images})[1]["timings"]["batch_sizes"]
            )

    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(client, range(4)))
    elapsed = time.perf_counter() - started
    results["4_clients_x_16"] = {
        "images_per_second": round(4 * 16 * 16 / elapsed, 1),
        "mean_onnx_batch": round(statistics.mean(batch_sizes), 1),
    }
    return results


def percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


def markdown(data: dict, command: str) -> str:
    align = data["alignment"]
    keys = sorted({key for k in BEST_OF for key in align[k]["good"]}, key=lambda key: (
        "seen" in key, CATEGORIES.index(key.split(" ")[0])))  # fmt: skip
    rows = []
    for key in keys:
        cells = [key, str(align[1]["good"][key][1])]
        cells += [percent(*align[k]["good"][key]) for k in BEST_OF]
        rows.append(cells)
    attribute_rows = []
    for attribute in ("colour", "count", "shape", "background"):
        if attribute in align[1]["attributes"]:
            attribute_rows.append(
                [attribute] + [percent(*align[k]["attributes"][attribute]) for k in BEST_OF]
            )
    cost = data["cost"]
    scaling = data["unet_scaling"]
    score = data["throughput"]
    settings = data["settings"]
    clients = score["4_clients_x_16"]

    def table(header, body):
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])

    return "\n".join(
        [
            BEGIN,
            "## Reward in the serving path (issue #4)",
            "",
            f"Measured by `t2i_scripts.bench.bench_reward` through `t2i-align serve` on this machine "
            f"({data['machine']}), {settings['threads']} ONNX Runtime threads, the served defaults "
            f"({settings['steps']} steps, guidance {settings['guidance_scale']}), candidates denoised 16 at "
            f"a time. Command: `{command}`.",
            "",
            "### Best-of-n alignment (the paper's Table 6 analogue)",
            "",
            f"The rater's verdict on the returned images: {settings['images_per_prompt']} images per "
            "prompt, the same seeds for every K. The held-out split holds out object-colour-count "
            "combinations, so it has no background-only prompts; that row uses seen prompts.",
            "",
            table(
                ["category (prompts)", "images", "best_of=1: good", "best_of=4: good", "best_of=16: good"],
                rows,
            ),
            "",
            "Per stated attribute, all rows together:",
            "",
            table(["attribute", "best_of=1", "best_of=4", "best_of=16"], attribute_rows),
            "",
            "### Cost",
            "",
            f"best_of=16's cost per returned image against its target, at most "
            f"{targets.BEST_OF_16_MAX_COST:g}× one image, is measured and judged in "
            f"[BENCHMARKS.md](../{targets.BENCHMARKS_BEST_OF}). The requests of this run, in seconds:",
            "",
            table(
                ["request", "seconds"],
                [
                    ["one image (n=1)", f"{cost['one_image_seconds']:.3f}"],
                    ["best_of=16 (n=1), candidates batched", f"{cost['best_of_16_seconds']:.3f}"],
                    [
                        "16 single-image requests, one after another",
                        f"{cost['sixteen_requests_seconds']:.3f}",
                    ],
                ],
            ),  # fmt: skip
            "",
            f"The floor under best_of=16's cost, measured in ONNX Runtime alone with the same threads: one "
            f"UNet call for 16 candidates with guidance (32 rows) takes {scaling['rows_32_ms']} ms against "
            f"{scaling['rows_2_ms']} ms for one image (2 rows), **{scaling['ratio']}×**; every denoising "
            "step pays that ratio.",
            "",
            "### /score throughput",
            "",
            table(
                ["images per request", "images / s", "latency per request (ms)"],
                [
                    [
                        str(b),
                        f"{score[f'batch_{b}']['images_per_second']}",
                        f"{score[f'batch_{b}']['latency_ms']}",
                    ]
                    for b in (1, 16, 64)
                ],
            ),  # fmt: skip
            "",
            f"Four clients sending 16 images each at once: {clients['images_per_second']} images/s, "
            f"{clients['mean_onnx_batch']} images per ONNX call on average (the scorer packs "
            "requests that wait together into one call).",
            END,
        ]
    )


def main() -> int:
    args = parse_args()
    defaults = json.loads((Path(args.model) / "t2i-align.json").read_text())
    server = Server(args)
    try:
        align, pngs = alignment(server, args)
        spent = cost(server)
        score = throughput(server, pngs)
    finally:
        server.stop()
    scaling = unet_scaling(args.model, args.threads)
    data = {
        "machine": f"{os.cpu_count()} CPUs",
        "settings": {
            "threads": args.threads,
            "steps": defaults.get("default_steps"),
            "guidance_scale": defaults.get("default_guidance_scale"),
            "images_per_prompt": args.images_per_prompt,
            "prompts_per_category": args.prompts_per_category,
            "seed": args.seed,
        },
        "alignment": align,
        "cost": spent,
        "unet_scaling": scaling,
        "throughput": score,
    }
    args.json.write_text(json.dumps(data, indent=2) + "\n")
    command = "make bench-reward"
    write_report(args.report, markdown(data, command), BEGIN, END)
    print(json.dumps({"event": "done", "report": str(args.report), "cost": spent}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
