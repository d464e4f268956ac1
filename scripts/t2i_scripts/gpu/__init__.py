"""Checks on a lent GPU machine: transport carries the bundle they need (ONNX Runtime for CUDA, the release
binary, the ONNX models and Optimum's wheels) there in pieces small enough for one call each."""
