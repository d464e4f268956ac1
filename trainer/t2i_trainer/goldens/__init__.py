"""The golden files the Rust tests compare against: make_goldens (tokenizer, schedulers, the tiny
pipeline) and reward_goldens (the reward models' scores)."""
