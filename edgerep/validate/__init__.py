"""An engine against the unfused PyTorch model: reference outputs, accuracy through the task, latency, the target-ISA re-run."""
