"""Where the trainer's sources and the repository around them are: the default paths of models/ and build/."""

from pathlib import Path

# trainer/, the folder holding the t2i_trainer package (what the service puts on PYTHONPATH).
TRAINER_DIR = Path(__file__).resolve().parents[2]
REPO_ROOT = TRAINER_DIR.parent
