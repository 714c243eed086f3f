"""Few-shot constrained-decoding evaluation, as in the paper, made fast.

Scoring (paper): prompt = demonstrations + "\\n" + query; one forward pass; at the last
position, for each English label word, sum the next-token probabilities of its *token set*
(see `label_token_ids`); predict the label with the largest sum.

Speed, with identical probabilities (tested against a plain one-item full forward pass):
- the few-shot prefix of a language is encoded once; its key/value cache is copied for every
  batch of queries of that language (`prefix_cache=True`);
- queries run in padded batches; only the last real position of each row goes through the
  final unembedding (Gemma's 262k-word LM head is most of the cost of a full-logits pass).

Token sets (`label_token_ids`), following the paper's scripts for SentencePiece vocabularies:
every vocabulary token equal to a non-empty prefix of the word, with or without the leading
word-boundary marker "▁", plus the byte-fallback token `<0xNN>` of the word's first byte where
the vocabulary has one. For byte-level BPE vocabularies (GPT-2, Llama 3, Qwen) the same rule
is applied to bytes: every token whose bytes are a non-empty prefix of the word's UTF-8 bytes,
with or without a leading space byte ("Ġ").
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignlens import AlignlensError, NumericalError, data
from alignlens.model import LoadedModel
from alignlens.config import EvalConfig  # noqa: F401  (re-exported)
from alignlens.results import EVAL_FILES, OutputFolder, now_iso
from alignlens.results.manifest import make_manifest
from alignlens.results.writer import write_eval_files
from alignlens.stats import bootstrap_ci

# ---- label token sets -----------------------------------------------------------------------

SP_MARKER = "▁"


@lru_cache(maxsize=1)
def _byte_encoder() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def vocab_kind(tokenizer: Any) -> str:
    """`sentencepiece` (▁ word-boundary marker) or `bytelevel` (GPT-2 byte alphabet)."""
    vocab = _vocab(tokenizer)
    n_sp = sum(1 for t in vocab if t.startswith(SP_MARKER))
    n_bl = sum(1 for t in vocab if t.startswith("Ġ"))
    return "sentencepiece" if n_sp >= n_bl else "bytelevel"


def _vocab(tokenizer: Any) -> dict[str, int]:
    cached = getattr(tokenizer, "_alignlens_vocab", None)
    if cached is None:
        cached = tokenizer.get_vocab()
        try:
            tokenizer._alignlens_vocab = cached
        except AttributeError:
            pass
    return cached


def label_token_ids(tokenizer: Any, word: str, where: str = "") -> list[int]:
    """Token ids whose probabilities are summed for `word` (see the module docstring). Sorted.

    `where` (e.g. "task snli, language de, label 'neutral'") starts the error messages."""
    at = f"{where}: " if where else ""
    if not word or not word.strip():
        raise AlignlensError(f"{at}empty label word")
    vocab = _vocab(tokenizer)
    ids: set[int] = set()
    if vocab_kind(tokenizer) == "sentencepiece":
        for end in range(1, len(word) + 1):
            prefix = word[:end]
            for tok in (prefix, SP_MARKER + prefix):
                if tok in vocab:
                    ids.add(vocab[tok])
        byte_tok = f"<0x{word.encode('utf-8')[0]:02X}>"
        if byte_tok in vocab:
            ids.add(vocab[byte_tok])
    else:
        enc = _byte_encoder()
        raw = word.encode("utf-8")
        for end in range(1, len(raw) + 1):
            prefix = "".join(enc[b] for b in raw[:end])
            for tok in (prefix, enc[ord(" ")] + prefix):
                if tok in vocab:
                    ids.add(vocab[tok])
    if not ids:
        raise AlignlensError(f"{at}no vocabulary token matches a prefix of the label word {word!r}")
    return sorted(ids)


# ---- the scoring engine ---------------------------------------------------------------------


def nonfinite_error(what: str, where: str, ids: Sequence[int], dtype: torch.dtype | None = None) -> NumericalError:
    """One line: which values are NaN/inf, where (task, language) and for which items (ids)."""
    ids = sorted(ids)
    shown = ", ".join(str(i) for i in ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
    hint = " (float16 overflows; use float32 or bfloat16)" if dtype == torch.float16 else ""
    at = f"{where}: " if where else ""
    return NumericalError(f"{at}non-finite {what} (NaN or inf) for item index {shown}{hint}")


@dataclass
class SuffixBatch:
    """What a capture hook needs to know about the batch now running.

    `mask` [batch, pos] marks real query tokens (False = padding); `last` [batch] is the index
    of each row's last real token; `rows` are positions of the rows in the language's item list;
    `ids` the item ids of the rows (the items' `index`, for messages); `where` names the task and
    language (for messages).
    """

    rows: list[int]
    mask: torch.Tensor
    last: torch.Tensor
    ids: list[int] = field(default_factory=list)
    where: str = ""


Hook = tuple[str | Callable[[str], bool], Callable]


def _decoder_and_head(hf_model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    body = hf_model.get_decoder() if hasattr(hf_model, "get_decoder") else None
    if body is None or body is hf_model:
        body = hf_model.base_model
    head = hf_model.get_output_embeddings()
    if body is None or head is None:
        raise AlignlensError(f"{type(hf_model).__name__}: cannot find the decoder body and LM head")
    return body, head


def final_logits(hf_model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """LM head (+ Gemma-2 style final soft-capping) on final hidden states [..., d_model] -> [..., vocab]."""
    _, head = _decoder_and_head(hf_model)
    logits = head(hidden)
    cap = getattr(hf_model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def encode(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """HF tokenization with the tokenizer's own special tokens (BOS where it adds one)."""
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]


