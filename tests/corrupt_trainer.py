"""A trainer stand-in for tests: writes a candidate whose UNet is damaged, as a crashed export or a bad disk
would leave it. The service must refuse it at registration and keep serving the active version.

Usage (as the server's --trainer-command): python tests/corrupt_trainer.py --spec FILE
"""

import json
import shutil
import sys
from pathlib import Path


def main() -> int:
    spec = json.loads(Path(sys.argv[sys.argv.index("--spec") + 1]).read_text())
    version = Path(spec["base"]).parent
    out = Path(spec["out"])
    shutil.copytree(version, out, ignore=shutil.ignore_patterns("diffusers"))
    (out / "unet" / "model.onnx").write_bytes(b"not an onnx graph")
    print(json.dumps({"event": "done", "out": str(out)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
