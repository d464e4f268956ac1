"""`make test-cluster` (#25): three replicas, each with both roles, on one database and one object store,
as `make cluster` starts them. Every test runs twice: on Postgres + SeaweedFS, and embedded, on one SQLite
file and one local folder. The replicas run with a 4 s job lease, so a dead replica's job is reclaimed
within lease + poll (2 s) time.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import pytest

from t2i_scripts.cluster.cluster import LISTENER, Cluster, Replica, alive
from t2i_scripts.server import ROOT

LEASE_SECONDS = 4
POLL_SECONDS = 2
# Every replica requires keys (#28); the tests call with this bootstrap admin key.
ADMIN_KEY = "cluster-admin-key-0123456789abcdef"
KEY_REFRESH_SECONDS = 2


def job_spec(steps: int) -> dict:
    """A job small enough for tiny-sd; the gate is opened wide, since tiny-sd's rewards are luck."""
    return {
        "prompts": ["a red circle", "two blue squares"],
        "images_per_prompt": 2,
        "hyperparameters": {"steps": steps, "batch_size": 4, "learning_rate": 1e-4},
        "pretrain_data": {"kind": "shapes_world", "images": 8},
        "eval_prompts": ["a red circle", "three green stars"],
        "eval_images_per_prompt": 2,
        "gate": {
            "min_reward_gain": -1.0,
            "max_drop": {"quality": 1.0, "colour": 1.0, "background": 1.0, "shape": 1.0, "diversity": 1.0},
        },
        "activate_on_success": False,
    }


@pytest.fixture(scope="module", params=["postgres_s3", "embedded"])
def cluster(request, tmp_path_factory):
    binary = os.environ.get("T2I_BINARY", str(ROOT / "target" / "release" / "t2i-align"))
    if not Path(binary).is_file():
        pytest.fail(f"{binary} is missing: run `make build` (make test-cluster does)")
    folder = tmp_path_factory.mktemp(f"cluster-{request.param}")
    cluster = Cluster(
        folder,
        embedded=request.param == "embedded",
        ports=tuple(free for free in free_ports(3)),
        lease_seconds=LEASE_SECONDS,
        watch_parent=os.getpid(),
        binary=binary,
        extra_flags=["--job-checkpoint-every", "10", "--key-refresh", str(KEY_REFRESH_SECONDS)],
        admin_key=ADMIN_KEY,
    )
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()


def free_ports(count: int) -> list[int]:
    from t2i_scripts.cluster.cluster import free_port

    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def wait_for(what: str, check, timeout: float):
    deadline = time.time() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.2)


def job(replica: Replica, job_id: str) -> dict:
    return replica.get_json(f"/fine-tunes/{job_id}")


def events(replica: Replica, job_id: str) -> list[dict]:
    return replica.get_json(f"/fine-tunes/{job_id}/events?limit=1000")["data"]


def wait_final(replica: Replica, job_id: str, timeout: float = 300) -> dict:
    return wait_for(
        f"job {job_id} finishes",
        lambda: (found := job(replica, job_id))["status"] not in ("queued", "running") and found,
        timeout,
    )


def owner(cluster: Cluster, worker: str) -> Replica:
    """The replica whose process the job's worker name (host:pid:random) names."""
    pid = int(worker.split(":")[1])
    return next(replica for replica in cluster.replicas if replica.pid == pid)


