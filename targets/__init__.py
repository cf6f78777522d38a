"""Per-backend compilation and runners (ONNX Runtime, OpenVINO, Core ML, TensorRT).

Each backend module imports its runtime lazily so the core installs without extras.
"""
