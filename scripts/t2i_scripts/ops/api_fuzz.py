"""API conformance and fuzzing (issue #7): schemathesis against the served /openapi.json.

Starts `t2i-align serve` on the tiny test model with a data directory of its own, runs schemathesis's
examples, coverage and fuzzing phases against every operation of the served document, and checks that no
response is a server error and none breaks the document (status codes, content types, response schemas).
`make test` runs it bounded to a few minutes; `--report` also writes its section of RELIABILITY.md.

Usage:
    python -m t2i_scripts.ops.api_fuzz --binary target/release/t2i-align
    python -m t2i_scripts.ops.api_fuzz --binary target/release/t2i-align --report RELIABILITY.md
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from t2i_scripts.server import ServerProcess, serve_command, tool_arguments

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
BEGIN, END = "<!-- schemathesis:begin -->", "<!-- schemathesis:end -->"


def parse_args() -> argparse.Namespace:
    parser = tool_arguments(__doc__, 18095, "schemathesis")
    parser.add_argument("--library", help="libonnxruntime (default: .venv's, as the Makefile records it)")
    parser.add_argument("--max-examples", type=int, default=15, help="examples per operation and phase")
    parser.add_argument("--seed", type=int, default=7, help="schemathesis's seed, so a run can be repeated")
    return parser.parse_args()


def summary(output: str) -> dict:
    """The counts schemathesis prints at the end of a run."""
    generated = re.search(r"(\d+) generated", output)
    failures = re.search(r"(\d+) found (\d+) unique failures", output)
    operations = re.search(r"Tested: (\d+)", output)
    return {
        "cases": int(generated.group(1)) if generated else None,
        "failures": int(failures.group(2)) if failures else 0,
        "operations": int(operations.group(1)) if operations else None,
    }


def main() -> int:
    args = parse_args()
    command = serve_command(args.binary, args.model, flags=["--warmup", "false", "--max-steps", "10"])
    server = ServerProcess(command, args.port, args.library, image_retention=100)
    started = time.monotonic()
    try:
        run = subprocess.run(
            [
                str(Path(sys.executable).with_name("schemathesis")),
                "run",
                server.url + "/openapi.json",
                "--checks",
                CHECKS,
                "--phases",
                "examples,coverage,fuzzing",
                "--workers",
                "1",
                "--max-examples",
                str(args.max_examples),
                "--seed",
                str(args.seed),
                "--no-color",
            ],  # fmt: skip
            capture_output=True,
            text=True,
        )
    finally:
        server.stop()
    output = run.stdout + run.stderr
    figures = summary(output) | {"seconds": round(time.monotonic() - started), "exit_status": run.returncode}
    print(output[-6000:])
    print(json.dumps(figures))
    if figures["cases"] is None:
        sys.exit("schemathesis printed no summary; its output is above")
    if args.report:
        from t2i_scripts.report import write_report

        section = "\n".join(
            [
                "## API conformance and fuzzing (schemathesis)",
                "",
                "`python -m t2i_scripts.ops.api_fuzz --report RELIABILITY.md` (also part of `make test`): "
                "schemathesis against the served `/openapi.json` of `t2i-align serve` on `models/tiny-sd`, "
                f"phases examples, coverage and fuzzing, {args.max_examples} examples per operation and "
                f"phase, seed {args.seed}, "
                f"checks `{CHECKS}`.",
                "",
                f"- operations tested: {figures['operations']}",
                f"- cases run: {figures['cases']}",
                f"- failures (server errors or responses that break the document): {figures['failures']}",
                f"- time: {figures['seconds']} s",
            ]
        )
        write_report(args.report, f"{BEGIN}\n{section}\n{END}", BEGIN, END)
    return 0 if run.returncode == 0 and figures["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
