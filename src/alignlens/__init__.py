"""alignlens: interpretability-first analysis of multilingual LLMs.

Layers: data -> models -> evaluate / capture (one forward pass) -> analyses
(similarity, lens, neurons) -> report. The CLI (`alignlens`) is a thin shell.

Exit codes of the `alignlens` command (each failure is one `error:` line, no traceback):
0 success; 1 an unexpected internal error; 2 bad input or a refused request (nothing was
changed); 3 a run stopped because its numbers failed a check (e.g. non-finite probabilities);
130 interrupted by Ctrl-C (SIGINT); 143 stopped by SIGTERM. Interrupted runs say what was kept
and how to resume.
"""

__version__ = "0.1.0"


class AlignlensError(Exception):
    """An error with a one-line message meant for the user (the CLI prints it, no traceback)."""

    exit_code = 2


class NumericalError(AlignlensError):
    """Computed values failed a check (NaN/inf probabilities or activations); nothing was written."""

    exit_code = 3


class RunInterrupted(AlignlensError):
    """Ctrl-C or SIGTERM stopped a run; the message says what was kept and how to resume."""

    exit_code = 130

    def __init__(self, message: str, signum: int | None = None) -> None:
        super().__init__(message)
        import signal

        if signum == signal.SIGTERM:
            self.exit_code = 143
