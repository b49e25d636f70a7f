"""Benchmarks of bridgediff: speed against the hardware floor and the peers, and quality per
model call. Run ``python -m benchmarks`` from the repository root; see benchmarks/README.md.
"""