def trainer_processes(job_id: str) -> list[int]:
    """Processes whose command line names the job (its trainer reads the job folder's spec)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if job_id.encode() in command and int(entry.name) != os.getpid() and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def test_an_image_generated_on_one_replica_is_fetched_from_another(cluster):
    first, second, third = cluster.replicas
    status, generated = first.post("/generate", {"prompt": "two blue squares", "steps": 2, "seed": 5})
    assert status == 200, generated
    image_id = generated["images"][0]["image_id"]
    for replica in (second, third):
        status, png = replica.get(f"/images/{image_id}")
        assert status == 200, png[:200]
        assert png == base64.b64decode(generated["images"][0]["png_base64"])


def test_a_rating_given_on_one_replica_is_exported_from_another(cluster):
    first, second, third = cluster.replicas
    status, generated = third.post("/generate", {"prompt": "a red circle", "steps": 2, "seed": 9})
    assert status == 200, generated
    image_id = generated["images"][0]["image_id"]
    status, rated = second.post("/feedback", {"image_id": image_id, "label": "good"})
    assert status == 201, rated
    status, export = first.get("/feedback/export?include_images=true")
    assert status == 200
    lines = [line for line in export.decode().splitlines() if f'"{rated["id"]}"' in line]
    assert len(lines) == 1, export[:500]
    assert '"image_base64":"' in lines[0].replace(" ", "")


def test_a_job_runs_on_whichever_replica_claims_it_and_its_version_rolls_out_to_all(cluster):
    first, second, third = cluster.replicas
    status, created = first.post("/fine-tunes", job_spec(3))
    assert status == 201, created
    done = wait_final(second, created["id"])
    assert done["status"] == "succeeded", done
    assert done["attempt"] == 1
    assert owner(cluster, done["worker"]) in cluster.replicas
    version = done["result_model"]
    if not cluster.embedded:
        # One replica's listening connection is cut first: it finds the rollout by polling.
        cut = cluster.sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            f"WHERE application_name = '{LISTENER}' AND pid = (SELECT min(pid) FROM pg_stat_activity "
            f"WHERE application_name = '{LISTENER}')"
        )
        assert cut == "1"
    started = time.time()
    status, activated = third.post(f"/models/{version}/activate")
    assert status == 200, activated

    def converged():
        rollout = first.get_json("/rollout")
        return rollout["version"] == version and rollout["converged"] and len(rollout["replicas"]) == 3

    wait_for(f"all three replicas serve {version}", converged, 10)
    print(f"rollout to 3 replicas: {time.time() - started:.1f} s")
    for replica in cluster.replicas:
        status, generated = replica.post("/generate", {"prompt": "a red circle", "steps": 2, "seed": 1})
        assert status == 200 and generated["model"] == version, generated
    # Back to the base for the next test.
    status, _ = first.post("/models/tiny-sd/activate")
    assert status == 200


def test_a_killed_replicas_job_is_reclaimed_resumes_from_its_checkpoint_and_registers_one_version(cluster):
    first = cluster.replicas[0]
    status, created = first.post("/fine-tunes", job_spec(300))
    assert status == 201, created
    job_id = created["id"]

    def stored_checkpoint() -> int | None:
        steps = [
            event["data"]["step"]
            for event in events(first, job_id)
            if event["kind"] == "checkpoint" and event["message"].startswith("checkpoint: step")
        ]
        return max(steps) if steps else None

    # Killed while its trainer runs, once a checkpoint is in the object store.
    wait_for("a checkpoint is stored", stored_checkpoint, 180)
    running = job(first, job_id)
    assert running["status"] == "running" and running["stage"] == "train", running
    assert trainer_processes(job_id), "the trainer runs"
    victim = owner(cluster, running["worker"])
    survivor = next(replica for replica in cluster.replicas if replica is not victim)
    cluster.kill_replica(victim.index)
    killed = time.time()
    stored = max(
        event["data"]["step"]
        for event in events(survivor, job_id)
        if event["kind"] == "checkpoint" and event["message"].startswith("checkpoint: step")
    )
    wait_for("the dead replica's trainer is gone", lambda: not trainer_processes(job_id), 10)
    reclaimed = wait_for(
        "another replica reclaims the job",
        lambda: (found := job(survivor, job_id))["attempt"] == 2 and found["status"] == "running" and found,
        LEASE_SECONDS + POLL_SECONDS + 4,
    )
    print(f"reclaimed {time.time() - killed:.1f} s after the kill (lease {LEASE_SECONDS} s)")
    assert owner(cluster, reclaimed["worker"]) is not victim
    done = wait_final(survivor, job_id)
    assert done["status"] == "succeeded", done
    resumed = [event for event in events(survivor, job_id) if event["message"].startswith("train: resuming")]
    assert len(resumed) == 1 and resumed[0]["data"]["step"] == stored, resumed
    versions = [model for model in survivor.get_json("/models")["data"] if model.get("job_id") == job_id]
    assert len(versions) == 1, versions
    assert versions[0]["id"] == done["result_model"]
    # The killed replica comes back, for the tests after this one.
    cluster.start_replica(victim.index)
    cluster.wait_ready(cluster.replicas[victim.index])


def test_a_key_made_on_one_replica_works_on_all_and_a_revocation_reaches_all(cluster):
    first, second, third = cluster.replicas[:3]
    status, made = first.post("/keys", {"name": "app", "tenant": "acme", "scopes": ["inference"]})
    assert status == 201, made
    secret = made["secret"]
    assert first.get("/models", key=secret)[0] == 200, "the replica that made it accepts it at once"

    def answers(replica, status):
        return lambda: replica.get("/models", key=secret)[0] == status

    for replica in (second, third):
        wait_for(f"{replica.url} accepts the new key", answers(replica, 200), 10)
    assert first.get("/keys", key=secret)[0] == 403, "an inference key is not an admin"
    status, body = second.delete(f"/keys/{made['id']}")
    assert status == 200, body
    revoked = time.time()
    assert second.get("/models", key=secret)[0] == 401, "the revoking replica refuses it at once"
    for replica in (first, third):
        wait_for(f"{replica.url} refuses the revoked key", answers(replica, 401), 10)
    # Within the reload period plus a request's time, on every replica.
    assert time.time() - revoked < KEY_REFRESH_SECONDS + 3
    status, body = third.get("/models", key=secret)
    assert b"was revoked" in body, body
    audit = json.loads(first.get("/audit")[1])["data"]
    assert [entry["action"] for entry in audit[:2]] == ["key.revoke", "key.create"], audit[:2]


def test_a_keys_rate_limit_holds_across_replicas(cluster):
    first, second, third = cluster.replicas[:3]
    # Start well inside a window (they are minutes of the clock), so that every request below falls in one.
    while time.time() % 60 > 35:
        time.sleep(1)
    body = {"name": "limited", "scopes": ["inference"], "rate_limit": {"requests_per_minute": 3}}
    status, made = first.post("/keys", body)
    assert status == 201, made
    # Every replica loads the new key within its reload period; no request is spent on finding out.
    time.sleep(KEY_REFRESH_SECONDS + 1)
    secret = made["secret"]
    answers = [replica.get("/models", key=secret)[0] for replica in (first, second, third, first, second)]
    assert answers == [200, 200, 200, 429, 429], answers
    status, body = third.get("/models", key=secret)
    assert status == 429 and b"requests_per_minute" in body, body
