"""API conformance and fuzzing (issue #7, #24): schemathesis against the served /openapi.json.

Starts `t2i-align serve` on the tiny test model with a data directory of its own, once without API keys and
once with keys, and runs schemathesis's examples, coverage, fuzzing and stateful phases against every
operation of the document each server serves, with every check schemathesis has (`--checks all`): no server
error, no response that breaks the document (status codes, content types, headers, schemas), invalid data
rejected and valid data accepted, undeclared methods answered 405 with `Allow`, required headers and keys
enforced, and resources that the API says it created or deleted really there or gone. The server starts with
small request limits (`--max-steps 2`, ...), which its document states, so that generating stays fast. `make
test-api` runs both modes; `--report` also writes its section of RELIABILITY.md.

Usage:
    python -m t2i_scripts.ops.api_fuzz --binary target/release/t2i-align
    python -m t2i_scripts.ops.api_fuzz --binary target/release/t2i-align --mode keys
    python -m t2i_scripts.ops.api_fuzz --binary target/release/t2i-align --report RELIABILITY.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from t2i_scripts.server import ServerProcess, http, serve_command, tool_arguments

CHECKS = "all"
HOOKS = "t2i_scripts.ops.api_fuzz_hooks"
PHASES = "examples,coverage,fuzzing,stateful"
BEGIN, END = "<!-- schemathesis:begin -->", "<!-- schemathesis:end -->"
# The keyed server's keys: schemathesis calls with the admin one (every operation), and its `ignored_auth`
# check calls without it, or with a wrong one, and expects 401.
ADMIN_KEY = "fuzz-admin-key-0123456789"
INFERENCE_KEY = "fuzz-inference-key-0123456789"
API_KEYS = f"fuzz-admin:admin:{ADMIN_KEY},fuzz-inference:inference:{INFERENCE_KEY}"
# Small request limits keep every valid /generate fast on 2 CPU cores; the served document states them, so
# schemathesis's valid data stays within them.
SERVE_FLAGS = [
    "--warmup", "false",
    "--max-steps", "2",
    "--default-steps", "2",
    "--max-image-size", "64",
    # One image per request and per score: a prompt list's length must equal the images', which JSON Schema
    # cannot say, and `max_candidates` at least `n`.
    "--max-images", "1",
    "--max-best-of", "2",
    "--max-candidates", "4",
    "--max-score-images", "1",
    "--trainer-command", "false",
    # schemathesis queues valid jobs faster than they end, and a quota's 429 would read as a valid request
    # refused; the quotas have their own tests (tests/security.rs, the jobs' unit tests).
    "--tenant-max-jobs", "0",
    "--tenant-job-minutes-per-day", "0",
    # Likewise the rate limits: the run makes about 30 requests a second (tests/security.rs covers them).
    "--rate-limit-requests", "0",
    "--rate-limit-work", "0",
]  # fmt: skip
MODES = {"open": "without API keys", "keys": "with API keys (schemathesis calls with the admin key)"}


def parse_args() -> argparse.Namespace:
    parser = tool_arguments(__doc__, 18095, "schemathesis")
    parser.add_argument("--library", help="libonnxruntime (default: .venv's, as the Makefile records it)")
    parser.add_argument("--mode", choices=["both", *MODES], default="both", help="which server(s) to test")
    parser.add_argument("--max-examples", type=int, default=10, help="examples per operation and phase")
    parser.add_argument("--seed", type=int, default=7, help="schemathesis's seed, so a run can be repeated")
    parser.add_argument(
        "--operation",
        action="append",
        default=[],
        help="only this operation, as `POST /score` (repeatable; default: every one); for finding a failure",
    )
    return parser.parse_args()


def failures_by_operation(output: str) -> set[tuple[str, str]]:
    """(operation, check code) of every failure in schemathesis's FAILURES section."""
    found = set()
    operation = None
    for line in output.splitlines():
        header = re.match(r"^_+ ([A-Z]+ \S+) _+$", line)
        if header:
            operation = header.group(1)
            continue
        code = re.match(r"^- (ST\d+) ", line)
        if code and operation:
            found.add((operation, code.group(1)))
    return found


