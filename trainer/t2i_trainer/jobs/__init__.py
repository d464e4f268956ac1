"""The fine-tune job's child stages, one per file, each with its own CLI, run by the service
(src/jobs) as `<trainer-python> -m t2i_trainer.jobs.<stage>` with PYTHONPATH set to trainer/: finetune
(training and ONNX export), retrain_reward (the reward model on the job's ratings) and evaluate (the rater's
verdict on the evaluation images)."""
