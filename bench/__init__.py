"""Benchmarks: runnable as `python -m bench.<name>`, each printing a Markdown table of measured figures."""

from collections.abc import Mapping

__all__ = ["bench_line"]


def bench_line(section: str, figures: Mapping[str, object]) -> str:
    """The last line of a section: `BENCH <section> key=value ...`, one token per figure, for scripts to compare
    runs (floats with 3 significant digits, spaces in values replaced by `_`)."""
    parts = [f"BENCH {section}"]
    for key, value in figures.items():
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        parts.append(f"{key}={shown.replace(' ', '_')}")
    return " ".join(parts)