def summary(output: str) -> dict:
    """The counts schemathesis prints at the end of a run."""
    generated = re.search(r"(\d+) generated, ", output)
    failures = re.search(r"(\d+) found (\d+) unique failures", output)
    operations = re.search(r"Tested: (\d+)", output)
    errors = re.search(r"(\d+) errors?\b", output.split("SUMMARY")[-1]) if "SUMMARY" in output else None
    return {
        "cases": int(generated.group(1)) if generated else None,
        "failures": int(failures.group(2)) if failures else 0,
        "operations": int(operations.group(1)) if operations else None,
        "errors": int(errors.group(1)) if errors else 0,
    }


def seed_data(url: str, headers: dict, folder: Path) -> dict[str, list[str]]:
    """Stored things for the document's id formats (`image-id`, `rating-id`, `job-id`, `job-event-id`,
    `model-version`, `reward-model`, `key-id`, `audit-id`): the ids schemathesis's valid data names, since
    JSON Schema cannot say "an id this server has"; and for `server-folder`, `folder`, which gets one
    captioned image (a pre-training folder as `pretrain_data` describes it)."""

    def call(path: str, body: dict | None = None) -> dict:
        answer = http(url + path, body, headers=headers)
        if not 200 <= answer.status < 300:
            sys.exit(f"seeding: {path} answered {answer.status}: {answer.body.decode(errors='replace')}")
        return answer.json()

    generated = [call("/generate", {"prompt": "a red circle", "seed": seed}) for seed in range(3)]
    images = [answer["images"][0]["image_id"] for answer in generated]
    ratings = [call("/feedback", {"image_id": image, "label": "good"})["id"] for image in images]
    job = call("/fine-tunes", {"prompts": ["a red circle"], "images_per_prompt": 1})["id"]
    events: list[str] = []
    for _ in range(50):
        events = [event["id"] for event in call(f"/fine-tunes/{job}/events")["data"]]
        if events and call(f"/fine-tunes/{job}")["status"] not in ("queued", "running"):
            break
        time.sleep(0.2)
    key = call("/keys", {"name": "fuzz-seed", "tenant": "fuzz", "scopes": ["inference"]})["id"]
    audit = [entry["id"] for entry in call("/audit")["data"]]
    versions = call("/models")["data"]
    image = http(url + f"/images/{images[0]}", headers=headers)
    (folder / "circle.png").write_bytes(image.body)
    (folder / "circle.txt").write_text("a red circle\n")
    return {
        "image-id": images,
        "rating-id": ratings,
        "job-id": [job],
        "job-event-id": events,
        "model-version": [version["id"] for version in versions if version["kind"] == "diffusion"],
        "reward-model": [generated[0]["selection"]["reward_model"]],
        "key-id": [key],
        "audit-id": audit,
        "server-folder": [str(folder)],
    }


