"""The limits table of RELIABILITY.md (issue #7), measured: each limit is hit on a running server and the
status and error message it returns are recorded as they came back.

The server runs on the tiny test model with small limits (so that each can be hit cheaply) and two API keys.

Usage:
    python -m t2i_scripts.ops.limits_table --binary target/release/t2i-align --report RELIABILITY.md
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

from PIL import Image

from t2i_scripts.server import ServerProcess, http, png_base64, serve_command, tool_arguments

BEGIN, END = "<!-- limits:begin -->", "<!-- limits:end -->"
KEY = "limits-inference-key-0123456789"
FLAGS = [
    "--max-body-bytes", "65536", "--max-image-pixels", "4096", "--max-prompt-bytes", "64", "--max-work",
    "5000000", "--max-concurrent-per-key", "1", "--queue-capacity", "1", "--max-steps", "150", "--max-images",
    "8", "--max-image-size", "256", "--max-best-of", "16", "--request-timeout", "60",
]  # fmt: skip


def call(url: str, path: str, body: bytes | None, headers: dict | None = None) -> tuple[int, dict, dict]:
    """POST `body` as JSON (GET without one), with the inference key; status, headers and JSON answer."""
    answer = http(url + path, body, headers={"Authorization": f"Bearer {KEY}"} | (headers or {}))
    return answer.status, answer.headers, answer.json()


def png(size: int) -> str:
    return png_base64(Image.new("RGB", (size, size), (200, 30, 30)))


def hold(url: str, body: dict, seconds: float) -> threading.Thread:
    """A long request in the background, started `seconds` before the caller goes on."""
    thread = threading.Thread(target=call, args=(url, "/generate", json.dumps(body).encode()))
    thread.start()
    time.sleep(seconds)
    return thread


def main() -> int:
    args = tool_arguments(__doc__, 18099, "limits").parse_args()
    command = serve_command(args.binary, args.model, flags=FLAGS)
    os.environ["T2I_API_KEYS"] = f"limits:inference:{KEY}"
    server = ServerProcess(command, args.port, image_retention=10)
    url = server.url
    rows = []

    def row(limit: str, what: str, status: int, headers: dict, body: dict) -> None:
        error = body.get("error", {})
        headers = {name.lower(): value for name, value in headers.items()}
        extra = f" (Retry-After: {headers['retry-after']})" if "retry-after" in headers else ""
        rows.append((limit, what, f"{status}{extra}", error.get("param") or "", error.get("message", "")))

    def generate(limit: str, what: str, body: dict, headers: dict | None = None) -> None:
        row(limit, what, *call(url, "/generate", json.dumps(body).encode(), headers))

    try:
        big = json.dumps({"prompt": "x" * 70_000}).encode()
        row("--max-body-bytes 65536", "a 70 kB body", *call(url, "/generate", big))
        row(
            "--max-image-pixels 4096",
            "/score with a 128×128 PNG",
            *call(url, "/score", json.dumps({"prompt": "a red circle", "images": [png(128)]}).encode()),
        )
        generate("--max-prompt-bytes 64", "a 100-byte prompt", {"prompt": "a" * 100})
        generate("--max-images 8", "`n: 9`", {"prompt": "x", "n": 9})
        generate("--max-steps 150", "`steps: 151`", {"prompt": "x", "steps": 151})
        generate("--max-image-size 256", "`width: 512`", {"prompt": "x", "width": 512})
        generate("--max-best-of 16", "`best_of: 17`", {"prompt": "x", "best_of": 17})
        generate(
            "--max-work 5000000",
            "8 images × 150 steps × 128×128",
            {"prompt": "x", "n": 8, "steps": 150, "width": 128, "height": 128},
        )
        generate(
            "--request-timeout 60", "`X-Request-Timeout: 90`", {"prompt": "x"}, {"X-Request-Timeout": "90"}
        )
        generate(
            "X-Request-Timeout",
            "0.2 s for 150 steps of 8 images",
            {"prompt": "x", "steps": 150, "n": 8},
            {"X-Request-Timeout": "0.2"},
        )
        busy = hold(url, {"prompt": "hold", "steps": 150, "n": 8}, 0.3)
        generate(
            "--max-concurrent-per-key 1", "a second request of the same key", {"prompt": "x", "steps": 2}
        )
        busy.join()
        row("API keys", "no `Authorization` header", *call(url, "/generate", b"{}", {"Authorization": ""}))
        row("API keys (scopes)", "an inference key on `GET /fine-tunes`", *call(url, "/fine-tunes", None))
    finally:
        server.stop()
    # The queue limit needs a server whose per-key limit does not answer first: open mode.
    del os.environ["T2I_API_KEYS"]
    command = serve_command(args.binary, args.model, flags=["--queue-capacity", "1"])
    server = ServerProcess(command, args.port)
    try:
        url = server.url
        held = [hold(url, {"prompt": "hold", "steps": 150, "n": 8}, 0.2) for _ in range(3)]
        generate("--queue-capacity 1", "a request while one runs and one waits", {"prompt": "x", "steps": 2})
        for thread in held:
            thread.join()
    finally:
        server.stop()

    lines = [
        "## Limits and what each returns",
        "",
        "`python -m t2i_scripts.ops.limits_table --report RELIABILITY.md`: each limit hit on a running "
        "server "
        f"(`{' '.join(FLAGS)}`, one inference key), with the status and error the server returned.",
        "",
        "| limit | request | status | param | message |",
        "|---|---|---|---|---|",
    ]
    for limit, what, status, param, message in rows:
        lines.append(f"| `{limit}` | {what} | {status} | {param} | {message.replace('|', '/')} |")
    table = "\n".join(lines)
    print(table)
    if args.report:
        from t2i_scripts.report import write_report

        write_report(args.report, f"{BEGIN}\n{table}\n{END}", BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
