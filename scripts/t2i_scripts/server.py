"""The `t2i-align serve` the scripts run, and their one HTTP client: the server's command line
(`serve_command`, every script's launch flags in one place), the ONNX Runtime library it loads, and the child
process (`ServerProcess`): started on a port, ready when /ready says 200, POSTed to with JSON, stopped at the
end. Its log is kept in memory for error messages."""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

# The repository: scripts/t2i_scripts/server.py is two folders below it.
ROOT = Path(__file__).resolve().parents[2]


def recorded_library() -> str:
    """The libonnxruntime the server loads: ORT_DYLIB_PATH when set (the Makefile exports it), else the path
    `make venv` recorded in .venv/ort-dylib-path."""
    if os.environ.get("ORT_DYLIB_PATH"):
        return os.environ["ORT_DYLIB_PATH"]
    recorded = ROOT / ".venv" / "ort-dylib-path"
    if not recorded.is_file():
        sys.exit("ORT_DYLIB_PATH is not set and .venv/ort-dylib-path is missing: run `make venv`")
    return recorded.read_text().strip()


# For a measuring harness, the server's only client: no per-client request or work limit (#28's defaults, 1200
# requests a minute from one address, would stop a rating loop that sends several requests per image).
NO_RATE_LIMITS = ("--rate-limit-requests", "0", "--rate-limit-work", "0")


def serve_command(
    binary: str | Path,
    model: str | Path,
    *,
    threads: int | None = 1,
    reward_model: str | Path | None = None,
    trainer_python: str | Path | None = None,
    trainer_threads: int | None = None,
    flags: Sequence[str] = (),
) -> list[str]:
    """`t2i-align serve` on loopback: `model` (and `reward_model` when given) with `threads` ONNX Runtime
    threads (None: the server's default). `trainer_python` runs fine-tune jobs with this repository's trainer
    (trainer/, the t2i_trainer package) at `trainer_threads` (default: `threads`). `flags` are appended.
    ServerProcess adds the data directory, image retention and port."""
    command = [str(binary), "serve", "--model", str(model), "--host", "127.0.0.1"]
    if threads is not None:
        command += ["--intra-threads", str(threads)]
    if reward_model is not None:
        command += ["--reward-model", str(reward_model)]
    if trainer_python is not None:
        command += ["--trainer-python", str(trainer_python), "--trainer-dir", str(ROOT / "trainer")]
        command += ["--trainer-threads", str(trainer_threads or threads or 1)]
    return command + list(flags)


def tool_arguments(description: str, port: int, report: str) -> argparse.ArgumentParser:
    """The flags the reliability scripts share: the binary, the model, a port and the report to write."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--binary", default="target/release/t2i-align")
    parser.add_argument("--model", default=str(ROOT / "models" / "tiny-sd"))
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--report", type=Path, help=f"write the figures into this file's {report} section")
    return parser


@dataclass
class Answer:
    """An HTTP answer: status (0 when the connection failed), headers (case-insensitive `get`), body and the
    seconds it took."""

    status: int
    headers: Message
    body: bytes
    seconds: float

    def json(self):
        return json.loads(self.body or b"{}")


def png_base64(image) -> str:
    """A PIL image as the base64 PNG text the API's `images` fields take."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def http(
    url: str,
    body: dict | bytes | None = None,
    *,
    method: str | None = None,
    headers: dict | None = None,
    timeout: float = 120,
) -> Answer:
    """One request: `body` as JSON (a dict) or as given (bytes), GET without one unless `method` says. An HTTP
    error is an answer like any other; a failed connection is status 0. The scripts' one HTTP client."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"} | (headers or {}), method=method
    )
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Answer(response.status, response.headers, response.read(), time.perf_counter() - started)
    except urllib.error.HTTPError as err:
        return Answer(err.code, err.headers, err.read(), time.perf_counter() - started)
    except OSError:
        return Answer(0, Message(), b"", time.perf_counter() - started)


def port_is_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:`port` (binding it, then letting it go)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As servers do: a port whose last connections wait in TIME_WAIT is free, one with a listener is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class ServerProcess:
    def __init__(
        self,
        command: list[str],
        port: int,
        library: str | None = None,
        ready_timeout: float = 120,
        image_retention: int = 0,
        data_dir: Path | None = None,
        env: dict[str, str] | None = None,
    ):
        if not port_is_free(port):
            # Another server there would answer /ready in this one's place, and the script would measure it.
            sys.exit(f"port {port} is in use by another process; stop it or choose another --port")
        library = recorded_library() if library is None else library
        # `env` adds to (or overrides) this process's environment, e.g. T2I_API_KEYS.
        env = dict(os.environ, ORT_DYLIB_PATH=library, RUST_LOG="warn") | (env or {})
        # A data directory of its own unless one is given (which then outlives the process); by default no
        # stored images (benchmarks measure serving, not disk).
        self.owned_data_dir = None if data_dir else tempfile.TemporaryDirectory(prefix="t2i-bench-")
        folder = str(data_dir) if data_dir else self.owned_data_dir.name
        command = command + ["--data-dir", folder, "--image-retention", str(image_retention)]
        self.process = subprocess.Popen(
            command + ["--port", str(port)], env=env, stderr=subprocess.PIPE, text=True
        )
        self.log: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.time() + ready_timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                sys.exit("t2i-align exited:\n" + "".join(self.log))
            try:
                with urllib.request.urlopen(self.url + "/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        sys.exit("t2i-align did not become ready:\n" + "".join(self.log))

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)

    def post(self, path: str, body: dict) -> tuple[float, dict]:
        """Seconds the request took, and the JSON answer; an answer other than 2xx (POST /feedback and
        POST /fine-tunes answer 201) stops the script with its body."""
        answer = http(self.url + path, body, timeout=600)
        if not 200 <= answer.status < 300:
            sys.exit(f"{path} answered {answer.status}: {answer.body.decode(errors='replace')}")
        return answer.seconds, answer.json()

    def get(self, path: str) -> dict:
        answer = http(self.url + path, timeout=60)
        if answer.status != 200:
            sys.exit(f"{path} answered {answer.status}: {answer.body.decode(errors='replace')}")
        return answer.json()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        if self.owned_data_dir:
            self.owned_data_dir.cleanup()

    def kill9(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        self.process.kill()
        self.process.wait()
