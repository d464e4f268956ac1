"""The operator surface, checked against a real server and a real Prometheus (issue #8).

Starts `t2i-align serve` on the tiny test model with the tiny CLIP reward model, with API keys and
`--protect-metrics`, and Debian's `prometheus` on a free loopback port, configured from deploy/prometheus.yml
itself (its bearer `credentials_file` block uncommented, the target and scrape interval set for this run).
Then it sends a little traffic of every kind the dashboard shows, and checks that:

- `promtool check config` accepts deploy/prometheus.yml, as committed and with its `authorization:` block on;
- `promtool check metrics` finds nothing to say about a /metrics dump taken after the traffic;
- /metrics refuses a request without the admin key, and Prometheus's scrapes with the key succeed;
- every PromQL expression of every panel of deploy/grafana/t2i-align.json evaluates through /api/v1/query,
  with the dashboard's variables resolved as Grafana would (label_values through /api/v1/label) and its
  built-in ones substituted; none errors, and each panel the traffic fed returns a series with a finite value;
- the dashboard is well formed (unique ids and refIds, the `datasource` variable on every panel, no
  overlapping panels) and, when PyYAML is importable, deploy/docker-compose.yml and the Grafana provisioning
  agree with it.

It prints a table of panel, query and series. `--screenshots DIR` also writes one PNG per panel: Prometheus's
own graph page (the classic UI Debian ships) for the panel's queries, taken with headless Chromium, under a
header with the panel's title and queries; where that UI or Chromium is missing, a plain rendering of the
query results. `--report FILE` writes the panel table (with the PNG links) between the file's ops-check
markers.

Usage:
    python -m t2i_scripts.ops.ops_check --binary target/release/t2i-align
    python -m t2i_scripts.ops.ops_check --binary target/release/t2i-align --screenshots docs/dashboard
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from t2i_scripts.server import ROOT, ServerProcess, serve_command, tool_arguments
from t2i_scripts.server import http as request_once

DASHBOARD = ROOT / "deploy" / "grafana" / "t2i-align.json"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus.yml"
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
BEGIN, END = "<!-- ops-check:begin -->", "<!-- ops-check:end -->"
ADMIN_KEY = "ops-check-admin-key-0123456789abcdef"
INFERENCE_KEY = "ops-check-inference-key-0123456789"
# Grafana's built-in interval variables as substituted here. Grafana's $__rate_interval would be 4 s for a 1 s
# scrape over a short range; 30 s covers the whole burst of traffic, so every rate() sees all of it.
BUILTINS = {"__rate_interval": "30s", "__interval": "15s", "__interval_ms": "15000"}
# Panels that may return no series after this script's traffic, and why. Every other panel must return at
# least one series with a finite value: the traffic feeds every metric they read (see `send_traffic`).
MAY_BE_EMPTY: dict[str, str] = {}
# A fine-tune job that stops at its train stage: the server's trainer is `false`, which exits 1 at once. Its
# prompts, sample and label stages run for real (two tiny-sd images scored by the reward model).
FINE_TUNE = {
    "prompts": ["a red circle", "a blue square"],
    "images_per_prompt": 1,
    "eval_prompts": ["a red circle"],
    "eval_images_per_prompt": 1,
    "use_feedback": False,
}
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
MAX_PNG_BYTES = 100_000


class CheckFailed(Exception):
    pass


def parse_args() -> argparse.Namespace:
    parser = tool_arguments(__doc__, 0, "ops-check")
    parser.add_argument("--library", help="libonnxruntime (default: .venv's, as the Makefile records it)")
    parser.add_argument("--reward-model", default=str(ROOT / "models" / "tiny-clip-reward"))
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD)
    parser.add_argument("--prometheus", default="prometheus", help="the prometheus binary (Debian's package)")
    parser.add_argument("--promtool", default="promtool")
    parser.add_argument("--chromium", default="chromium", help="for --screenshots")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="rounds of traffic (each a few seconds): longer graphs in the PNGs",
    )
    parser.add_argument("--screenshots", type=Path, metavar="DIR", help="write one PNG per panel into DIR")
    parser.add_argument(
        "--render",
        choices=["auto", "prometheus-ui", "plain"],
        default="auto",
        help="screenshots of Prometheus's graph page (auto: when usable), or plain renderings of the results",
    )
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise CheckFailed(
            f"`{name}` not found: install Debian's prometheus package (apt-get install prometheus)"
        )
    return found


def http(
    url: str,
    body: dict | None = None,
    headers: dict | None = None,
    timeout: float = 120,
    method: str | None = None,
):
    """(status, parsed JSON or text) of a GET, or of a POST of `body` as JSON, or of `method`; HTTP errors are
    returned."""
    answer = request_once(url, body, method=method, headers=headers, timeout=timeout)
    if answer.status == 0:
        raise ConnectionError(f"no answer from {url}")
    text = answer.body.decode(errors="replace")
    kind = answer.headers.get("Content-Type", "")
    return answer.status, (json.loads(text) if "json" in kind and text else text)


# --- Prometheus ---------------------------------------------------------------------------------------------


def live_config(committed: str, target: str, key_file: Path) -> str:
    """deploy/prometheus.yml with its bearer block uncommented, and this run's target and 1 s scrapes."""
    replacements = [
        ("    # authorization:\n", "    authorization:\n"),
        ("    #   type: Bearer\n", "      type: Bearer\n"),
        (
            "    #   credentials_file: /etc/prometheus/secrets/t2i-admin-key\n",
            f"      credentials_file: {key_file}\n",
        ),
        ('["t2i-align:8080"]', json.dumps([target])),
        ("  scrape_interval: 5s\n", "  scrape_interval: 1s\n"),
    ]
    for old, new in replacements:
        if old not in committed:
            raise CheckFailed(
                f"deploy/prometheus.yml no longer contains {old.strip()!r}: update live_config()"
            )
        committed = committed.replace(old, new)
    return committed


