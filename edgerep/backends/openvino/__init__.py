"""OpenVINO: the adapter (build, load), its runner, and INT8 through NNCF."""
