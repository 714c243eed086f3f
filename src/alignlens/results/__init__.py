"""The results package owns alignlens's on-disk formats (lm-eval-harness conventions: per-item
JSONL, summary JSON, manifest; UTF-8, NaN -> null, atomic writes that honour the umask).

- `io`: atomic writes, JSON read/write, stale-temporary cleanup.
- `writer`: which files each command owns (`read_owner`: what a folder's manifest lists),
  `OutputFolder` (the `--force` policy), writing a run.
- `lock`: one run at a time per output folder (`.alignlens-lock`).
- `manifest`: provenance shared by evaluation, analysis and training manifests, and `ownership`.
- `schema`: typed, checked readers of result folders (used by the report and by model loading).
"""

from alignlens.results.io import (TEMP_PREFIX, atomic_path, atomic_write_bytes, clean_stale_temps, read_json, read_jsonl,
                                  to_jsonable, write_json, write_jsonl)
from alignlens.results.manifest import git_commit, now_iso, versions
from alignlens.results.writer import (ANALYSIS_FILES, ANALYZE_FILES, EVAL_FILES, ROLES, OutputFolder, read_owner,
                                      report_files)

__all__ = [
    "TEMP_PREFIX", "atomic_path", "atomic_write_bytes", "clean_stale_temps", "read_json", "read_jsonl", "to_jsonable",
    "write_json", "write_jsonl", "git_commit", "now_iso", "versions", "ANALYSIS_FILES", "ANALYZE_FILES",
    "EVAL_FILES", "ROLES", "OutputFolder", "read_owner", "report_files",
]
