"""Everything TensorRT, in one place (the tensorrt backend in edgerep/backends is a thin adapter over it):

  versions.py      version facts: cache-header codes, the API per release, DLA per release, parser tables
  lint.py          ONNX lint for one TensorRT version's parser and a profile's settings (`edgerep check`)
  calibrate.py, calib_cache.py, qdq.py
                   host calibration with ONNX Runtime written as a TensorRT cache and as a Q/DQ model
  host.py          the host artifacts for a profile (INT8 cache + Q/DQ, FP16 ONNX) and the device bundle's files
  bundle.py, trtexec.py
                   the device bundle: manifest, build.sh with each release's trtexec options, README
  guard.py         sidecars of engines and caches, and the guard that refuses mismatched ones
  gpu.py, engine_build.py, runner.py
                   the running TensorRT: environment, engine build with the tensorrt API per version, pycuda runner
Only gpu.py, engine_build.py and runner.py import tensorrt/pycuda, inside functions; the rest runs anywhere.
The facts come from NVIDIA's sources as collected in edgerep/backends/tensorrt/data/ (each file names its source).
"""
