"""The default models and what they are made of: the shapes world and its rater, pretraining (train_sd,
train_reward), exports (export_sd, export_clip_reward, convert_fp16, build_test_model, onnx_contract) and the
`make models` pipeline (make_models, sample_rated, tune_defaults, report)."""