def fuzz(args: argparse.Namespace, mode: str) -> dict:
    """One server, one schemathesis run; its figures."""
    command = serve_command(args.binary, args.model, flags=SERVE_FLAGS)
    if mode == "open":
        # Keys in this process's environment would turn the open server into a keyed one.
        for name in ("T2I_API_KEYS", "T2I_API_KEYS_FILE"):
            os.environ.pop(name, None)
    env = {"T2I_API_KEYS": API_KEYS} if mode == "keys" else None
    # Retention above what the run generates, so the seeded images stay.
    server = ServerProcess(command, args.port, args.library, image_retention=100_000, env=env)
    started = time.monotonic()
    headers = ["-H", f"Authorization: Bearer {ADMIN_KEY}"] if mode == "keys" else []
    folder = Path(tempfile.mkdtemp(prefix="t2i-fuzz-pretrain-"))
    try:
        seed_headers = {"Authorization": f"Bearer {ADMIN_KEY}"} if mode == "keys" else {}
        ids = seed_data(server.url, seed_headers, folder)
        run = subprocess.run(
            [
                str(Path(sys.executable).with_name("schemathesis")),
                "--no-color",
                "--config-file",
                str(Path(__file__).with_name("schemathesis.toml")),
                "run",
                server.url + "/openapi.json",
                "--checks",
                CHECKS,
                "--phases",
                PHASES,
                "--workers",
                "1",
                "--max-examples",
                str(args.max_examples),
                "--seed",
                str(args.seed),
                "--continue-on-failure",
                "--request-timeout",
                "60",
                *headers,
                *[flag for name in args.operation for flag in ("--include-name", name)],
            ],  # fmt: skip
            capture_output=True,
            text=True,
            # Real images for the document's image fields, and stored ids for its id fields (api_fuzz_hooks).
            env=dict(os.environ, SCHEMATHESIS_HOOKS=HOOKS, T2I_FUZZ_IDS=json.dumps(ids)),
        )
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    output = run.stdout + run.stderr
    figures = summary(output) | {
        "found": sorted(failures_by_operation(output)),
        "mode": mode,
        "seconds": round(time.monotonic() - started),
        "exit_status": run.returncode,
    }
    print(output)
    print(json.dumps(figures))
    return figures


def main() -> int:
    args = parse_args()
    modes = list(MODES) if args.mode == "both" else [args.mode]
    results = [fuzz(args, mode) for mode in modes]
    if any(figures["cases"] is None for figures in results):
        sys.exit("schemathesis printed no summary; its output is above")
    if args.report:
        from t2i_scripts.report import write_report

        lines = [
            "## API conformance and fuzzing (schemathesis)",
            "",
            "`python -m t2i_scripts.ops.api_fuzz --report RELIABILITY.md` (also `make test-api`): "
            "schemathesis against the served `/openapi.json` of `t2i-align serve` on `models/tiny-sd`, once "
            "for each mode below, with every check (`--checks all`: server errors, status codes, content "
            "types, headers and bodies against the document, invalid data rejected and valid data accepted, "
            "undeclared methods answered 405 with `Allow`, missing headers and keys refused, created "
            "resources found and deleted ones gone) and phases examples, coverage, fuzzing and stateful, "
            f"{args.max_examples} examples per operation and phase, seed {args.seed}, one worker. The "
            f"server runs with `{' '.join(SERVE_FLAGS)}`; its document states those limits.",
            "",
            "| mode | operations | cases | failures | errors | time (s) |",
            "|---|---|---|---|---|---|",
        ]
        for figures in results:
            lines.append(
                f"| {MODES[figures['mode']]} | {figures['operations']} | {figures['cases']} | "
                f"{figures['failures']} | {figures['errors']} | {figures['seconds']} |"
            )
        lines += [
            "",
            "The run fails on any failure or error. Two generated cases are adjusted by the hooks "
            "(`t2i_scripts/ops/api_fuzz_hooks.py`, which say why): the positive multipart case in which "
            "schemathesis fills a required text part with an empty string whatever its schema says gets the "
            "shortest value its schema allows, and negative form cases whose violation is an empty array are "
            "not sent, since a form carries an empty array as no part at all. The hooks also read "
            "the NDJSON of `GET /feedback/export` and check every line against the document's line schema.",
        ]
        write_report(args.report, f"{BEGIN}\n" + "\n".join(lines) + f"\n{END}", BEGIN, END)
    ok = True
    for figures in results:
        for operation, code in figures["found"]:
            print(f"{figures['mode']}: a failure: {operation} {code}")
        if figures["errors"] or figures["failures"] or figures["found"] or figures["exit_status"]:
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
