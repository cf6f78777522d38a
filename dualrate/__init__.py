"""dualrate: export, compile and validate Dual-Rate Diffusion models (command-line front end)."""

__version__ = "0.1.0"
