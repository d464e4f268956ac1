"""The RustSec advisories `make audit` checks our lock files against, kept in the repository.

This machine (and CI) reach crates.io but not GitHub, where cargo-audit fetches the RustSec advisory database
from. So a snapshot of that database is committed under audit/advisory-db: the advisories of every crate our
lock files name (an advisory for a crate we do not use cannot match), plus audit/crates.txt, the crate names
the snapshot was taken for, and audit/SNAPSHOT, the database commit it came from.

    python -m t2i_scripts.ops.advisories refresh --from /path/to/advisory-db  # a clone or bare git dir
    python -m t2i_scripts.ops.advisories check  # exit 1: a lock file names a crate the snapshot lacks
    python -m t2i_scripts.ops.advisories audit --cargo-audit .tools/bin/cargo-audit  # check, then cargo audit

`check` keeps the snapshot honest: a new dependency fails `make audit` until the snapshot is refreshed.
`audit` runs cargo-audit offline on each lock file; an advisory is ignored only where IGNORED says why, and
only while `cargo tree` confirms that the crate is not built.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from t2i_scripts.server import ROOT

AUDIT = ROOT / "audit"
DATABASE = AUDIT / "advisory-db"
CRATES = AUDIT / "crates.txt"
SNAPSHOT = AUDIT / "SNAPSHOT"
LOCKS = [ROOT / "Cargo.lock", ROOT / "fuzz" / "Cargo.lock"]
# Advisories about crates that a lock file lists but no build compiles: Cargo.lock records the optional
# dependencies of every feature a dependency declares, compiled or not. Each holds only while `cargo tree -i`
# finds no path to the crate (checked on every run).
IGNORED = {
    "RUSTSEC-2023-0071": (
        "rsa",
        "in the lock files through sqlx's MySQL driver, which this build does not enable "
        "(SQLite and Postgres only)",
    ),
}


def locked_crates() -> set[str]:
    names: set[str] = set()
    for lock in LOCKS:
        if lock.is_file():
            names.update(package["name"] for package in tomllib.loads(lock.read_text())["package"])
    return names


def git(source: Path, *args: str) -> str:
    folder = source / ".git" if (source / ".git").exists() else source
    return subprocess.run(
        ["git", "--git-dir", str(folder), *args], check=True, capture_output=True, text=True
    ).stdout


def refresh(source: Path) -> int:
    commit, date = git(source, "log", "-1", "--format=%H %cI", "HEAD").split()
    files = git(source, "ls-tree", "-r", "--name-only", "HEAD").split()
    names = locked_crates()
    chosen = [path for path in files if path.startswith("crates/") and path.count("/") == 2]
    chosen = [path for path in chosen if path.split("/")[1] in names and path.endswith(".md")]
    if DATABASE.exists():
        shutil.rmtree(DATABASE)
    for path in chosen:
        target = DATABASE / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(git(source, "show", f"HEAD:{path}"))
    # The database's licence travels with the copy.
    (DATABASE / "LICENSE.txt").write_text(git(source, "show", "HEAD:LICENSE.txt"))
    CRATES.write_text("".join(f"{name}\n" for name in sorted(names)))
    SNAPSHOT.write_text(f"https://github.com/rustsec/advisory-db commit {commit} ({date})\n")
    crates_hit = len({path.split("/")[1] for path in chosen})
    print(
        f"{len(chosen)} advisories of {crates_hit} crates, for {len(names)} locked crates; from {commit[:12]}"
    )
    return 0


def check() -> int:
    covered = set(CRATES.read_text().split()) if CRATES.is_file() else set()
    missing = sorted(locked_crates() - covered)
    if missing:
        shown = ", ".join(missing[:20]) + (", …" if len(missing) > 20 else "")
        print(
            f"{len(missing)} locked crates are not covered by the advisory snapshot ({shown}): "
            "run `python -m t2i_scripts.ops.advisories refresh --from <advisory-db>`"
        )
        return 1
    print(f"advisory snapshot covers all {len(covered)} locked crates: {SNAPSHOT.read_text().strip()}")
    return 0


def built(crate: str, manifest: Path) -> bool:
    """Whether any build of `manifest`'s workspace (any target, any dependency kind) compiles `crate`."""
    result = subprocess.run(
        [
            "cargo",
            "tree",
            "--locked",
            "--manifest-path",
            str(manifest),
            "--target",
            "all",
            "-e",
            "all",
            "-i",
            crate,
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0 and "did not match any packages" in result.stderr:
        return False
    if result.returncode != 0:
        raise SystemExit(f"cargo tree failed for {manifest}: {result.stderr.strip()}")
    return bool(result.stdout.strip())


def audit(tool: Path) -> int:
    if check():
        return 1
    failed = 0
    for lock in LOCKS:
        if not lock.is_file():
            continue
        ignores: list[str] = []
        for advisory, (crate, why) in IGNORED.items():
            if built(crate, lock.parent / "Cargo.toml"):
                print(f"{advisory} can no longer be ignored: {crate} is built now ({lock.relative_to(ROOT)})")
                return 1
            print(
                f"ignoring {advisory} ({crate}): {why}; `cargo tree -i {crate}` finds no path to it",
                flush=True,
            )
            ignores += ["--ignore", advisory]
        command = [str(tool), "audit", "--db", str(DATABASE), "--no-fetch", "--stale", "--file", str(lock)]
        print("$", " ".join(command + ignores), flush=True)
        failed |= subprocess.run(command + ignores).returncode
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    refreshing = commands.add_parser("refresh", help="rewrite audit/ from an advisory-db checkout")
    refreshing.add_argument("--from", dest="source", type=Path, required=True)
    commands.add_parser("check", help="exit 1 when a locked crate is not covered")
    auditing = commands.add_parser("audit", help="check, then run cargo-audit offline on every lock file")
    auditing.add_argument(
        "--cargo-audit", dest="tool", type=Path, default=ROOT / ".tools" / "bin" / "cargo-audit"
    )
    args = parser.parse_args()
    if args.command == "refresh":
        return refresh(args.source)
    if args.command == "audit":
        return audit(args.tool)
    return check()


if __name__ == "__main__":
    sys.exit(main())
