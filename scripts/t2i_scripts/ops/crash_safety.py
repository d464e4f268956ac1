"""Crash safety (issue #7): SIGKILL the server at random moments and count what was lost.

Each round starts `t2i-align serve` on one data directory that persists across rounds, loads it, and kills it
with SIGKILL after a random delay:

- `feedback` rounds: four clients post ratings (each with its own small PNG) as fast as the server takes them;
  every rating answered 201 is acknowledged and must survive.
- `job` rounds: a tiny fine-tune job runs (sampling, training, export, evaluation, registration); the kill
  lands somewhere in it.

After each kill, before the restart, SQLite's `PRAGMA integrity_check` must say ok. After the restart:
every acknowledged rating must be listed by `GET /feedback` with its image in the export; no job may still be
`running` once the killed server's lease has run out (the servers run with a 2 s lease and one attempt, so
the new server's worker fails the job); every registered version must load (activating it succeeds, which
verifies its checksums); and the models folder must hold no half-written (`.partial`) version. The script
prints the counts and, with `--report`, writes them into RELIABILITY.md. The count of losses must be 0.

Usage:
    python -m t2i_scripts.ops.crash_safety --binary target/release/t2i-align --rounds 12 \
        --report RELIABILITY.md
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image

from t2i_scripts.server import ROOT, ServerProcess, http, png_base64, serve_command, tool_arguments

BEGIN, END = "<!-- crash-safety:begin -->", "<!-- crash-safety:end -->"


def parse_args() -> argparse.Namespace:
    parser = tool_arguments(__doc__, 18097, "crash-safety")
    parser.add_argument("--rounds", type=int, default=15, help="rounds in all; every third is a job round")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def request(
    url: str, method: str = "GET", body: dict | None = None, timeout: float = 30
) -> tuple[int, bytes]:
    answer = http(url, body, method=method, timeout=timeout)
    if answer.status == 0:
        raise ConnectionError(f"no answer from {url}")
    return answer.status, answer.body


def png(seed: int) -> str:
    """A small PNG of its own for every rating, so that each stored file is distinct."""
    rng = random.Random(seed)
    return png_base64(Image.new("RGB", (16, 16), tuple(rng.randrange(256) for _ in range(3))))


JOB_LEASE_SECONDS = 2


def jobs_still_running(url: str) -> list[str]:
    """Jobs still `running` once a killed server's lease ran out and the new server's worker polled."""
    deadline = time.time() + JOB_LEASE_SECONDS + 8
    while True:
        status, answer = request(url + "/fine-tunes?limit=100")
        running = [job["id"] for job in json.loads(answer)["data"] if job["status"] == "running"]
        if not running or time.time() > deadline:
            return running
        time.sleep(0.5)


class Server(ServerProcess):
    def __init__(self, args: argparse.Namespace, data_dir: Path):
        trainer_python = ROOT / ".venv-trainer" / "bin" / "python"
        command = serve_command(args.binary, args.model, trainer_python=trainer_python)
        # A killed server's job fails once its lease runs out (its one attempt is spent), instead of running
        # again, so every round's job has ended by the check.
        command += ["--job-lease-seconds", str(JOB_LEASE_SECONDS), "--job-max-attempts", "1"]
        super().__init__(command, args.port, image_retention=1000, data_dir=data_dir)


def feedback_load(url: str, acknowledged: list[str], stop: threading.Event, client: int) -> None:
    count = 0
    while not stop.is_set():
        body = {"image": png(client * 1_000_000 + count), "prompt": "a red circle", "label": "good"}
        count += 1
        try:
            status, answer = request(url + "/feedback", "POST", body, timeout=10)
        except OSError:
            return  # the server is gone
        if status == 201:
            acknowledged.append(json.loads(answer)["id"])


def listed_feedback(url: str) -> set[str]:
    ids, after = set(), None
    while True:
        query = "/feedback?limit=1000" + (f"&after={after}" if after else "")
        status, answer = request(url + query)
        if status != 200:
            raise SystemExit(f"GET /feedback answered {status}: {answer[:200]!r}")
        page = json.loads(answer)
        ids.update(item["id"] for item in page["data"])
        if not page.get("has_more"):
            return ids
        after = page["last_id"]


def exported_with_images(url: str) -> set[str]:
    status, answer = request(url + "/feedback/export?include_images=true", timeout=120)
    if status != 200:
        raise SystemExit(f"GET /feedback/export answered {status}")
    ids = set()
    for line in answer.decode().splitlines():
        record = json.loads(line)
        if record.get("image_base64"):
            ids.add(record["id"])
    return ids


TINY_JOB = {
    "prompts": ["a red circle", "two blue squares"],
    "images_per_prompt": 2,
    "hyperparameters": {"steps": 20, "batch_size": 4, "learning_rate": 1e-4},
    "pretrain_data": {"kind": "shapes_world", "images": 8},
    "eval_prompts": ["a red circle", "three green stars"],
    "eval_images_per_prompt": 2,
    "gate": {
        "min_reward_gain": -1.0,
        "max_drop": {"quality": 1.0, "colour": 1.0, "background": 1.0, "shape": 1.0, "diversity": 1.0},
    },
}


# The stages a job round kills in, in turn; `succeeded` kills after the job registered its version.
JOB_TARGETS = ("sample", "train", "evaluate", "register", "succeeded")


def wait_for_stage(url: str, job_id: str, target: str, timeout: float = 300) -> float:
    """Seconds until the job reaches `target` (a stage, or the status `succeeded`), or ends."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        status, answer = request(url + f"/fine-tunes/{job_id}")
        job = json.loads(answer) if status == 200 else {}
        if job.get("stage") == target or job.get("status") in ("succeeded", "failed", "cancelled"):
            return time.monotonic() - started
        time.sleep(0.05)
    raise SystemExit(f"job {job_id} did not reach {target} within {timeout} s")


