"""Numerical parity of compiled backends against the reference sampler: metrics, gates, reports."""
