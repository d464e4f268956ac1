"""A file's sha256, read in 1 MiB blocks: the LoRA adapter's record of its base weights and the graph
optimiser's record of the graphs it was made from both name files by it."""

import hashlib
from pathlib import Path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
