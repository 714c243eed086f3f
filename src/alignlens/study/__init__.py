"""`alignlens study`: the paper's settings as one replicated, powered experiment (issue 21; design in
STUDY_DESIGN.md).

- `spec`: the study file (TOML) parsed and validated whole (`load_study`);
- `plan`: the study resolved into steps (train / eval / irrelevant / analysis per arm and seed, and
  the base model's), each with a content hash, a folder and a cost (`resolve`, `step_status`);
- `steps`: running one step (training with resume, evaluation per (task, language) part, analyses,
  re-merging an adapter);
- `runner`: `run_study` (plan, skip finished steps, re-run stale ones, lock, progress, interrupts);
- `collect`: `collect_study(DIR)`, study.json (effects, contrasts, trends, diagnostics, claims);
  `write_study_json` writes it and renders study.pdf (`alignlens.report.study`).
"""

from alignlens.study.spec import Arm, Study, load_study

__all__ = ["Arm", "Study", "load_study"]
