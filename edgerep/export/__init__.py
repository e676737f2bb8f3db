"""Torch to ONNX: export, simplify (onnxsim / onnxslim) and the numeric check of each stage against PyTorch."""
