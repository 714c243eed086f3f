"""--help texts: docstring paragraphs are reflowed to the terminal's width (hard breaks inside a
paragraph made ragged lines at 80 columns); list items and indented lines keep their own line."""

from __future__ import annotations

import os
import subprocess
import sys

from alignlens.cli.main import _reflow


def test_reflow_joins_paragraph_lines_and_keeps_lists():
    doc = """First line
    goes on here.

    Second paragraph,
    two lines.
    - item one
      continued
    - item two
    """
    assert _reflow(doc) == ("First line goes on here.\n\nSecond paragraph, two lines.\n- item one\n  continued\n"
                            "- item two")


def test_localize_help_has_no_ragged_paragraph_at_80_columns():
    env = {**os.environ, "COLUMNS": "80", "TERM": "dumb"}
    out = subprocess.run([sys.executable, "-m", "alignlens", "localize", "--help"], capture_output=True, text=True,
                         env=env, timeout=120).stdout
    body = out[out.index("Per (task, language)"):out.index("Writes OUT")]
    # a reflowed paragraph fills its lines: no line but the last is much shorter than the width
    lines = [l.rstrip() for l in body.strip().split("\n")]
    assert all(len(l) > 60 for l in lines[:-1]), lines
