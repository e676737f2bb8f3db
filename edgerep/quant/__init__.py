"""INT8 that does not hurt: per-layer sensitivity, range statistics, and accuracy-budgeted mixed precision.

  layers.py       weighted ONNX nodes and the PyTorch modules they came from
  qdq.py          ONNX Runtime Q/DQ variants of one model from one calibration (the backends' placements)
  sensitivity.py  each layer alone in float / alone quantized; a calibration study
  ranges.py       weight and activation range statistics per layer, outliers flagged
  mixed.py        the --max-drop search (every candidate a real engine), NNCF accuracy control compared
  precision.py    which layers of a built engine really run in INT8
  float_policy.py  what INT8 keeps in float by default (a detector's head), handed to every backend
  plot.py         the `edgerep sensitivity` bar plot (the command is commands/sensitivity.py)
Nothing heavy is imported here: onnxruntime, openvino and nncf load inside the functions that use them.
"""
