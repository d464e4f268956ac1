"""The GPU bundle's transport: parts packed, received and assembled intact, a corrupt or missing part named,
models slimmed away and restored byte for byte, and the travel size counting what a remote call copies."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from t2i_scripts.gpu import transport

PART_BYTES = 4096


def synthetic_bundle(root: Path) -> Path:
    """A bundle laid out like pack's, small and mostly incompressible so that it spans several parts."""
    src = root / "bundle"
    capi = src / "ort" / "onnxruntime" / "capi"
    capi.mkdir(parents=True)
    (capi / f"libonnxruntime.so.{transport.ORT_VERSION}").write_bytes(os.urandom(6000))
    (src / "bin").mkdir()
    (src / "bin" / "t2i-align").write_bytes(b"#!/bin/sh\necho t2i-align\n")
    (src / "bin" / "t2i-align").chmod(0o755)
    (src / "models" / "tiny" / "unet").mkdir(parents=True)
    (src / "models" / "tiny" / "unet" / "model.onnx").write_bytes(os.urandom(9000))
    (src / "models" / "tiny" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}\n')
    (src / "wheels").mkdir()
    return src


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fake_python(root: Path) -> Path:
    """A python3 whose pip only records its arguments; anything else runs the real interpreter."""
    script = root / "python3"
    script.write_text(f'#!/bin/sh\nif [ "$1" = "-m" ]; then echo "$@" > {root}/pip.log; exit 0; fi\n')
    script.write_text(script.read_text() + f'exec {sys.executable} "$@"\n')
    script.chmod(0o755)
    return script


@pytest.fixture
def packed(tmp_path):
    src = synthetic_bundle(tmp_path)
    out = tmp_path / "out"
    manifest = transport.pack_directory(src, out, PART_BYTES, wheels=["example-1.0-py3-none-any.whl"])
    return src, out, manifest


def test_parts_round_trip_through_receive_and_assemble(packed, tmp_path, capsys):
    src, out, manifest = packed
    parts = manifest["parts"]
    assert len(parts) >= 3 and all(p["size"] <= PART_BYTES for p in parts)
    assert sum(p["size"] for p in parts) == manifest["stream"]["size"]
    assert sorted(f.name for f in out.iterdir()) == ["MANIFEST.json"] + [
        f"part-{i:02d}" for i in range(len(parts))
    ]
    assert (out / "part-01" / "MANIFEST.json").read_text() == (out / "MANIFEST.json").read_text()

    stage = tmp_path / "stage"
    for index, part in enumerate(parts):
        missing = transport.receive(out / part["folder"], stage)
        assert len(missing) == len(parts) - index - 1
    assert transport.receive(out / "part-00", stage) == []  # again: idempotent
    assert "received already" in capsys.readouterr().out

    python = fake_python(tmp_path)
    env = transport.assemble(stage, str(python))
    assert files_of(stage / "bundle") == files_of(src)
    assert os.access(stage / "bundle" / "bin" / "t2i-align", os.X_OK)
    assert not (tmp_path / "pip.log").exists()  # no wheels, no pip
    text = env.read_text()
    dylib = stage / "bundle" / "ort" / "onnxruntime" / "capi" / f"libonnxruntime.so.{transport.ORT_VERSION}"
    assert f"export ORT_DYLIB_PATH={dylib}\n" in text
    assert f"export PYTHONPATH={stage}/bundle/ort:{stage}/site\n" in text
    assert f"export T2I_GPU_BINARY={stage}/bundle/bin/t2i-align\n" in text
    assert f"export T2I_GPU_MODELS={stage}/bundle/models\n" in text
    sourced = subprocess.run(["sh", "-c", f". {env} && echo $ORT_DYLIB_PATH"], capture_output=True, text=True)
    assert Path(sourced.stdout.strip()) == dylib

    capsys.readouterr()
    transport.assemble(stage, str(python))
    assert "assembled already" in capsys.readouterr().out


def test_assemble_installs_the_wheels_with_the_given_python(tmp_path):
    src = synthetic_bundle(tmp_path)
    (src / "wheels" / "example-1.0-py3-none-any.whl").write_bytes(b"not really a wheel")
    out, stage = tmp_path / "out", tmp_path / "stage"
    manifest = transport.pack_directory(src, out, PART_BYTES)
    for part in manifest["parts"]:
        transport.receive(out / part["folder"], stage)
    transport.assemble(stage, str(fake_python(tmp_path)))
    pip = (tmp_path / "pip.log").read_text().split()
    assert pip[:4] == ["-m", "pip", "install", "-q"] and "--no-index" in pip and "--no-deps" in pip
    assert pip[pip.index("--target") + 1] == str(stage / "site")
    assert pip[-1] == str(stage / "bundle" / "wheels" / "example-1.0-py3-none-any.whl")


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_byte_fails_receive_naming_the_part(packed, tmp_path):
    _, out, manifest = packed
    part = manifest["parts"][1]
    flip_a_byte(out / part["folder"] / part["name"])
    with pytest.raises(
        SystemExit, match=rf"part {part['name']} .* is corrupt: sha256 expected {part['sha256']}"
    ):
        transport.receive(out / part["folder"], tmp_path / "stage")