def _common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@torch.no_grad()
def score_prompts(
    model: LoadedModel,
    prefix: str,
    queries: Sequence[str],
    label_sets: Sequence[Sequence[int]],
    *,
    batch_size: int = 8,
    prefix_cache: bool = True,
    fwd_hooks: Sequence[Hook] = (),
    batch_hooks: Callable[[SuffixBatch], list[Hook]] | None = None,
    after_batch: Callable[[SuffixBatch], None] | None = None,
    on_batch_done: Callable[[int], None] | None = None,
    item_ids: Sequence[int] | None = None,
    where: str = "",
) -> torch.Tensor:
    """Next-token probability mass of each label set after each prompt `prefix + query`.

    Returns float64 [n_queries, n_labels]. `fwd_hooks` (TransformerLens hook name or filter,
    hook fn) apply to every forward pass (prefix and queries): use them to ablate, patch or
    steer. `batch_hooks(batch)` returns hooks for one query batch only (the prefix pass is not
    hooked), e.g. for capture; `after_batch(batch)` runs after that batch's forward pass.

    A batch whose label probabilities are not finite (NaN/inf logits: float16 overflow, a hook
    writing NaN) raises NumericalError at once, naming `where` and the items (`item_ids`, the
    queries' ids; default their positions).
    """
    tok = model.tokenizer
    hf = model.hf_model
    body, _ = _decoder_and_head(hf)
    device = model.device
    full = encode(tok, [prefix + q for q in queries])
    prefix_ids = encode(tok, [prefix])[0]
    # Tokens shared by every prompt (the prefix's tokenization, up to where any prompt differs).
    k = min([_common_prefix_len(prefix_ids, f) for f in full] + [min(len(f) for f in full) - 1])
    if not prefix_cache:
        k = 0
    ids_of = list(item_ids) if item_ids is not None else list(range(len(queries)))
    if len(ids_of) != len(queries):
        raise ValueError(f"item_ids has {len(ids_of)} ids for {len(queries)} queries")
    index_sets = [torch.tensor(list(s), dtype=torch.long, device=device) for s in label_sets]
    out = torch.zeros(len(queries), len(label_sets), dtype=torch.float64)
    order = sorted(range(len(queries)), key=lambda i: len(full[i]))  # similar lengths together
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    with model.bridge.hooks(fwd_hooks=list(fwd_hooks)):
        cache = None
        if k > 0:
            ids = torch.tensor([full[0][:k]], device=device)
            cache = body(input_ids=ids, use_cache=True).past_key_values
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            suffixes = [full[i][k:] for i in rows]
            width = max(len(s) for s in suffixes)
            # Right padding: real tokens keep contiguous positions k, k+1, ...; causal attention
            # keeps padding (after them) invisible to them.
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, s in enumerate(suffixes):
                ids[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = 1
            ids, mask = ids.to(device), mask.to(device)
            last = mask.sum(1) - 1
            kwargs: dict[str, Any] = {}
            if cache is not None:
                batch_cache = copy.deepcopy(cache)
                batch_cache.batch_repeat_interleave(len(rows))
                kwargs["past_key_values"] = batch_cache
                kwargs["use_cache"] = True
            else:
                kwargs["use_cache"] = False
            attn = torch.cat([torch.ones((len(rows), k), dtype=torch.long, device=device), mask], dim=1)
            positions = (k + torch.arange(width, device=device)).unsqueeze(0).expand(len(rows), -1)
            batch = SuffixBatch(list(rows), mask.bool(), last, [ids_of[i] for i in rows], where)
            hooks = batch_hooks(batch) if batch_hooks else []
            with model.bridge.hooks(fwd_hooks=hooks):
                hidden = body(input_ids=ids, attention_mask=attn, position_ids=positions, **kwargs).last_hidden_state
            if after_batch is not None:
                after_batch(batch)
            h_last = hidden[torch.arange(len(rows), device=device), last]
            probs = torch.softmax(final_logits(hf, h_last).float(), dim=-1)
            for j, idx in enumerate(index_sets):
                out[rows, j] = probs[:, idx].sum(-1).double().cpu()
            bad = ~torch.isfinite(out[rows]).all(dim=1)
            if bool(bad.any()):
                raise nonfinite_error("label probabilities", where, [ids_of[i] for i, b in zip(rows, bad.tolist()) if b],
                                      model.dtype)
            if on_batch_done is not None:
                on_batch_done(len(rows))
    return out


@torch.no_grad()
def reference_probs(model: LoadedModel, prompt: str, label_sets: Sequence[Sequence[int]]) -> torch.Tensor:
    """The paper's method, for checking: one prompt, full-sequence logits, last position.

    Returns float64 [n_labels]."""
    ids = torch.tensor(encode(model.tokenizer, [prompt]), device=model.device)
    logits = model.hf_model(input_ids=ids).logits[0, -1]
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.stack([probs[list(s)].sum() for s in label_sets]).double().cpu()


# ---- evaluation runs ------------------------------------------------------------------------


@dataclass
class LanguageResult:
    task: str
    lang: str
    labels: list[str]
    indices: list[int]
    gold: list[int]
    probs: np.ndarray  # float64 [n_items, n_labels]

    @property
    def pred(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def correct(self) -> np.ndarray:
        return (self.pred == np.asarray(self.gold)).astype(np.float64)


def task_languages(spec: data.TaskSpec, languages: list[str] | None) -> list[str]:
    """See `data.task_languages`."""
    return data.task_languages(spec, languages)


def label_sets_for(model: LoadedModel, labels: Sequence[str], where: str = "") -> list[list[int]]:
    """Token sets of `labels`; `where` (e.g. "task snli, language de") names them in errors."""
    return [label_token_ids(model.tokenizer, w, f"{where}, label {w!r}" if where else f"label {w!r}") for w in labels]


def evaluate_language(
    model: LoadedModel, spec: data.TaskSpec, lang: str, items: list[data.Item], *, batch_size: int = 8,
    prefix_cache: bool = True, fwd_hooks: Sequence[Hook] = (), batch_hooks=None, after_batch=None,
    on_batch_done=None,
) -> LanguageResult:
    """Score `items` of one task and language (NumericalError naming them if a probability is NaN/inf)."""
    queries = [spec.prompts[lang].query_template.format(**it.fields) for it in items]
    where = f"task {spec.name}, language {lang}"
    probs = score_prompts(
        model, data.prompt_prefix(spec, lang), queries, label_sets_for(model, spec.labels, where),
        batch_size=batch_size, prefix_cache=prefix_cache, fwd_hooks=fwd_hooks, batch_hooks=batch_hooks,
        after_batch=after_batch, on_batch_done=on_batch_done, item_ids=[it.index for it in items], where=where,
    )
    gold = [spec.labels.index(it.label) for it in items]
    return LanguageResult(spec.name, lang, list(spec.labels), [it.index for it in items], gold, probs.numpy())


def summarize(results: list[LanguageResult], bootstrap_resamples: int = 2000, seed: int = 0) -> dict:
    """summary.json: per task and language accuracy, n, 95% bootstrap interval, confusion counts;
    per task the mean accuracy over languages."""
    tasks: dict[str, dict] = {}
    for r in results:
        t = tasks.setdefault(r.task, {"labels": r.labels, "languages": {}})
        correct = r.correct
        lo, hi = bootstrap_ci(correct, n_resamples=bootstrap_resamples, seed=seed)
        confusion = {g: {p: 0 for p in r.labels} for g in r.labels}
        for g, p in zip(r.gold, r.pred):
            confusion[r.labels[g]][r.labels[int(p)]] += 1
        t["languages"][r.lang] = {
            "accuracy": float(correct.mean()) if len(correct) else float("nan"),
            "n": int(len(correct)), "ci95": [lo, hi], "confusion": confusion,
        }
    for t in tasks.values():
        accs = [v["accuracy"] for v in t["languages"].values()]
        t["mean_accuracy"] = float(np.mean(accs)) if accs else float("nan")
    return {"tasks": tasks}


def prediction_rows(results: list[LanguageResult]) -> list[dict]:
    rows = []
    for r in results:
        for i, idx in enumerate(r.indices):
            rows.append({
                "task": r.task, "lang": r.lang, "index": idx, "gold": r.labels[r.gold[i]],
                "pred": r.labels[int(r.pred[i])],
                "probs": {lab: float(r.probs[i, j]) for j, lab in enumerate(r.labels)},
            })
    return rows


def run_eval(
    model: LoadedModel, config: EvalConfig, *, progress: Any = None, fwd_hooks: Sequence[Hook] = (),
    batch_hooks_for: Callable[[str, str, list[data.Item]], Callable | None] | None = None,
) -> list[LanguageResult]:
    """Evaluate every (task, language) of `config`. `progress` is a rich Progress or None.

    `batch_hooks_for(task, lang, items)` may return a per-batch hook factory (capture)."""
    plan = []
    for t in config.tasks:
        spec = data.load_task(t)
        for lang in task_languages(spec, config.languages):
            plan.append((spec, lang, data.load_items(spec, lang, config.limit)))
    total = sum(len(items) for _, _, items in plan)
    bar = progress.add_task("evaluating", total=total) if progress is not None else None
    results = []
    for spec, lang, items in plan:
        if progress is not None:
            progress.update(bar, description=f"{spec.name} {lang}")
        results.append(evaluate_language(
            model, spec, lang, items, batch_size=config.batch_size, prefix_cache=config.prefix_cache,
            fwd_hooks=fwd_hooks,
            batch_hooks=batch_hooks_for(spec.name, lang, items) if batch_hooks_for else None,
            on_batch_done=(lambda n: progress.advance(bar, n)) if progress is not None else None,
        ))
    return results


def write_eval(out_dir: Path, results: list[LanguageResult], manifest: dict, config: EvalConfig) -> dict:
    """Write predictions.jsonl, summary.json and manifest.json to `out_dir`; return the summary."""
    summary = summarize(results, config.bootstrap_resamples, config.seed)
    write_eval_files(out_dir, prediction_rows(results), summary, manifest)
    return summary


def evaluate(model: LoadedModel, config: EvalConfig, out_dir: str | Path | None = None, *, force: bool = False,
             progress: Any = None, command: str = "", fwd_hooks: Sequence[Hook] = ()) -> dict:
    """Run an evaluation; write its files to `out_dir` when given. Returns the summary dict.

    The output folder is checked before any work; with `force`, only alignlens's own files there
    are replaced, and only once the new ones are complete."""
    folder = OutputFolder(out_dir, EVAL_FILES, force) if out_dir is not None else None
    if folder is not None:
        folder.check()
    torch.manual_seed(config.seed)
    started = now_iso()
    results = run_eval(model, config, progress=progress, fwd_hooks=fwd_hooks)
    if folder is None:
        return summarize(results, config.bootstrap_resamples, config.seed)
    stage = folder.begin()
    try:
        summary = write_eval(stage, results, make_manifest(model, config, command=command, started=started), config)
        folder.commit()
    except BaseException:
        folder.abort()
        raise
    return summary


def accuracy_table(summary: dict) -> tuple[list[str], list[str], dict[tuple[str, str], float]]:
    """(tasks, languages, {(task, lang): accuracy}) from a summary, languages in paper order."""
    tasks = list(summary["tasks"])
    langs: list[str] = []
    cells = {}
    for t, v in summary["tasks"].items():
        for lang, r in v["languages"].items():
            if lang not in langs:
                langs.append(lang)
            cells[(t, lang)] = r["accuracy"]
    return tasks, data.paper_order(langs), cells

