"""Question-translation alignment training: a minimal, readable fine-tuning loop.

The paper's training step: fine-tune on questions only, translated X -> English (no task
answers). One training example is `prompt = <question in X>\\nTranslate the input from X to
English:\\n` followed by `target = <English question><eos>`; the loss is on the target only.

Modules, in the order a run uses them:

- `config`: `TrainConfig` (every option, presets `default` and `paper`);
- `examples`: pairs, the seeded validation split, tokens (truncated/dropped counts), batches;
- `loss`: `TargetLossModel`, the target-only cross-entropy as a module's forward;
- `checkpoint`: `TrainState`, `Checkpoint` (exact save/restore), the log, the output folder;
- `parallel`: the model wrapped for torchrun (DDP, FSDP2) and the sharded checkpoint state;
- `adapters`: a saved LoRA adapter read as ΔW = B·A·scaling (`lora_delta`, the one merge formula);
- `export`: `adapter/` and `merged/` of a finished run;
- `manifest`: the run's manifest, its session log and the command that resumes it;
- `trainer`: `Trainer`, the loop (step / validate / checkpoint / finish);
- `run`: `train`, the entry point (checks, setup of data and model, resume options).

`train(config, model_spec, out_dir)` writes `merged/` (loads with `alignlens.model.load_model`),
`adapter/` (LoRA), `manifest.json` and `train_log.jsonl`.
"""

from alignlens.train.checkpoint import Checkpoint, TrainState
from alignlens.train.config import PRESETS, TrainConfig
from alignlens.train.loss import TargetLossModel
from alignlens.train.run import train
from alignlens.train.trainer import Trainer, TrainInterrupted, TrainResult

__all__ = ["PRESETS", "Checkpoint", "TargetLossModel", "TrainConfig", "TrainInterrupted", "TrainResult",
           "TrainState", "Trainer", "train"]
