"""Question-translation alignment training: a minimal, readable fine-tuning loop.

The paper's training step: fine-tune on questions only, translated X -> English (no task
answers). One training example is `prompt = <question in X>\\nTranslate the input from X to
English:\\n` followed by `target = <English question><eos>`; the loss is on the target only.

Modules, in the order a run uses them:

- `config`: `TrainConfig` (every option, presets `default` and `paper`);
- `examples`: pairs, the seeded validation split, tokens (truncated/dropped counts), batches;
- `loss`: `TargetLossModel`, the target-only cross-entropy as a module's forward;
- `checkpoint`: `TrainState`, `Checkpoint` (exact save/restore), the log, the output folder;
- `trainer`: `train` (the entry point) and `Trainer` (step / validate / checkpoint / finish),
  `training_manifest`.

`train(config, model_spec, out_dir)` writes `merged/` (loads with `alignlens.model.load_model`),
`adapter/` (LoRA), `manifest.json` and `train_log.jsonl`.
"""

from alignlens.train.checkpoint import Checkpoint, TrainState
from alignlens.train.config import PRESETS, TrainConfig
from alignlens.train.loss import TargetLossModel
from alignlens.train.trainer import Trainer, TrainInterrupted, TrainResult, train

__all__ = ["PRESETS", "Checkpoint", "TargetLossModel", "TrainConfig", "TrainInterrupted", "TrainResult",
           "TrainState", "Trainer", "train"]
