"""Backends that run a compiled Program: the host (onnxruntime) and the simulator."""
