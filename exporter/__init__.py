"""Checkpoint -> bundle: the reference model family, checkpoints, schedules, the portable
sampler spec, the backend-agnostic sampling loop and (later) tracing to ONNX.

This layer never imports a backend runtime.
"""
