"""The capture pass of `alignlens analyze`: what is read from the model while it is evaluated.

- `reducers`: streaming, mergeable reducers (per-item rows, activation counts).
- `capturer`: `Capturer`, the `engine.Probe` that hooks the residual stream and MLPs and runs the
  logit lens; `LanguageCapture`, its result for one task and language.
- `shards`: one (task, language) per safetensors file, written atomically, read back for resume.

Import from the submodules (`from alignlens.capture.capturer import Capturer`); this package
module imports nothing, so `capture.reducers` stays free of the model side.
"""
