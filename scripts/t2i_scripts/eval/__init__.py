"""The feedback loop of issue #5 measured through the service: finetune_loop, heldout_eval,
simulate_raters, sample_train_set, and console_prompts (the rating page's prompt list)."""
