"""Files that must never look finished before they are: atomic writes, sidecars, hashes, ONNX file helpers, descriptor moves."""