class Prometheus:
    def __init__(self, binary: str, config: Path, folder: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "prometheus.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={folder / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started = time.time()
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise CheckFailed("prometheus exited:\n" + self.log.read_text())
            try:
                if http(self.url + "/-/ready", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise CheckFailed("prometheus did not become ready:\n" + self.log.read_text())

    def query(self, expr: str, at: float | None = None) -> dict:
        """/api/v1/query's answer (a POST form, as Grafana sends it): {status, data} or {status, error}."""
        form = {"query": expr} | ({"time": f"{at:.3f}"} if at else {})
        request = urllib.request.Request(
            self.url + "/api/v1/query", data=urllib.parse.urlencode(form).encode()
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            return json.loads(err.read() or b'{"status": "error", "error": "no body"}')

    def scalar(self, expr: str) -> float | None:
        answer = self.query(expr)
        result = answer.get("data", {}).get("result", [])
        return float(result[0]["value"][1]) if answer.get("status") == "success" and result else None

    def wait_for(self, expr: str, what: str, timeout: float = 60) -> float:
        """Polls until `expr` returns a value; that value."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.scalar(expr)
            if value is not None:
                return value
            time.sleep(0.5)
        raise CheckFailed(f"Prometheus never saw {what} (`{expr}`):\n" + self.log.read_text()[-3000:])

    def label_values(self, label: str, selector: str | None) -> list[str]:
        params = [("start", f"{self.started - 60:.0f}")] + ([("match[]", selector)] if selector else [])
        url = f"{self.url}/api/v1/label/{urllib.parse.quote(label)}/values?" + urllib.parse.urlencode(params)
        status, answer = http(url)
        if status != 200:
            raise CheckFailed(f"label values of {label} for {selector}: {status} {answer}")
        return answer["data"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --- the dashboard ------------------------------------------------------------------------------------------


def panels_of(dashboard: dict) -> list[dict]:
    """Every panel that is not a row, in order, including those inside collapsed rows."""
    found = []
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def check_structure(dashboard: dict) -> list[str]:
    problems = []
    variables = {variable["name"]: variable for variable in dashboard.get("templating", {}).get("list", [])}
    if variables.get("datasource", {}).get("type") != "datasource":
        problems.append("no `datasource` variable of type datasource")
    every = dashboard.get("panels", []) + [
        child for row in dashboard.get("panels", []) for child in row.get("panels", [])
    ]
    ids = [panel.get("id") for panel in every]
    if len(ids) != len(set(ids)):
        problems.append(f"panel ids repeat: {sorted(i for i in ids if ids.count(i) > 1)}")
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard.get("panels", []):
        x, y, w, h = (panel.get("gridPos", {}).get(key, 0) for key in "xywh")
        if x + w > 24:
            problems.append(f"`{panel.get('title')}` is wider than the 24 columns")
        mine = {(column, line) for column in range(x, x + w) for line in range(y, y + h)}
        others = sorted({cells[cell] for cell in mine if cell in cells})
        if others:
            problems.append(f"`{panel.get('title')}` overlaps {others}")
        cells |= dict.fromkeys(mine, panel.get("title"))
    for panel in panels_of(dashboard):
        title = panel.get("title")
        if panel.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"`{title}` does not use the ${{datasource}} variable")
        targets = panel.get("targets", [])
        refs = [target.get("refId") for target in targets]
        if not targets or not all(target.get("expr") for target in targets):
            problems.append(f"`{title}` has a target without a PromQL expression")
        if len(refs) != len(set(refs)):
            problems.append(f"`{title}` repeats a refId")
    return problems


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's $var, ${var} and [[var]] forms, longest names first."""
    for name in sorted(values, key=len, reverse=True):
        for form in ("${" + name + "}", "[[" + name + "]]", "$" + name):
            expr = expr.replace(form, values[name])
    return expr


def resolve_variables(dashboard: dict, prometheus: Prometheus) -> tuple[dict[str, str], list[str]]:
    """Each query variable's value as Grafana would pick it: its allValue when it includes All, else the first
    value label_values() finds (they are sorted ascending). A variable without values is a problem."""
    values = dict(BUILTINS)
    values["__range"] = f"{math.ceil(time.time() - prometheus.started) + 1}s"
    values["__range_s"] = values["__range"][:-1]
    problems = []
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("definition") or variable.get("query", {}).get("query", "")
        match = re.fullmatch(r"\s*label_values\(\s*(?:(.*\S)\s*,\s*)?(\w+)\s*\)\s*", query)
        if not match:
            problems.append(f"variable `{variable['name']}`: cannot evaluate `{query}` (only label_values())")
            continue
        selector = substitute(match.group(1), values) if match.group(1) else None
        found = sorted(prometheus.label_values(match.group(2), selector))
        if not found:
            problems.append(f"variable `{variable['name']}`: `{query}` finds no values")
            continue
        values[variable["name"]] = (
            (variable.get("allValue") or ".*") if variable.get("includeAll") else found[0]
        )
    return values, problems


def summary(values: list[float]) -> str:
    finite = [value for value in values if math.isfinite(value)]
    if not finite:
        return "NaN" if values else "-"
    low, high = min(finite), max(finite)
    text = f"{low:.4g}" if low == high else f"{low:.4g} .. {high:.4g}"
    return text + (f" ({len(values) - len(finite)} NaN)" if len(finite) < len(values) else "")


def evaluate_panels(
    dashboard: dict, prometheus: Prometheus, values: dict[str, str], at: float
) -> tuple[list, list]:
    """A row per target (panel title, refId, expression, series, finite values, summary), and the problems."""
    rows, problems = [], []
    for panel in panels_of(dashboard):
        title = panel["title"]
        panel_finite = 0
        for target in panel.get("targets", []):
            expr = substitute(target["expr"], values)
            left = re.findall(r"\$\{?\w+|\[\[\w+\]\]", expr)
            if left:
                problems.append(f"`{title}` {target['refId']}: unresolved variables {left}")
            answer = prometheus.query(expr, at)
            if answer.get("status") != "success":
                problems.append(
                    f"`{title}` {target['refId']}: {answer.get('errorType')}: {answer.get('error')}"
                )
                rows.append((title, target["refId"], expr, "ERROR", 0, answer.get("error", "")[:40]))
                continue
            if answer.get("warnings"):
                problems.append(f"`{title}` {target['refId']}: warnings {answer['warnings']}")
            data = answer["data"]
            if data["resultType"] == "vector":
                samples = [float(item["value"][1]) for item in data["result"]]
            elif data["resultType"] == "scalar":
                samples = [float(data["result"][1])]
            else:
                samples = [float(value) for item in data["result"] for _, value in item["values"]]
            finite = sum(math.isfinite(sample) for sample in samples)
            panel_finite += finite
            rows.append((title, target["refId"], expr, len(data["result"]), finite, summary(samples)))
        if panel_finite == 0 and title not in MAY_BE_EMPTY:
            problems.append(f"`{title}`: no series with a finite value, though the traffic feeds its metrics")
    return rows, problems


def exported_names(dump: str) -> set[str]:
    """Every sample name /metrics exports (histograms with their _bucket, _sum and _count series)."""
    return {
        line.split("{")[0].split(" ")[0] for line in dump.splitlines() if line and not line.startswith("#")
    }


def metrics_not_exported(dashboard: dict, dump: str) -> dict[str, set[str]]:
    exported = exported_names(dump) | {"up"}
    missing: dict[str, set[str]] = {}
    for panel in panels_of(dashboard):
        for target in panel.get("targets", []):
            for name in re.findall(r"\b(t2i_\w+)\b", target["expr"]):
                if name not in exported:
                    missing.setdefault(panel["title"], set()).add(name)
    return missing


# --- deploy/ consistency ------------------------------------------------------------------------------------


def check_deploy_files(dashboard: dict) -> list[str]:
    """The compose file, the provisioning and the dashboard agree: mounted files exist, the provider loads the
    folder the dashboard is mounted in, the datasource's uid is the dashboard's default. Needs PyYAML (which
    schemathesis brings into .venv); without it, skipped."""
    try:
        import yaml
    except ImportError:
        print("deploy/ consistency: skipped (no PyYAML)")
        return []
    problems = []
    deploy = COMPOSE.parent
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose.get("services", {})
    for name in ("t2i-align", "prometheus", "grafana"):
        if name not in services:
            problems.append(f"docker-compose.yml: no `{name}` service")
    mounts: dict[str, str] = {}
    for service in services.values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            source = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", source)
            mounts[target] = source
            if source.startswith((".", "/")) and not (deploy / source).exists():
                problems.append(f"docker-compose.yml mounts {source}, which does not exist")
    build = services.get("t2i-align", {}).get("build", {})
    if not (deploy / build.get("context", ".") / build.get("dockerfile", "Dockerfile")).is_file():
        problems.append("docker-compose.yml: the t2i-align service's Dockerfile is not where `build` says")
    provisioning = deploy / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    default = next(v for v in dashboard["templating"]["list"] if v["name"] == "datasource")["current"][
        "value"
    ]
    if default not in {source.get("uid") for source in datasources}:
        problems.append(f"no provisioned datasource has the dashboard's default uid `{default}`")
    urls = {source.get("url") for source in datasources}
    if "http://prometheus:9090" not in urls:
        problems.append(f"the datasource url {urls} is not the compose service `prometheus`")
    providers = yaml.safe_load((provisioning / "dashboards" / "t2i-align.yml").read_text())["providers"]
    folders = {provider["options"]["path"] for provider in providers}
    dashboard_mounts = [target for target, source in mounts.items() if source.endswith("t2i-align.json")]
    if not any(str(Path(target).parent) in folders for target in dashboard_mounts):
        problems.append(f"the dashboard is mounted at {dashboard_mounts}, outside the provider's {folders}")
    if mounts.get("/etc/prometheus/prometheus.yml") != "./prometheus.yml":
        problems.append("prometheus does not mount deploy/prometheus.yml at /etc/prometheus/prometheus.yml")
    return problems


# --- traffic ------------------------------------------------------------------------------------------------


def send_traffic(url: str, admin: dict, rounds: int) -> dict[str, int]:
    """Every kind of request the dashboard shows, spread over a few seconds so that rate() sees increases.
    Returns the count of each (route, status) it got; the expected statuses are checked. Each round:

    - /generate with best_of 2 (3 one after the other, 2 at once with n 2): HTTP rate and latency, the stage
      times (queue, text_encode, unet_step, vae_decode, png_encode, score), UNet rows and requests per call,
      images generated, candidates generated and accepted, reward scores and reward-model calls;
    - /score of stored images: the /score route and more reward scores;
    - POST /feedback: ratings by label; DELETE /feedback/{id}: one taken back (the console's undo);
    - /generate with `n: 100`: 422 (the errors panel);
    - /generate with `X-Request-Timeout: 0.001`: 504 and t2i_requests_dropped_total{reason="deadline"};
    - POST /fine-tunes (FINE_TUNE), which fails at its train stage: jobs by status and the stage times.
    The last four also go once at the start, more than a scrape before: a counter's first sample already
    holds its first increment, which rate() (and increase()) cannot see. Queue depth, active requests, the
    model and the trainer loss are exported from start-up on."""
    key = {"Authorization": f"Bearer {INFERENCE_KEY}"}
    seen: dict[str, int] = {}
    image_ids: list[str] = []
    errors: list[Exception] = []
    lock = threading.Lock()

    def call(path: str, body: dict, expected: int, headers: dict | None = None) -> dict | str:
        status, answer = http(url + path, body, key | (headers or {}))
        with lock:
            seen[f"{path} {status}"] = seen.get(f"{path} {status}", 0) + 1
        if status != expected:
            raise CheckFailed(f"{path} answered {status}, not {expected}: {str(answer)[:300]}")
        return answer

    def in_thread(path: str, body: dict) -> None:
        try:
            call(path, body, 200)
        except Exception as err:
            errors.append(err)

    drops = [0]

    def rare_kinds() -> None:
        rating = call("/feedback", {"image_id": image_ids[0], "label": "good", "rater": "ops-check"}, 201)
        call("/feedback", {"image_id": image_ids[0], "label": "bad", "rater": "ops-check"}, 201)
        # The console's undo: the second rating taken back.
        status, answer = http(f"{url}/feedback/{rating['id']}", headers=key, method="DELETE")
        if status != 200:
            raise CheckFailed(f"DELETE /feedback/{rating['id']} answered {status}: {str(answer)[:300]}")
        call("/generate", {"prompt": "too many", "n": 100}, 422)
        call("/generate", {"prompt": "too slow", "steps": 50}, 504, {"X-Request-Timeout": "0.001"})
        job = call("/fine-tunes", FINE_TUNE, 201, admin)["id"]
        deadline = time.time() + 60
        while (status := http(f"{url}/fine-tunes/{job}", headers=admin)[1]["status"]) != "failed":
            if status not in {"queued", "running"} or time.time() > deadline:
                raise CheckFailed(f"the fine-tune job {job} is {status}, not failed at its train stage")
            time.sleep(0.1)
        drops[0] += 1
        # The worker counts the drop at its next step, after the handler has answered 504.
        expected = re.compile(rf'^t2i_requests_dropped_total{{reason="deadline"}} {drops[0]}$', re.M)
        deadline = time.time() + 20
        while not expected.search(http(url + "/metrics", headers=admin)[1]):
            if time.time() > deadline:
                raise CheckFailed(f"t2i_requests_dropped_total{{reason=deadline}} never reached {drops[0]}")
            time.sleep(0.1)

    for round_ in range(rounds):
        for seed in range(3):
            body = {"prompt": "a red circle", "best_of": 2, "steps": 4, "seed": 3 * round_ + seed}
            answer = call("/generate", body, 200)
            image_ids.extend(image["image_id"] for image in answer["images"])
            if round_ == seed == 0:
                rare_kinds()
            time.sleep(0.4)
        threads = [
            threading.Thread(
                target=in_thread, args=("/generate", {"prompt": p, "n": 2, "best_of": 2, "steps": 6})
            )
            for p in ("two blue squares", "three green triangles")
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        for pair in (image_ids[-3:-1], image_ids[-2:]):
            call("/score", {"prompt": "a red circle", "image_ids": pair}, 200)
            time.sleep(0.3)
        time.sleep(1.2)
        rare_kinds()
    return seen


# --- screenshots --------------------------------------------------------------------------------------------


def slug(index: int, title: str) -> str:
    return f"{index:02d}-" + re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:60] + ".png"


def prometheus_ui_problem(prometheus: Prometheus) -> str | None:
    """Why Prometheus's classic graph page cannot be screenshotted (None when it can): the page must be there
    and every script and stylesheet it loads must answer 200 (Debian links them from its libjs-* packages)."""
    status, page = http(prometheus.url + "/classic/graph")
    if status != 200 or "graph/index.js" not in page:
        return f"/classic/graph answered {status} without the classic graph page"
    for asset in re.findall(r'(?:src|href)="(/classic/static/[^"?]+)', page):
        if http(prometheus.url + asset)[0] != 200:
            return f"{asset} is missing"
    return None


def font(size: int, mono: bool = False, bold: bool = False):
    from PIL import ImageFont

    name = "DejaVuSansMono.ttf" if mono else ("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf")
    try:
        return ImageFont.truetype(str(FONT_DIR / name), size)
    except OSError:
        return ImageFont.load_default()


def wrap(text: str, width: int) -> list[str]:
    lines = []
    while len(text) > width:
        cut = max(text.rfind(" ", 0, width), text.rfind(",", 0, width) + 1)
        cut = cut if cut > width // 2 else width
        lines.append(text[:cut].rstrip())
        text = "  " + text[cut:].lstrip()
    return lines + [text]


def header(width: int, title: str, queries: list[str], note: str):
    """The panel's title, its queries as evaluated and a note on what the picture is."""
    from PIL import Image, ImageDraw

    lines = [(title, font(20, bold=True), "#111111", 30)]
    for query in queries:
        lines += [(line, font(12, mono=True), "#1f3a93", 17) for line in wrap(query, 128)]
    lines += [(line, font(12), "#666666", 17) for line in wrap(note, 150)]
    image = Image.new("RGB", (width, 16 + sum(height for *_, height in lines)), "white")
    draw = ImageDraw.Draw(image)
    y = 10
    for text, face, colour, height in lines:
        draw.text((14, y), text, font=face, fill=colour)
        y += height
    return image


def save_small(image, path: Path) -> None:
    """A palette PNG under MAX_PNG_BYTES: fewer colours until it fits."""
    from PIL import Image

    for colours in (64, 32, 16):
        image.quantize(colours, dither=Image.Dither.NONE).save(path, optimize=True)
        if path.stat().st_size <= MAX_PNG_BYTES:
            return
    raise CheckFailed(f"{path} is {path.stat().st_size} bytes even with 16 colours")


def chromium_shot(chromium: str, url: str, height: int, out: Path, profile: Path) -> None:
    command = [
        chromium, "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--mute-audio",
        "--disable-breakpad", "--disable-crash-reporter",
        f"--user-data-dir={profile}", "--virtual-time-budget=8000", f"--window-size=1000,{height}",
        f"--screenshot={out}", url,
    ]  # fmt: skip
    if os.geteuid() == 0:
        command.insert(1, "--no-sandbox")
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise CheckFailed(f"chromium took over 90 s on {url}") from None
    if not out.is_file():
        raise CheckFailed(
            f"chromium wrote no screenshot of {url}:\n{output.decode(errors='replace')[-2000:]}"
        )


def ui_screenshot(
    prometheus: Prometheus, chromium: str, panel: dict, queries: list[str], out: Path, tmp: Path
):
    """Prometheus's classic graph page with one graph per query of the panel: the graph tab over the whole run
    for time series, the console tab (the instant values) for stat and bar gauge panels."""
    from PIL import Image, ImageOps

    tab = "1" if panel["type"] in {"stat", "bargauge", "table"} else "0"
    span = f"{math.ceil(time.time() - prometheus.started) + 5}s"
    params = {}
    for index, query in enumerate(queries):
        params |= {f"g{index}.expr": query, f"g{index}.tab": tab, f"g{index}.range_input": span}
    url = prometheus.url + "/classic/graph?" + urllib.parse.urlencode(params)
    raw = tmp / "shot.png"
    raw.unlink(missing_ok=True)
    chromium_shot(chromium, url, 160 + len(queries) * (420 if tab == "1" else 900), raw, tmp / "chromium")
    shot = Image.open(raw).convert("RGB")
    bottom = ImageOps.invert(shot).getbbox()
    shot = shot.crop((0, 0, shot.width, min(shot.height, (bottom[3] if bottom else shot.height) + 12)))
    note = (
        "Not a Grafana screenshot: Prometheus's own graph page (classic UI) for this panel's queries, "
        "captured with headless Chromium from the live data of t2i_scripts.ops.ops_check; Grafana variables "
        f"substituted ($__rate_interval = {BUILTINS['__rate_interval']}, job/instance = all)."
    )
    top = header(shot.width, panel["title"], queries, note)
    image = Image.new("RGB", (shot.width, top.height + shot.height), "white")
    image.paste(top, (0, 0))
    image.paste(shot, (0, top.height))
    save_small(image, out)


def plain_rendering(prometheus: Prometheus, panel: dict, queries: list[str], at: float, out: Path, why: str):
    """The panel's instant query results as text: each series' labels and value."""
    from PIL import Image, ImageDraw

    lines = []
    for query in queries:
        result = prometheus.query(query, at).get("data", {}).get("result", [])
        lines.append(f"{len(result)} series")
        for item in result[:20]:
            labels = ", ".join(f'{k}="{v}"' for k, v in item.get("metric", {}).items())
            lines.append(f"  {{{labels}}}  {float(item['value'][1]):.6g}")
        lines.append("")
    note = (
        "Not a Grafana screenshot: the instant query results of this panel's queries, rendered as text by "
        f"t2i_scripts.ops.ops_check from its live Prometheus (Prometheus's graph page was not usable: {why})."
    )
    top = header(1000, panel["title"], queries, note)
    body = Image.new("RGB", (1000, 14 + 16 * len(lines)), "white")
    draw = ImageDraw.Draw(body)
    for index, line in enumerate(lines):
        draw.text((14, 6 + 16 * index), line[:140], font=font(12, mono=True), fill="#222222")
    image = Image.new("RGB", (1000, top.height + body.height), "white")
    image.paste(top, (0, 0))
    image.paste(body, (0, top.height))
    save_small(image, out)


def screenshots(args, dashboard: dict, prometheus: Prometheus, values: dict, at: float, tmp: Path) -> dict:
    folder = args.screenshots
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("[0-9][0-9]-*.png"):
        stale.unlink()
    why = None
    if args.render == "plain":
        why = "--render plain"
    else:
        why = prometheus_ui_problem(prometheus)
        if not why and not shutil.which(args.chromium):
            why = f"no `{args.chromium}`"
        if why and args.render == "prometheus-ui":
            raise CheckFailed(f"cannot screenshot Prometheus's graph page: {why}")
    print(
        f"screenshots: {'plain renderings (' + why + ')' if why else 'Prometheus graph pages via Chromium'}"
    )
    written = {}
    for index, panel in enumerate(panels_of(dashboard), start=1):
        queries = [substitute(target["expr"], values) for target in panel.get("targets", [])]
        out = folder / slug(index, panel["title"])
        if why:
            plain_rendering(prometheus, panel, queries, at, out, why)
        else:
            ui_screenshot(prometheus, args.chromium, panel, queries, out, tmp)
        written[panel["title"]] = out
        print(f"  {out} ({out.stat().st_size // 1000} kB)")
    return written


# --- output -------------------------------------------------------------------------------------------------


def print_table(rows: list) -> None:
    width = max(len(row[0]) for row in rows)
    print(f"\n{'panel':<{width}}  ref  series  finite  values                 query")
    for title, ref, expr, series, finite, values in rows:
        print(f"{title:<{width}}  {ref:<3}  {series!s:>6}  {finite:>6}  {values:<21}  {expr}")


def markdown(dashboard: dict, rows: list, pictures: dict, report: Path) -> str:
    """A row per panel: its queries as the dashboard has them, the series each returned here, its PNG."""
    series = {(title, ref): count for title, ref, _, count, _, _ in rows}
    lines = ["| panel | PromQL (as in the dashboard) | series | picture |", "|---|---|---|---|"]
    for panel in panels_of(dashboard):
        title = panel["title"]
        targets = panel.get("targets", [])
        queries = "<br>".join("`" + target["expr"].replace("|", "\\|") + "`" for target in targets)
        counts = ", ".join(str(series.get((title, target["refId"]), "")) for target in targets)
        picture = pictures.get(title)
        link = f"[{picture.name}]({os.path.relpath(picture, report.resolve().parent)})" if picture else ""
        lines.append(f"| {title} | {queries} | {counts} | {link} |")
    return "\n".join(lines)


def write_report(path: Path, section: str) -> None:
    """Replaces the report's section between the markers, or appends it."""
    text = path.read_text() if path.is_file() else ""
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        text = before + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


# --- main ---------------------------------------------------------------------------------------------------


def stop_children() -> None:
    """Terminates any child of this process still running: a server that ServerProcess gave up waiting for (it
    exits without stopping it), or anything an exception left behind."""
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == me:
            try:
                os.kill(int(entry.name), signal.SIGTERM)
            except ProcessLookupError:
                pass


def run(args, tmp: Path, started: list) -> int:
    promtool = tool(args.promtool)
    dashboard = json.loads(args.dashboard.read_text())
    problems = [f"dashboard: {problem}" for problem in check_structure(dashboard)]
    problems += [f"deploy/: {problem}" for problem in check_deploy_files(dashboard)]

    key_file = tmp / "admin-key"
    key_file.write_text(ADMIN_KEY + "\n")
    committed = PROMETHEUS_CONFIG.read_text()
    variant = tmp / "prometheus-with-key.yml"
    variant.write_text(live_config(committed, "t2i-align:8080", key_file))
    for config in (PROMETHEUS_CONFIG, variant):
        check = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True)
        if check.returncode != 0:
            problems.append(f"promtool check config {config.name}: {check.stdout}{check.stderr}".strip())

    port = args.port or free_port()
    # ServerProcess passes its own environment on; the keys go to the server only.
    os.environ["T2I_API_KEYS"] = f"ops:admin:{ADMIN_KEY},app:inference:{INFERENCE_KEY}"
    # No fine-tune job runs here: a trainer that exits at once.
    no_trainer = shutil.which("false") or "/bin/false"
    command = serve_command(
        args.binary, args.model, reward_model=args.reward_model, trainer_python=no_trainer,
        flags=["--protect-metrics", "--max-steps", "60"],
    )  # fmt: skip
    print(f"starting t2i-align on port {port} (--protect-metrics, tiny-sd, tiny-clip-reward)")
    server = ServerProcess(command, port, args.library, image_retention=100)
    os.environ.pop("T2I_API_KEYS")
    started.append(server)
    status, _ = http(server.url + "/metrics")
    if status != 401:
        problems.append(f"/metrics without a key answered {status}, not 401 (--protect-metrics)")

    config = tmp / "prometheus.yml"
    config.write_text(live_config(committed, f"127.0.0.1:{port}", key_file))
    prometheus = Prometheus(tool(args.prometheus), config, tmp)
    started.append(prometheus)
    print(f"prometheus on {prometheus.url}, scraping every 1 s with the admin key from a credentials_file")
    prometheus.wait_for('count_over_time(up{job="t2i-align"}[1m]) >= 2', "two scrapes")

    print(
        f"traffic: {args.rounds} round(s) of 5 best_of generations, 2 /score, a rating, a 422, a 504, a job"
    )
    seen = send_traffic(server.url, {"Authorization": f"Bearer {ADMIN_KEY}"}, args.rounds)
    finished = time.time()
    print("  " + ", ".join(f"{key}: {count}" for key, count in sorted(seen.items())))

    status, dump = http(server.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    if status != 200:
        raise CheckFailed(f"/metrics with the admin key answered {status}")
    (tmp / "metrics.txt").write_text(dump)
    lint = subprocess.run([promtool, "check", "metrics"], input=dump, capture_output=True, text=True)
    if lint.returncode != 0 or lint.stdout.strip() or lint.stderr.strip():
        problems.append(
            f"promtool check metrics (exit {lint.returncode}): {lint.stdout}{lint.stderr}".strip()
        )
    lines = dump.count("\n")
    print(f"promtool check metrics: {lines} lines, exit {lint.returncode}")
    for title, names in metrics_not_exported(dashboard, dump).items():
        message = f"`{title}` reads {sorted(names)}, which /metrics does not export"
        if title in MAY_BE_EMPTY:
            print(f"note: {message} yet ({MAY_BE_EMPTY[title]})")
        else:
            problems.append(message)

    # The scrape that follows the traffic: every query then sees all of it.
    prometheus.wait_for(
        f'timestamp(up{{job="t2i-align"}}) > {finished + 1.5:.3f}', "a scrape after the traffic"
    )
    if prometheus.scalar('min_over_time(up{job="t2i-align"}[1m])') != 1:
        problems.append("a scrape with the credentials_file failed (up was 0)")
    at = time.time()
    values, variable_problems = resolve_variables(dashboard, prometheus)
    problems += variable_problems
    print("variables: " + ", ".join(f"${name} = {value}" for name, value in values.items()))
    rows, query_problems = evaluate_panels(dashboard, prometheus, values, at)
    problems += query_problems
    print_table(rows)

    pictures = screenshots(args, dashboard, prometheus, values, at, tmp) if args.screenshots else {}
    if args.report:
        write_report(args.report, f"{BEGIN}\n{markdown(dashboard, rows, pictures, args.report)}\n{END}")
        print(f"wrote the panel table into {args.report}")
    for title, reason in MAY_BE_EMPTY.items():
        print(f"allowed to be empty: `{title}`: {reason}")
    if problems:
        print(f"\nFAILED: {len(problems)} problems")
        for problem in problems:
            print(f"- {problem}")
        return 1
    print(f"\nOK: {len(rows)} queries of {len(panels_of(dashboard))} panels, metrics lint-clean")
    return 0


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started: list = []
    with tempfile.TemporaryDirectory(prefix="t2i-ops-") as folder:
        try:
            return run(args, Path(folder), started)
        except CheckFailed as err:
            print(f"FAILED: {err}", file=sys.stderr)
            return 1
        finally:
            for process in reversed(started):
                try:
                    process.stop()
                except Exception as err:  # keep stopping the others
                    print(f"stopping {type(process).__name__}: {err}", file=sys.stderr)
            stop_children()


if __name__ == "__main__":
    sys.exit(main())
