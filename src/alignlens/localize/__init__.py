"""Causal localisation of what an alignment changes (`alignlens localize`, issue 22).

- `patching`: cross-model activation patching: per (task, language), every site (residual
  stream, attention output, MLP output at each layer) at `last`/`query`/`all` positions in each
  direction (source model -> receiver model), as per-item rows (`patch_language`).
- `recovery`: pure aggregation of those rows: recovery = mean(patched − receiver) /
  mean(source − receiver) per language and language group, with a label-stratified item-cluster
  bootstrap interval, reported only where the gap itself is significant.
- `steering`, `dose`, `compare`: the alignment direction added to the base model, the weight-scale
  dose response W + α·ΔW, and paired effects of two conditions' per-item rows.
- `run`: the command: `localize(LocalizeConfig(...), base, aligned, out, control=...)` runs all three
  for every (task, language) and writes patching.jsonl, steering.jsonl, dose.jsonl, localize.json,
  manifest.json and report.pdf (`report.localize`).
"""

from alignlens.localize.patching import (DIRECTIONS, POSITIONS, SITE_KINDS, Direction, PatchRun, Site,
                                         directions_by_name, log_odds, make_sites, patch_language, reference_patch,
                                         run_patches)
from alignlens.localize.recovery import GAP_TOO_SMALL, item_weights, recovery
from alignlens.localize.run import localize

__all__ = ["DIRECTIONS", "POSITIONS", "SITE_KINDS", "Direction", "PatchRun", "Site", "directions_by_name",
           "log_odds", "make_sites", "patch_language", "reference_patch", "run_patches",
           "GAP_TOO_SMALL", "item_weights", "recovery", "localize"]
