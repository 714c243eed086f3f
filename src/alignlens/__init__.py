"""alignlens: interpretability-first analysis of multilingual LLMs.

Layers: data -> models -> evaluate / capture (one forward pass) -> analyses
(similarity, lens, neurons) -> report. The CLI (`alignlens`) is a thin shell.
"""

__version__ = "0.1.0"


class AlignlensError(Exception):
    """An error with a one-line message meant for the user (the CLI prints it, no traceback)."""