def test_a_flipped_byte_in_the_stage_fails_assemble_naming_the_part(packed, tmp_path):
    _, out, manifest = packed
    stage = tmp_path / "stage"
    for part in manifest["parts"]:
        transport.receive(out / part["folder"], stage)
    part = manifest["parts"][-1]
    flip_a_byte(stage / "parts" / part["name"])
    with pytest.raises(
        SystemExit, match=rf"part {part['name']} .* expected {part['sha256']}, actual [0-9a-f]{{64}}"
    ):
        transport.assemble(stage, sys.executable)
    assert not (stage / "bundle").exists()


def test_a_missing_part_is_reported_and_stops_assemble(packed, tmp_path, capsys):
    _, out, manifest = packed
    stage = tmp_path / "stage"
    first, second, *rest = manifest["parts"]
    transport.receive(out / first["folder"], stage)
    missing = transport.receive(out / rest[0]["folder"], stage)
    assert [p["name"] for p in missing] == [second["name"]] + [p["name"] for p in rest[1:]]
    assert f"missing: {second['name']}" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=rf"missing part\(s\) {second['name']}"):
        transport.assemble(stage, sys.executable)
    with pytest.raises(SystemExit, match="no part was received"):
        transport.assemble(tmp_path / "empty", sys.executable)


def git(repo: Path, *args: str) -> str:
    command = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "repo"
    (repo / "models" / "a" / "unet").mkdir(parents=True)
    (repo / "models" / "b").mkdir(parents=True)
    (repo / "src").mkdir()
    (repo / "models" / "a" / "unet" / "model.onnx").write_bytes(os.urandom(300 * 1024))
    (repo / "models" / "b" / "huge.bin").write_bytes(os.urandom(600 * 1024))
    (repo / "models" / "a" / "config.json").write_text('{"small": true}\n')
    (repo / "models" / "edge.bin").write_bytes(os.urandom(transport.BIG_FILE))  # not larger: stays
    (repo / "src" / "big.rs").write_bytes(os.urandom(400 * 1024))  # not under models/: stays
    (repo / ".gitignore").write_text("/ignored/\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "files of various sizes")
    return repo


def test_slim_and_restore_round_trip_byte_for_byte(repo, tmp_path):
    before = files_of(repo / "models")
    stash = tmp_path / "stash"
    size_before = transport.travel_size(repo)
    entries = transport.slim(repo, stash)
    assert sorted(e["path"] for e in entries) == ["models/a/unet/model.onnx", "models/b/huge.bin"]
    assert (
        not (repo / "models" / "b" / "huge.bin").exists() and (stash / "models" / "b" / "huge.bin").is_file()
    )
    assert (repo / "models" / "edge.bin").is_file() and (repo / "models" / "a" / "config.json").is_file()
    assert transport.travel_size(repo) == size_before - 900 * 1024
    with pytest.raises(SystemExit, match="run `restore` first"):
        transport.slim(repo, stash)

    transport.restore(repo, stash)
    assert files_of(repo / "models") == before
    assert git(repo, "status", "--porcelain") == ""
    assert not stash.exists()
    with pytest.raises(SystemExit, match="nothing to restore"):
        transport.restore(repo, stash)


def test_restore_fails_loudly_when_a_file_changed(repo, tmp_path):
    stash = tmp_path / "stash"
    transport.slim(repo, stash)
    flip_a_byte(stash / "models" / "b" / "huge.bin")
    with pytest.raises(SystemExit, match=r"restored .*huge.bin differs: sha256 expected"):
        transport.restore(repo, stash)


def test_size_counts_tracked_and_untracked_files_that_are_not_ignored(repo, tmp_path, capsys):
    tracked = sum(p.stat().st_size for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts)
    assert transport.travel_size(repo) == tracked
    (repo / "untracked.txt").write_bytes(b"x" * 1000)
    (repo / "ignored").mkdir()
    (repo / "ignored" / "part").write_bytes(b"y" * 5000)
    (repo / "src" / "big.rs").unlink()  # a deleted tracked file does not travel
    assert transport.travel_size(repo) == tracked + 1000 - 400 * 1024

    out = tmp_path / "out"
    (out / "part-00").mkdir(parents=True)
    (out / "part-00" / "bundle.tar.xz.00").write_bytes(b"z" * 3000)
    assert transport.check_size(repo, out)
    assert "part-00, 0.0 MiB" in capsys.readouterr().out
    big = transport.CALL_LIMIT - transport.CALL_MARGIN - transport.travel_size(repo) + 1
    with (out / "part-00" / "bundle.tar.xz.00").open("wb") as f:
        f.truncate(big)
    assert not transport.check_size(repo, out)


def test_without_xz_on_path_the_lzma_module_compresses(tmp_path, monkeypatch):
    monkeypatch.setattr(transport.shutil, "which", lambda name: None)
    src = synthetic_bundle(tmp_path)
    out, stage = tmp_path / "out", tmp_path / "stage"
    for part in transport.pack_directory(src, out, PART_BYTES)["parts"]:
        transport.receive(out / part["folder"], stage)
    transport.assemble(stage, sys.executable)
    assert files_of(stage / "bundle") == files_of(src)
