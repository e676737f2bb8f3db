"""ONNX Runtime: the adapter (build, load), its runner, INT8 Q/DQ through onnxruntime.quantization, and the ISA weight policy."""
