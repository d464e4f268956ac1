"""Carrying the GPU check's bundle to the lent GPU machine, one piece per remote call.

Each call to the lent machine gets a copy of our working tree (tracked files, untracked files that git does
not ignore, and up to 8 ignored paths it is told to carry), 64 MiB at most in all; the machine has no internet
and no package registry, and what a call writes outside the tree (the stage, /tmp/t2i-gpu) lasts only while
the machine stays warm. So what the check needs travels as one xz-compressed tar cut into parts, each in an
ignored folder of its own that one call carries, and the committed models leave the tree for those calls:

    here:   python -m t2i_scripts.gpu.transport pack --out .gpu  # wheels, binary, models -> .gpu/part-NN/
    here:   python -m t2i_scripts.gpu.transport slim      # models' big files -> ../t2i-gpu-stash
    here:   python -m t2i_scripts.gpu.transport size      # exit 1: the tree + the largest part are too big
    remote, one call per part, carrying .gpu/part-NN:
            PYTHONPATH=scripts python3 -m t2i_scripts.gpu.transport receive .gpu/part-NN
    remote, after the last part arrived (in the same call):
            PYTHONPATH=scripts python3 -m t2i_scripts.gpu.transport assemble && . /tmp/t2i-gpu/env.sh
    here:   python -m t2i_scripts.gpu.transport restore   # models back; fails unless git sees them unchanged

The bundle holds ort/ (the onnxruntime-gpu wheel, extracted: importable through PYTHONPATH, and its
libonnxruntime.so serves the binary through ORT_DYLIB_PATH), wheels/ (Optimum's pipeline at
trainer/requirements.txt's pins, which assemble installs into <stage>/site), bin/t2i-align (stripped) and
models/<name>/ (ONNX, configs and tokenizers; no diffusers/ folder, no safetensors). Every part folder carries
MANIFEST.json, the sha256 of each part and of the whole stream: receive checks its part on arrival, assemble
checks them all again and the stream before it extracts. env.sh exports PYTHONPATH, ORT_DYLIB_PATH,
T2I_GPU_BINARY, T2I_GPU_MODELS and LD_LIBRARY_PATH (CUDA's libraries from the remote torch's nvidia wheels).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[3]
MIB = 1 << 20
CALL_LIMIT = 64 * MIB  # what one remote call carries: the tree plus the carried folders
CALL_MARGIN = 2 * MIB
BIG_FILE = 256 * 1024  # slim moves the files under models/ larger than this
STREAM = "bundle.tar.xz"
MANIFEST = "MANIFEST.json"
STASH_MANIFEST = "STASH.json"
ASSEMBLED = "ASSEMBLED"  # in the stage: the sha256 of the stream whose bundle, site and env.sh are complete
DEFAULT_STAGE = Path("/tmp/t2i-gpu")
DEFAULT_STASH = ROOT.parent / "t2i-gpu-stash"
DEFAULT_MODELS = (
    "models/shapes-sd",
    "models/tiny-sdxl",
    "models/tiny-lcm",
    "models/tiny-sd",
    "models/shapes-reward",  # best_of in the GPU check
)
ORT_VERSION = "1.31.1"
ORT_WHEEL = ("onnxruntime-gpu", ORT_VERSION)  # built for CUDA 13, like the remote's torch 2.11+cu130
# Optimum's pipeline at trainer/requirements.txt's pins. Their other requirements (filelock, fsspec, hf-xet,
# httpx, numpy, onnx, packaging, pillow, pyyaml, regex, requests, safetensors, tqdm, typing-extensions; torch
# for optimum) are on the remote already; diffusers and optimum import importlib_metadata only on Python<3.8.
# tokenizers 0.22.2, an abi3 wheel, is within transformers 4.57.6's tokenizers>=0.22.0,<=0.23.0.
WHEELS = (
    ("diffusers", "0.39.0"),
    ("optimum", "2.1.0"),
    ("optimum-onnx", "0.1.0"),
    ("transformers", "4.57.6"),
    ("huggingface-hub", "0.36.2"),
    ("tokenizers", "0.22.2"),
)
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
)
REMOTE = "PYTHONPATH=scripts python3 -m t2i_scripts.gpu.transport"


def fail(message: str) -> SystemExit:
    return SystemExit(f"transport: {message}")


def mib(size: int) -> str:
    return f"{size / MIB:.1f} MiB"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(MIB), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- pack: wheels, binary and models staged as one bundle, then compressed and cut into parts ------------


def wheel_file(wheels_dir: Path, name: str, version: str) -> Path | None:
    found = sorted(wheels_dir.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    return found[0] if found else None


def download_wheel(wheels_dir: Path, name: str, version: str, python: str) -> None:
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    command = [
        python,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        "3.12",
    ]
    command += ["--implementation", "cp", *platforms, "-d", str(wheels_dir), f"{name}=={version}"]
    print(f"transport: downloading {name}=={version} into {wheels_dir}", flush=True)
    if subprocess.run(command).returncode != 0:
        raise fail(f"pip could not download {name}=={version}")


def ensure_wheels(wheels_dir: Path, specs: Iterable[tuple[str, str]], python: str = "python3") -> list[Path]:
    """The wheel file of each (name, version), downloaded into wheels_dir when it is not there yet."""
    wheels_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, version in specs:
        if wheel_file(wheels_dir, name, version) is None:
            download_wheel(wheels_dir, name, version, python)
        path = wheel_file(wheels_dir, name, version)
        if path is None:
            raise fail(f"pip download of {name}=={version} left no wheel in {wheels_dir}")
        paths.append(path)
    return paths


def model_files(model: Path) -> list[Path]:
    """The files of a model folder that travel, relative to it: none under diffusers/ (PyTorch weights) or
    optimized/ (graphs made here by --optimize-graphs; the check runs the export's own), no safetensors."""
    files = []
    for path in sorted(model.rglob("*")):
        relative = path.relative_to(model)
        skipped = {"diffusers", "optimized"} & set(relative.parts[:-1])
        if path.is_file() and not skipped and path.suffix != ".safetensors":
            files.append(relative)
    return files


def check_models(models: Sequence[Path]) -> None:
    for model in models:
        if not model.is_dir():
            raise fail(f"no model folder {model}")
        if not any(path.suffix == ".onnx" for path in model_files(model)):
            raise fail(f"{model} has no .onnx file: are the models slimmed away? run `restore` first")


def copy_stripped(binary: Path, dest: Path) -> None:
    if not binary.is_file():
        raise fail(f"no binary at {binary}: build it with `cargo build --release`, or pass --binary")
    strip = shutil.which("strip")
    if strip is None:
        raise fail("`strip` is not on PATH (binutils)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(binary, dest)
    subprocess.run([strip, str(dest)], check=True)


def stage_bundle(stage: Path, ort_wheel: Path, wheels: Sequence[Path], binary: Path, models: Sequence[Path]):
    """Lays out the bundle: ort/ (extracted), wheels/, bin/t2i-align and models/<name>/."""
    with zipfile.ZipFile(ort_wheel) as archive:
        archive.extractall(stage / "ort")
    # The TensorRT provider is never asked for; the machine has no TensorRT for it to load.
    for unused in (stage / "ort").rglob("libonnxruntime_providers_tensorrt.so"):
        unused.unlink()
    (stage / "wheels").mkdir(parents=True)
    for wheel in wheels:
        shutil.copy2(wheel, stage / "wheels" / wheel.name)
    copy_stripped(binary, stage / "bin" / "t2i-align")
    for model in models:
        for relative in model_files(model):
            dest = stage / "models" / model.name / relative
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(model / relative, dest)


def normalized(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Entries without owner or time, so that the same bundle packs to the same bytes."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def write_tar(src: Path, fileobj: IO[bytes]) -> None:
    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for child in sorted(src.iterdir()):
            tar.add(child, arcname=child.name, filter=normalized)


def compress(src: Path, dest: Path) -> None:
    """src's tree as one tar stream, xz-compressed at preset 6 (xz -T2 when it is on PATH) into dest."""
    xz = shutil.which("xz")
    with dest.open("wb") as out:
        if xz is None:
            with lzma.open(out, "wb", preset=6) as stream:
                write_tar(src, stream)
            return
        proc = subprocess.Popen([xz, "-T2", "-6", "-c"], stdin=subprocess.PIPE, stdout=out)
        try:
            write_tar(src, proc.stdin)
        finally:
            proc.stdin.close()
            code = proc.wait()
    if code != 0:
        raise fail(f"xz exited with {code}")


def split_stream(stream: Path, out: Path, part_bytes: int) -> list[dict]:
    """Cuts stream into out/part-NN/bundle.tar.xz.NN of at most part_bytes each."""
    parts: list[dict] = []
    with stream.open("rb") as f:
        while chunk := f.read(part_bytes):
            index = len(parts)
            folder = out / f"part-{index:02d}"
            name = f"{STREAM}.{index:02d}"
            folder.mkdir(parents=True)
            (folder / name).write_bytes(chunk)
            sha = hashlib.sha256(chunk).hexdigest()
            parts.append(
                {"index": index, "folder": folder.name, "name": name, "size": len(chunk), "sha256": sha}
            )
    return parts


def clear_out(out: Path) -> None:
    for folder in out.glob("part-*"):
        shutil.rmtree(folder)
    (out / MANIFEST).unlink(missing_ok=True)


def write_manifest(out: Path, manifest: dict) -> None:
    text = json.dumps(manifest, indent=1) + "\n"
    (out / MANIFEST).write_text(text)
    for part in manifest["parts"]:
        (out / part["folder"] / MANIFEST).write_text(text)


def pack_directory(src: Path, out: Path, part_bytes: int, wheels: Sequence[str] = ()) -> dict:
    """Packs the staged bundle src into out's part folders and writes the manifest; returns it."""
    if part_bytes <= 0:
        raise fail(f"a part must hold at least one byte, not {part_bytes}")
    out.mkdir(parents=True, exist_ok=True)
    clear_out(out)
    with tempfile.TemporaryDirectory(prefix="t2i-gpu-pack-") as tmp:
        stream = Path(tmp) / STREAM
        compress(src, stream)
        whole = {"name": STREAM, "size": stream.stat().st_size, "sha256": sha256_file(stream)}
        parts = split_stream(stream, out, part_bytes)
    manifest = {
        "format": 1,
        "stream": whole,
        "part_bytes": part_bytes,
        "parts": parts,
        "wheels": list(wheels),
    }
    write_manifest(out, manifest)
    return manifest


def shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def print_plan(manifest: dict, out: Path) -> None:
    stream, parts = manifest["stream"], manifest["parts"]
    print(f"transport: {STREAM} is {mib(stream['size'])} in {len(parts)} parts (sha256 {stream['sha256']})")
    largest = 0
    for part in parts:
        folder = out / part["folder"]
        size = folder_size(folder)
        largest = max(largest, size)
        print(f"  {shown(folder)}  {mib(size)}")
    tree = travel_size(ROOT)
    slim_tree = tree - sum(size for _, size in slim_candidates(ROOT))
    print(f"transport: the tree travels at {mib(tree)} now, {mib(slim_tree)} after `slim`; a call carries")
    print(f"  {mib(slim_tree + largest)} of {mib(CALL_LIMIT)} (with margin: {mib(CALL_LIMIT - CALL_MARGIN)})")
    print(f"transport: plan: `slim`, then {len(parts)} remote calls, call N carrying {shown(out)}/part-NN:")
    print(f"  {REMOTE} receive {shown(out)}/part-NN")
    print(f"and in the last one also: {REMOTE} assemble && . {DEFAULT_STAGE}/env.sh; then `restore`")


def default_binary() -> Path:
    target = os.environ.get("CARGO_TARGET_DIR")
    return (ROOT / target if target else ROOT / "target") / "release" / "t2i-align"


def pack(
    out: Path, part_bytes: int, binary: Path, wheels_dir: Path, models: Sequence[Path], python: str
) -> dict:
    check_models(models)
    ort, *others = ensure_wheels(wheels_dir, (ORT_WHEEL, *WHEELS), python)
    with tempfile.TemporaryDirectory(prefix="t2i-gpu-stage-") as tmp:
        stage = Path(tmp) / "bundle"
        stage_bundle(stage, ort, others, binary, models)
        print(f"transport: staged {mib(folder_size(stage))}; compressing", flush=True)
        manifest = pack_directory(stage, out, part_bytes, wheels=[ort.name] + [w.name for w in others])
    print_plan(manifest, out)
    return manifest


# --- receive and assemble, on the remote ------------------------------------------------------------------


def read_manifest(path: Path, missing: str) -> dict:
    if not path.is_file():
        raise fail(missing)
    return json.loads(path.read_text())


def verify_part(path: Path, part: dict) -> None:
    if not path.is_file():
        raise fail(f"part {part['name']} is missing: no {path}")
    actual = sha256_file(path)
    if actual != part["sha256"]:
        raise fail(
            f"part {part['name']} ({path}) is corrupt: sha256 expected {part['sha256']}, actual {actual}"
        )


def adopt_manifest(stage: Path, manifest: dict) -> None:
    """Makes manifest the stage's, dropping the parts of another bundle received before."""
    current = stage / MANIFEST
    if current.is_file() and json.loads(current.read_text())["stream"] != manifest["stream"]:
        print(f"transport: {stage} held parts of another bundle; dropping them")
        shutil.rmtree(stage / "parts", ignore_errors=True)
    (stage / "parts").mkdir(parents=True, exist_ok=True)
    current.write_text(json.dumps(manifest, indent=1) + "\n")


def copy_part(src: Path, stage: Path, part: dict) -> None:
    dest = stage / "parts" / part["name"]
    if dest.is_file() and sha256_file(dest) == part["sha256"]:
        print(f"transport: part {part['name']} was received already")
        return
    partial = dest.with_name(dest.name + ".partial")
    shutil.copyfile(src, partial)
    verify_part(partial, part)
    os.replace(partial, dest)
    print(f"transport: received part {part['name']} ({mib(part['size'])})")


def report_parts(stage: Path, manifest: dict) -> list[dict]:
    """Prints which parts the stage holds and which it lacks; returns those it lacks."""
    parts = manifest["parts"]
    present = [p for p in parts if (stage / "parts" / p["name"]).is_file()]
    missing = [p for p in parts if p not in present]
    names = ", ".join(p["name"] for p in present) or "none"
    print(f"transport: {len(present)} of {len(parts)} parts in {stage}: {names}")
    if missing:
        print(f"transport: missing: {', '.join(p['name'] for p in missing)}")
    return missing


def receive(part_dir: Path, stage: Path) -> list[dict]:
    """Verifies the part(s) that part_dir carries, copies them into the stage; returns the parts missing."""
    manifest = read_manifest(part_dir / MANIFEST, f"{part_dir} carries no {MANIFEST}")
    arrived = [p for p in manifest["parts"] if (part_dir / p["name"]).is_file()]
    if not arrived:
        raise fail(f"{part_dir} holds none of the parts its {MANIFEST} names")
    for part in arrived:
        verify_part(part_dir / part["name"], part)
    adopt_manifest(stage, manifest)
    for part in arrived:
        copy_part(part_dir / part["name"], stage, part)
    return report_parts(stage, manifest)


def verify_parts(stage: Path, manifest: dict) -> None:
    missing = [p["name"] for p in manifest["parts"] if not (stage / "parts" / p["name"]).is_file()]
    if missing:
        raise fail(f"missing part(s) {', '.join(missing)} in {stage / 'parts'}: receive them first")
    for part in manifest["parts"]:
        verify_part(stage / "parts" / part["name"], part)


def concatenate(stage: Path, manifest: dict) -> Path:
    stream = stage / STREAM
    digest = hashlib.sha256()
    with stream.open("wb") as out:
        for part in manifest["parts"]:
            data = (stage / "parts" / part["name"]).read_bytes()
            digest.update(data)
            out.write(data)
    expected = manifest["stream"]["sha256"]
    if digest.hexdigest() != expected:
        raise fail(f"the joined {STREAM} is corrupt: sha256 expected {expected}, actual {digest.hexdigest()}")
    return stream


def extract(stream: Path, bundle: Path) -> None:
    partial = bundle.with_name(bundle.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with tarfile.open(stream, "r:xz") as tar:
        tar.extractall(partial, filter="data")
    shutil.rmtree(bundle, ignore_errors=True)
    partial.rename(bundle)


def install_wheels(stage: Path, python: str) -> None:
    wheels = sorted((stage / "bundle" / "wheels").glob("*.whl"))
    site = stage / "site"
    shutil.rmtree(site, ignore_errors=True)
    if not wheels:
        return
    command = [
        python,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--no-deps",
        "--no-compile",
        "--no-cache-dir",
    ]
    command += ["--target", str(site), *map(str, wheels)]
    print(f"transport: installing {len(wheels)} wheels into {site}", flush=True)
    quiet = {**os.environ, "PIP_ROOT_USER_ACTION": "ignore", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    if subprocess.run(command, env=quiet).returncode != 0:
        raise fail(f"`{shlex.join(command)}` failed")


# Every `lib` folder under nvidia/ in python's site-packages: the cu13 wheels keep most libraries in
# nvidia/cu13/lib, others (cuDNN, cuRAND) in nvidia/<name>/lib, and layouts differ between releases.
NVIDIA_LIBS = """
import glob, os, site
for root in site.getsitepackages() + [site.getusersitepackages()]:
    for path in sorted(glob.glob(os.path.join(root, "nvidia", "**", "lib"), recursive=True)):
        if any(name.endswith(".so") or ".so." in name for name in os.listdir(path)):
            print(path)
"""


def nvidia_lib_dirs(python: str) -> list[str]:
    """The nvidia/*/lib folders of python's site-packages (CUDA's libraries from torch's nvidia wheels)."""
    result = subprocess.run([python, "-c", NVIDIA_LIBS], capture_output=True, text=True)
    if result.returncode != 0:
        print(f"transport: could not list {python}'s nvidia libraries: {result.stderr.strip()}")
        return []
    return list(dict.fromkeys(line for line in result.stdout.splitlines() if line))


def write_env(stage: Path, lib_dirs: Sequence[str]) -> Path:
    bundle = stage / "bundle"
    quoted = {
        "PYTHONPATH": f"{bundle / 'ort'}:{stage / 'site'}",
        "ORT_DYLIB_PATH": str(bundle / "ort" / "onnxruntime" / "capi" / f"libonnxruntime.so.{ORT_VERSION}"),
        "T2I_GPU_BINARY": str(bundle / "bin" / "t2i-align"),
        "T2I_GPU_MODELS": str(bundle / "models"),
    }
    lines = [f"# Written by `python -m t2i_scripts.gpu.transport assemble`: . {stage / 'env.sh'}"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in quoted.items()]
    if lib_dirs:
        joined = shlex.quote(":".join(lib_dirs))
        lines.append(f"export LD_LIBRARY_PATH={joined}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}")
    else:
        lines.append(
            "# no nvidia/*/lib folder under python3's site-packages: LD_LIBRARY_PATH is left as it was"
        )
    env = stage / "env.sh"
    env.write_text("\n".join(lines) + "\n")
    return env


def report_missing_libraries(stage: Path, lib_dirs: Sequence[str]) -> list[str]:
    """The CUDA provider's shared libraries that `ldd` cannot find with env.sh's LD_LIBRARY_PATH, printed as
    a warning: the provider fails to register without them (libcuda.so.1 comes with a GPU's driver, so on a
    machine without one it is always missing)."""
    provider = stage / "bundle" / "ort" / "onnxruntime" / "capi" / "libonnxruntime_providers_cuda.so"
    if not provider.is_file() or shutil.which("ldd") is None:
        return []
    paths = [*lib_dirs, os.environ.get("LD_LIBRARY_PATH", "")]
    env = {**os.environ, "LD_LIBRARY_PATH": ":".join(path for path in paths if path)}
    result = subprocess.run(["ldd", str(provider)], capture_output=True, text=True, env=env)
    missing = [line.split()[0] for line in result.stdout.splitlines() if "not found" in line]
    if missing:
        names = ", ".join(missing)
        print(f"transport: warning: the CUDA provider's libraries not found: {names}", flush=True)
    else:
        print("transport: every library the CUDA provider needs was found", flush=True)
    return missing


def assembled(stage: Path, sha: str) -> bool:
    marker = stage / ASSEMBLED
    return marker.is_file() and marker.read_text().strip() == sha and (stage / "env.sh").is_file()


def assemble(stage: Path, python: str = "python3") -> Path:
    """Verifies, joins and extracts the received parts, installs the wheels and writes env.sh (returned)."""
    manifest = read_manifest(stage / MANIFEST, f"no part was received into {stage} yet: run receive first")
    sha = manifest["stream"]["sha256"]
    if assembled(stage, sha):
        print(f"transport: {stage / 'bundle'} is assembled already ({sha[:12]})")
        return stage / "env.sh"
    (stage / ASSEMBLED).unlink(missing_ok=True)
    verify_parts(stage, manifest)
    stream = concatenate(stage, manifest)
    extract(stream, stage / "bundle")
    stream.unlink()
    install_wheels(stage, python)
    lib_dirs = nvidia_lib_dirs(python)
    env = write_env(stage, lib_dirs)
    report_missing_libraries(stage, lib_dirs)
    (stage / ASSEMBLED).write_text(sha + "\n")
    print(f"transport: assembled {stage / 'bundle'}; now: . {env}")
    return env


# --- slim, restore and size: what the tree weighs when it travels -----------------------------------------


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise fail(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def git_paths(repo: Path, *args: str) -> list[str]:
    return list(dict.fromkeys(path for path in git(repo, "ls-files", "-z", *args).split("\0") if path))


def travel_size(repo: Path) -> int:
    """The bytes of the tree that a remote call copies: tracked and untracked-not-ignored files on disk."""
    total = 0
    for relative in git_paths(repo, "-co", "--exclude-standard"):
        path = repo / relative
        if path.is_symlink() or path.is_file():
            total += path.lstat().st_size
    return total


def folder_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def largest_part(out: Path) -> tuple[Path | None, int]:
    sizes = [(folder, folder_size(folder)) for folder in sorted(out.glob("part-*")) if folder.is_dir()]
    return max(sizes, key=lambda item: item[1], default=(None, 0))


def slim_candidates(repo: Path, folder: str = "models") -> list[tuple[str, int]]:
    """The tracked files under folder larger than BIG_FILE, as (path relative to repo, size)."""
    found = []
    for relative in git_paths(repo, "-c", "--", folder):
        path = repo / relative
        if path.is_file() and not path.is_symlink() and path.stat().st_size > BIG_FILE:
            found.append((relative, path.stat().st_size))
    return found


def print_travel_size(repo: Path) -> None:
    print(f"transport: the tree that travels is {mib(travel_size(repo))}")


def slim(repo: Path, stash: Path, folder: str = "models") -> list[dict]:
    """Moves the big tracked files under folder into stash (same relative paths) beside STASH.json."""
    if stash.exists():
        raise fail(f"{stash} exists: a previous slim was not restored; run `restore` first")
    files = slim_candidates(repo, folder)
    entries = [{"path": rel, "size": size, "sha256": sha256_file(repo / rel)} for rel, size in files]
    stash.mkdir(parents=True)
    manifest = {"repo": str(repo), "folder": folder, "files": entries}
    (stash / STASH_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    for entry in entries:
        dest = stash / entry["path"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(repo / entry["path"], dest)
    moved = sum(entry["size"] for entry in entries)
    print(f"transport: moved {len(entries)} files ({mib(moved)}) from {folder}/ to {stash}")
    print_travel_size(repo)
    return entries


def restore_file(repo: Path, stash: Path, entry: dict) -> None:
    src, dest = stash / entry["path"], repo / entry["path"]
    if dest.is_file() and sha256_file(dest) == entry["sha256"]:
        src.unlink(missing_ok=True)  # back already, or a copy left by an interrupted move
        return
    if not src.is_file():
        raise fail(f"{entry['path']} is neither in {stash} nor intact in the tree")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(src, dest)
    actual = sha256_file(dest)
    if actual != entry["sha256"]:
        raise fail(f"restored {dest} differs: sha256 expected {entry['sha256']}, actual {actual}")


def restore(repo: Path, stash: Path) -> None:
    """Moves the stashed files back, checks that git sees the folder unchanged, and removes the stash."""
    manifest = read_manifest(stash / STASH_MANIFEST, f"nothing to restore: no {stash / STASH_MANIFEST}")
    for entry in manifest["files"]:
        restore_file(repo, stash, entry)
    folder = manifest.get("folder", "models")
    if subprocess.run(["git", "-C", str(repo), "diff", "--quiet", "--", folder]).returncode != 0:
        raise fail(f"restored, but `git diff -- {folder}` is not clean: see `git status`; kept {stash}")
    shutil.rmtree(stash)
    print(f"transport: restored {len(manifest['files'])} files into {folder}/; git sees no change")
    print_travel_size(repo)


def check_size(repo: Path, out: Path) -> bool:
    """Prints the tree's travel size and the largest part folder's; True when one call can carry both."""
    tree = travel_size(repo)
    folder, part = largest_part(out)
    limit = CALL_LIMIT - CALL_MARGIN
    print(f"transport: the tree that travels is {mib(tree)}")
    print(f"transport: the largest part folder is {shown(folder) if folder else '(none)'}, {mib(part)}")
    print(
        f"transport: one call carries {mib(tree + part)} of at most {mib(limit)} ({mib(CALL_MARGIN)} margin)"
    )
    return tree + part <= limit


# --- command line -----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m t2i_scripts.gpu.transport", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("pack", help="stage the bundle, compress it and cut it into part folders")
    p.add_argument("--out", type=Path, default=ROOT / ".gpu")
    p.add_argument("--part-mib", type=float, default=48)
    p.add_argument("--binary", type=Path, default=default_binary())
    p.add_argument("--wheels-dir", type=Path, default=ROOT / ".gpu-cache" / "wheels")
    p.add_argument(
        "--models", default=",".join(str(ROOT / m) for m in DEFAULT_MODELS), help="comma-separated"
    )
    p.add_argument("--python", default="python3", help="the Python whose pip downloads the wheels")

    p = commands.add_parser("receive", help="(remote) verify a part folder and copy its part into the stage")
    p.add_argument("part_dir", type=Path)
    p.add_argument("--stage", type=Path, default=DEFAULT_STAGE)

    p = commands.add_parser(
        "assemble", help="(remote) verify and join the parts, extract, install, write env.sh"
    )
    p.add_argument("--stage", type=Path, default=DEFAULT_STAGE)
    p.add_argument("--python", default="python3", help="the Python whose pip installs the wheels")

    for name, text in (("slim", "move models/' big files to the stash"), ("restore", "move them back")):
        p = commands.add_parser(name, help=text)
        p.add_argument("--stash", type=Path, default=DEFAULT_STASH)
        p.add_argument("--repo", type=Path, default=ROOT)

    p = commands.add_parser(
        "size", help="exit 1 when the tree plus the largest part is over one call's limit"
    )
    p.add_argument("--out", type=Path, default=ROOT / ".gpu")
    p.add_argument("--repo", type=Path, default=ROOT)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.command == "pack":
        models = [Path(m) for m in args.models.split(",") if m]
        pack(args.out, int(args.part_mib * MIB), args.binary, args.wheels_dir, models, args.python)
    elif args.command == "receive":
        receive(args.part_dir, args.stage)
    elif args.command == "assemble":
        assemble(args.stage, args.python)
    elif args.command == "slim":
        slim(args.repo.resolve(), args.stash.resolve())
    elif args.command == "restore":
        restore(args.repo.resolve(), args.stash.resolve())
    elif args.command == "size" and not check_size(args.repo.resolve(), args.out):
        raise fail(
            "one call cannot carry the tree and the largest part: `slim`, or pack with a smaller --part-mib"
        )


if __name__ == "__main__":
    sys.exit(main())
