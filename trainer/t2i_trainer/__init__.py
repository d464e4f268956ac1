"""t2i-align's trainer: the shapes world and its rater, pretraining and exports (build), the goldens the Rust
tests read (goldens), the fine-tune job's child stages (jobs), fine-tune trials (trials) and shared helpers
(common). Each module with a CLI runs as `python -m t2i_trainer.<package>.<module>`."""
