"""Helpers shared by the trainer's modules: the stage CLI conventions (stage_cli), the CLIP vocabulary
(clip_vocab) and where the repository is (paths)."""
