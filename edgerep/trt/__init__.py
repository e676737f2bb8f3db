"""TensorRT work that needs no GPU and no `tensorrt` package: version facts, ONNX lint, host-side
calibration written as a TensorRT cache, Q/DQ models in TensorRT's conventions, sidecar guards and
device bundles. Every module here imports only numpy/onnx/onnxruntime (inside functions), never tensorrt.

The facts (which call exists in which TensorRT version, the parser's operator lists, the cache format)
come from NVIDIA's sources as collected in edgerep/trt_data/*.json and cited in each module.
"""
