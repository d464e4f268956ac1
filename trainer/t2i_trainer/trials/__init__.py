"""Fine-tune trials (issue #5), cheap stand-ins for whole jobs, run outside the service: finetune_trials,
and the diagnostics behind trials r to v (vae_round_trip, sample_train_latents)."""
