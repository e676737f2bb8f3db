#!/usr/bin/env bash
# Run tests on an emulated AVX2 CPU without VNNI, from any x86-64 machine: qemu-user's `-cpu Haswell` makes
# ONNX Runtime and oneDNN pick their AVX2 kernels (CPUID says so), and EDGEREP_HOST_ISA tells edgerep the
# same (/proc/cpuinfo still describes the real host under qemu-user). Slow: about 6 minutes per INT8 test.
#   apt-get install qemu-user      # Debian
#   scripts/test_on_avx2.sh tests/quant/test_quant.py::test_search_meets_the_budget_on_onnxruntime ...
# With no arguments: the INT8 tests that once failed on AVX2 machines, and the TensorRT Q/DQ prediction check.
# CI runs cheaper emulated cases inside the test suite (only the runtime under qemu): tests/cpu/test_isa.py and
# test_tensorrt_host.py::test_qdq_prediction_is_the_same_on_an_emulated_avx2_cpu.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v qemu-x86_64 >/dev/null || { echo "qemu-x86_64 not found: apt-get install qemu-user" >&2; exit 2; }
python=$(python3 -c 'import sys; print(sys.executable)')  # the real interpreter, not a shell shim
tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=(
  tests/pipeline/test_build.py::test_demo_on_onnxruntime_every_precision_then_force
  tests/quant/test_quant.py::test_sensitivity_ranks_the_range_blown_layer_first
  tests/quant/test_quant.py::test_search_meets_the_budget_on_onnxruntime
  tests/quant/test_quant.py::test_build_max_drop_end_to_end
  tests/backends/tensorrt/test_tensorrt_host.py::test_qdq_accuracy_close_to_fp32_on_digits)
EDGEREP_HOST_ISA=avx2 exec qemu-x86_64 -cpu Haswell "$python" -m pytest -q -p no:cacheprovider -o timeout=3600 "${tests[@]}" 2> >(grep -v "TCG doesn't support" >&2)
