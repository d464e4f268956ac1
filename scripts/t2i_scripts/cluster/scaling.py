"""SCALING.md (#25): what several replicas cost and buy, measured on clusters this script starts itself.

1. **Throughput** of 1, 2 and 3 replicas (Postgres + SeaweedFS) behind a client-side round robin: `--clients`
   threads send `POST /generate` for `--seconds`, spreading requests over the replicas in turn.
2. **Rollout time**: from `POST /models/{id}/activate` on one replica to `GET /rollout` showing all three
   on the new version. Replicas keep one version loaded (`--max-loaded-models 1`) and warm up, so every
   rollout includes loading and warming the version on each replica.
3. **Reclaim time**: from `kill -9` of the replica running a job's trainer to another replica holding the job
   as its next attempt, with a 10 s lease.
4. **Per-request cost of Postgres + S3** over SQLite + a local folder: one replica of each, side by side, the
   same requests sent to each in turn.

Every replica, the database, the object store and the clients share this machine's cores, so the throughput
figures show what contention costs here, not what separate GPU nodes would give.

    python -m t2i_scripts.cluster.scaling --binary target/release/t2i-align --report SCALING.md
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from t2i_scripts.cluster.cluster import Cluster, Replica, alive, free_port
from t2i_scripts.report import command_line, median_interval, ratio_interval, write_report
from t2i_scripts.server import ROOT, png_base64

BEGIN = "<!-- scaling:begin -->"
END = "<!-- scaling:end -->"


def cluster(folder: Path, args: argparse.Namespace, count: int, **options) -> Cluster:
    options.setdefault("model", str(Path(args.model).resolve()))
    made = Cluster(
        folder,
        ports=tuple(free_port() for _ in range(count)),
        watch_parent=os.getpid(),
        binary=args.binary,
        **options,
    )
    made.up()
    return made


# ---- 1. throughput ----------------------------------------------------------------------------------------


def throughput(replicas: list[Replica], clients: int, seconds: float, steps: int) -> dict:
    """Round robin over `replicas` from `clients` threads for `seconds`; completed requests per second (with
    a 95% interval over 1 s windows) and the median latency."""
    done: list[tuple[float, float]] = []  # (finish time, latency)
    errors = [0]
    lock = threading.Lock()
    turn = [0]
    start = time.time()
    stop = start + seconds

    def client(index: int) -> None:
        while time.time() < stop:
            with lock:
                replica = replicas[turn[0] % len(replicas)]
                turn[0] += 1
            began = time.time()
            status, _ = replica.post("/generate", {"prompt": "a red circle", "steps": steps, "seed": index})
            with lock:
                if status == 200:
                    done.append((time.time(), time.time() - began))
                else:
                    errors[0] += 1

    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    windows = [0] * int(seconds)
    for finished, _ in done:
        slot = int(finished - start)
        if slot < len(windows):
            windows[slot] += 1
    mean = sum(windows) / len(windows)
    rng = random.Random(1)
    means = sorted(sum(rng.choices(windows, k=len(windows))) / len(windows) for _ in range(2000))
    return {
        "replicas": len(replicas),
        "requests": len(done),
        "errors": errors[0],
        "per_second": mean,
        "interval": (means[50], means[1949]),
        "median_latency_ms": 1000 * statistics.median(latency for _, latency in done) if done else 0.0,
    }


# ---- 2. rollout -------------------------------------------------------------------------------------------


def rollout_times(made: Cluster, versions: list[str], rounds: int) -> dict:
    """Activates the versions in turn on the replicas in turn; seconds until all serve it, and how long the
    activating request itself took."""
    totals, requests = [], []
    for round_index in range(rounds):
        version = versions[round_index % len(versions)]
        replica = made.replicas[round_index % len(made.replicas)]
        began = time.time()
        status, answer = replica.post(f"/models/{version}/activate", timeout=300)
        if status != 200:
            raise RuntimeError(f"activate {version}: {status} {answer}")
        requests.append(time.time() - began)
        deadline = began + 120
        while True:
            rollout = made.replicas[0].get_json("/rollout")
            if rollout["version"] == version and rollout["converged"] and len(rollout["replicas"]) == 3:
                break
            if time.time() > deadline:
                raise RuntimeError(f"the replicas did not converge on {version}: {rollout}")
            time.sleep(0.05)
        totals.append(time.time() - began)
        print(f"rollout {round_index + 1}: {version} on all 3 in {totals[-1]:.2f} s", flush=True)
    return {"totals": totals, "requests": requests}


def register_copy(made: Cluster, folder: Path, args: argparse.Namespace, suffix: str) -> str:
    """Registers a copy of the model as another version: a fourth replica started on the copy activates it
    (a rollout the other replicas follow); it then stops and forgets its report."""
    copy = folder / f"{Path(args.model).name}-{suffix}"
    shutil.copytree(args.model, copy)
    extra = Cluster(
        folder / f"extra-{suffix}",
        ports=(free_port(),),
        watch_parent=os.getpid(),
        binary=args.binary,
        model=str(copy),
        postgres_port=made.postgres_port,
        seaweed_port=made.seaweed_port,
        extra_flags=made.extra_flags,
    )
    extra.folder.mkdir(parents=True)
    extra.wait_ready(extra.start_replica(0))
    extra.down()
    return copy.name


# ---- 3. reclaim -------------------------------------------------------------------------------------------

LONG_JOB = {
    "prompts": ["a red circle", "two blue squares"],
    "images_per_prompt": 2,
    "hyperparameters": {"steps": 100000, "batch_size": 4, "learning_rate": 1e-4},
    "pretrain_data": {"kind": "shapes_world", "images": 8},
    "eval_prompts": ["a red circle"],
    "eval_images_per_prompt": 1,
}


def trainer_running(job_id: str) -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if job_id.encode() in (entry / "cmdline").read_bytes():
                    return alive(int(entry.name))
            except OSError:
                continue
    return False


def reclaim_times(made: Cluster, rounds: int) -> list[float]:
    times = []
    for round_index in range(rounds):
        first = made.replicas[0]
        status, created = first.post("/fine-tunes", LONG_JOB)
        if status != 201:
            raise RuntimeError(f"POST /fine-tunes: {status} {created}")
        job_id = created["id"]
        deadline = time.time() + 300
        while not trainer_running(job_id):
            job = first.get_json(f"/fine-tunes/{job_id}")
            if job["status"] not in ("queued", "running") or time.time() > deadline:
                raise RuntimeError(f"job {job_id}'s trainer did not start: {job}")
            time.sleep(0.2)
        worker = first.get_json(f"/fine-tunes/{job_id}")["worker"]
        pid = int(worker.split(":")[1])
        victim = next(replica for replica in made.replicas if replica.pid == pid)
        survivor = next(replica for replica in made.replicas if replica is not victim)
        made.kill_replica(victim.index)
        killed = time.time()
        while True:
            job = survivor.get_json(f"/fine-tunes/{job_id}")
            if job["attempt"] == 2 and job["status"] == "running":
                break
            if time.time() > killed + 120:
                raise RuntimeError(f"job {job_id} was not reclaimed: {job}")
            time.sleep(0.05)
        times.append(time.time() - killed)
        print(f"reclaim {round_index + 1}: {times[-1]:.2f} s after the kill", flush=True)
        survivor.post(f"/fine-tunes/{job_id}/cancel")
        made.wait_ready(made.start_replica(victim.index))
    return times


# ---- 4. Postgres + S3 against SQLite + local files ---------------------------------------------------------


def png(seed: int) -> str:
    from PIL import Image

    rng = random.Random(seed)
    return png_base64(Image.new("RGB", (16, 16), tuple(rng.randrange(256) for _ in range(3))))


def storage_latency(shared: Replica, embedded: Replica, count: int) -> dict:
    """The same requests to each replica in turn: a rating with its image (a row and a file written), a
    generated image read back (a row and a file read), and a page of ratings (a query)."""
    images = {}
    for name, replica in [("shared", shared), ("embedded", embedded)]:
        status, generated = replica.post("/generate", {"prompt": "a red circle", "steps": 2, "seed": 1})
        if status != 200:
            raise RuntimeError(f"POST /generate on {name}: {status} {generated}")
        images[name] = generated["images"][0]["image_id"]
    timings: dict[str, dict[str, list[float]]] = {}
    for index in range(count):
        body = {"image": png(index), "prompt": "a red circle", "label": "good"}
        order = [("shared", shared), ("embedded", embedded)]
        if index % 2:
            order.reverse()
        for name, replica in order:
            calls = [
                (
                    "POST /feedback (a row and a file written)",
                    201,
                    lambda r=replica, b=body: r.post("/feedback", b),
                ),
                (
                    "GET /images/{id} (a row and a file read)",
                    200,
                    lambda r=replica, n=name: r.get(f"/images/{images[n]}"),
                ),
                ("GET /feedback?limit=20 (a query)", 200, lambda r=replica: r.get("/feedback?limit=20")),
            ]
            for what, expected, call in calls:
                began = time.perf_counter()
                status, answer = call()
                elapsed = 1000 * (time.perf_counter() - began)
                if status != expected:
                    raise RuntimeError(f"{what} on {name}: {status} {str(answer)[:200]}")
                timings.setdefault(what, {}).setdefault(name, []).append(elapsed)
    return timings


# ---- the report -------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--binary", default=str(ROOT / "target" / "release" / "t2i-align"))
    parser.add_argument("--model", default=str(ROOT / "models" / "tiny-sd"))
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per generation")
    parser.add_argument("--rollouts", type=int, default=8)
    parser.add_argument("--reclaims", type=int, default=3)
    parser.add_argument("--requests", type=int, default=100, help="requests of each kind per backend")
    parser.add_argument("--report", type=Path)
    args = parser.parse_args()
    results: dict = {"cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="t2i-scaling-") as folder:
        base = Path(folder)

        levels = []
        for count in (1, 2, 3):
            made = cluster(base / f"throughput-{count}", args, count, warmup=True)
            try:
                made.replicas[0].post("/generate", {"prompt": "warm", "steps": args.steps})
                level = throughput(made.replicas, args.clients, args.seconds, args.steps)
            finally:
                made.down()
            print(json.dumps(level), flush=True)
            levels.append(level)
        results["throughput"] = levels

        made = cluster(base / "rollout", args, 3, warmup=True, extra_flags=["--max-loaded-models", "1"])
        try:
            # Three versions in turn, each replica keeping one loaded: every rollout loads and warms one.
            versions = [Path(args.model).name] + [register_copy(made, base, args, suffix) for suffix in "bc"]
            results["rollout"] = rollout_times(made, versions, args.rollouts)
        finally:
            made.down()

        # tiny-sd's random weights give some samples a positive reward, which the trainer needs; the time to
        # reclaim does not depend on the model.
        made = cluster(base / "reclaim", args, 3, lease_seconds=10, model=str(ROOT / "models" / "tiny-sd"))
        try:
            results["reclaim"] = reclaim_times(made, args.reclaims)
        finally:
            made.down()

        shared = cluster(base / "shared", args, 1)
        embedded = cluster(base / "embedded", args, 1, embedded=True)
        try:
            results["storage"] = storage_latency(shared.replicas[0], embedded.replicas[0], args.requests)
        finally:
            shared.down()
            embedded.down()

    section = render(results, args)
    print(section)
    if args.report:
        write_report(args.report, section, BEGIN, END)


def render(results: dict, args: argparse.Namespace) -> str:
    argv = sys.argv[1:]
    lines = [
        BEGIN,
        "# Scaling: several replicas on one database and one object store",
        "",
        f"Measured by `{command_line('t2i_scripts.cluster.scaling', argv)}` on this machine: "
        f"{results['cores']} cores, shared by every replica, Postgres, SeaweedFS and the clients. Model "
        f"`{Path(args.model).name}`, {args.steps} denoising steps per image, 1 ONNX Runtime thread per "
        "replica.",
        "",
        "## Throughput behind a client-side round robin",
        "",
        f"{args.clients} clients send `POST /generate` for {args.seconds:.0f} s to the replicas in turn "
        "(Postgres + SeaweedFS). Requests per second: the mean over 1 s windows, with a 95% bootstrap "
        "interval.",
        "",
        "| replicas | requests | errors | requests/s | 95% interval | median latency |",
        "|---|---|---|---|---|---|",
    ]
    levels = results["throughput"]
    for level in levels:
        low, high = level["interval"]
        lines.append(
            f"| {level['replicas']} | {level['requests']} | {level['errors']} | {level['per_second']:.2f} | "
            f"{low:.2f} to {high:.2f} | {level['median_latency_ms']:.0f} ms |"
        )
    one = levels[0]["per_second"]
    best = max(levels, key=lambda level: level["per_second"])
    lines += [
        "",
        f"The most throughput came from {best['replicas']} replica(s): {best['per_second'] / one:.2f}× one "
        f"replica's. With {results['cores']} cores shared, more replicas compete for the same CPUs; on "
        "separate GPU nodes each replica brings its own.",
        "",
    ]
    totals, requests = results["rollout"]["totals"], results["rollout"]["requests"]
    low, high = median_interval(totals)
    lines += [
        "## Rollout time",
        "",
        f"From `POST /models/{{id}}/activate` on one replica to `GET /rollout` showing all three serving the "
        f"version, over {len(totals)} activations of three versions in turn, each replica keeping one "
        "version loaded (`--max-loaded-models 1`, so each rollout loads and warms the version on every "
        "replica).",
        "",
        "| | median | 95% interval | min | max |",
        "|---|---|---|---|---|",
        f"| activation to the last replica serving | {statistics.median(totals):.2f} s | {low:.2f} to "
        f"{high:.2f} s | {min(totals):.2f} s | {max(totals):.2f} s |",
        f"| the activating request alone | {statistics.median(requests):.2f} s | | {min(requests):.2f} s | "
        f"{max(requests):.2f} s |",
        "",
    ]
    reclaims = results["reclaim"]
    lines += [
        "## Time to reclaim a dead replica's job",
        "",
        f"`kill -9` of the replica running a job's trainer, to another replica holding the job as attempt 2, "
        f"with a 10 s lease (the default is 30 s) and a 5 s poll: {len(reclaims)} kills. These replicas "
        "serve `tiny-sd`, whose samples give the trainer something to train on; the model plays no part "
        "here.",
        "",
        "| kill | seconds |",
        "|---|---|",
        *[f"| {index + 1} | {seconds:.2f} |" for index, seconds in enumerate(reclaims)],
        "",
        f"Median {statistics.median(reclaims):.2f} s.",
        "",
        "## The added latency of Postgres + S3 over SQLite + local files",
        "",
        "One replica on Postgres + SeaweedFS and one on SQLite + a local folder, the same requests sent to "
        f"each in turn, {args.requests} of each kind per backend. Medians, and the ratio of medians with a "
        "95% bootstrap interval.",
        "",
        "| request | SQLite + local | Postgres + S3 | ratio | 95% interval |",
        "|---|---|---|---|---|",
    ]
    for what, by in results["storage"].items():
        shared, embedded = by["shared"], by["embedded"]
        low, high = ratio_interval(shared, embedded)
        lines.append(
            f"| `{what}` | {statistics.median(embedded):.1f} ms | {statistics.median(shared):.1f} ms | "
            f"{statistics.median(shared) / statistics.median(embedded):.2f}× | {low:.2f} to {high:.2f} |"
        )
    lines += ["", END]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