def integrity(data_dir: Path) -> str:
    with sqlite3.connect(data_dir / "t2i-align.db") as connection:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]


def main() -> int:
    args = parse_args()
    rng = random.Random(args.seed)
    counts = {
        "rounds": 0,
        "feedback_rounds": 0,
        "job_rounds": 0,
        "acknowledged": 0,
        "lost_rows": 0,
        "lost_images": 0,
        "integrity_failures": 0,
        "jobs_left_running": 0,
        "versions_checked": 0,
        "versions_that_do_not_load": 0,
        "half_written_versions": 0,
    }
    acknowledged: list[str] = []
    with tempfile.TemporaryDirectory(prefix="t2i-crash-") as folder:
        data_dir = Path(folder)
        for round_index in range(args.rounds):
            job_round = round_index % 3 == 2
            server = Server(args, data_dir)
            stop = threading.Event()
            clients = []
            if job_round:
                status, answer = request(server.url + "/fine-tunes", "POST", TINY_JOB)
                if status != 201:
                    raise SystemExit(f"POST /fine-tunes answered {status}: {answer[:300]!r}")
                # Each job round aims at a stage in turn (the last lets the job finish and register), then
                # kills a random fraction of a second into it.
                target = JOB_TARGETS[counts["job_rounds"] % len(JOB_TARGETS)]
                waited = wait_for_stage(server.url, json.loads(answer)["id"], target)
                delay = waited + rng.uniform(0.0, 0.5)
                time.sleep(delay - waited)
            else:
                clients = [
                    threading.Thread(
                        target=feedback_load, args=(server.url, acknowledged, stop, 100 * round_index + c)
                    )
                    for c in range(4)
                ]
                for client in clients:
                    client.start()
                delay = rng.uniform(0.3, 2.0)
            if not job_round:
                time.sleep(delay)
            server.kill9()
            stop.set()
            for client in clients:
                client.join()
            if integrity(data_dir) != "ok":
                counts["integrity_failures"] += 1
            counts["rounds"] += 1
            counts["job_rounds" if job_round else "feedback_rounds"] += 1
            what = f"job ({target})" if job_round else "feedback"
            print(f"round {round_index}: {what}, killed after {delay:.1f} s", flush=True)

            # Restart and check everything acknowledged so far.
            server = Server(args, data_dir)
            try:
                listed = listed_feedback(server.url)
                exported = exported_with_images(server.url)
                counts["lost_rows"] = sum(1 for id in acknowledged if id not in listed)
                counts["lost_images"] = sum(1 for id in acknowledged if id not in exported)
                counts["jobs_left_running"] += len(jobs_still_running(server.url))
                status, answer = request(server.url + "/models")
                models = json.loads(answer)
                active = models["active"]
                for model in models["data"]:
                    if model["kind"] != "diffusion" or model["id"] == active:
                        continue
                    status, _ = request(server.url + f"/models/{model['id']}/activate", "POST", timeout=120)
                    counts["versions_checked"] += 1
                    counts["versions_that_do_not_load"] += status != 200
                if active != models["active"]:
                    request(server.url + f"/models/{active}/activate", "POST", timeout=120)
                partial = [path.name for path in (data_dir / "models").glob("*") if "partial" in path.name]
                counts["half_written_versions"] += len(partial)
            finally:
                server.stop()
        counts["acknowledged"] = len(acknowledged)
    lost = counts["lost_rows"] + counts["lost_images"] + counts["integrity_failures"]
    lost += (
        counts["jobs_left_running"] + counts["versions_that_do_not_load"] + counts["half_written_versions"]
    )
    counts["lost_total"] = lost
    print(json.dumps(counts))
    if args.report:
        from t2i_scripts.report import write_report

        section = "\n".join(
            [
                "## Crash safety (SIGKILL at random moments)",
                "",
                f"`python -m t2i_scripts.ops.crash_safety --rounds {args.rounds} --seed {args.seed} --report "
                "RELIABILITY.md`: one data directory, "
                f"{counts['feedback_rounds']} rounds killing the server while four clients post ratings, "
                f"and {counts['job_rounds']} killing it during a fine-tune job (in its sample, train, "
                "evaluate and "
                "register stages in turn, and after it succeeded); the database is checked "
                "before each restart and everything acknowledged is checked after it. The database commits "
                "with `--durability full` (WAL, fsync at every commit) and a rating is answered 201 only "
                "after its "
                "file is fsynced and its row committed.",
                "",
                "| what | count |",
                "|---|---|",
                f"| ratings acknowledged (201) | {counts['acknowledged']} |",
                f"| acknowledged ratings missing after a restart | {counts['lost_rows']} |",
                f"| acknowledged ratings whose image is missing | {counts['lost_images']} |",
                f"| `PRAGMA integrity_check` failures | {counts['integrity_failures']} |",
                f"| jobs left `running` after a restart | {counts['jobs_left_running']} |",
                f"| version activations after restarts (checksums verified) | {counts['versions_checked']} |",
                f"| registered versions that do not load | {counts['versions_that_do_not_load']} |",
                f"| half-written version folders | {counts['half_written_versions']} |",
                f"| **lost in all** | **{lost}** |",
            ]
        )
        write_report(args.report, f"{BEGIN}\n{section}\n{END}", BEGIN, END)
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
