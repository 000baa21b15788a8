"""The benchmarks behind `python -m experiments.benchmark`, one module per benchmark.

They take plain arguments and return JSON-ready dicts; the flags, and which benchmark a run
measures, live in `experiments/benchmark.py`.
"""
