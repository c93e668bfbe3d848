"""Benchmarks: runnable as `python -m bench.<name>`, each printing a Markdown table of measured figures."""
