"""Early validation: bad task data, model specs, devices and dtypes fail at once with one line
naming their place; non-finite numbers stop a run with a NumericalError naming the items."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest
import torch

from alignlens import AlignlensError, NumericalError, data
from alignlens import evaluate as ev
from alignlens.engine import SuffixBatch, encode
from alignlens.labels import label_sets, label_token_ids
from alignlens import model

SPEC = {"labels": ["yes", "no"], "fields": ["text"],
        "languages": {"en": {"demonstrations": "a\nAnswer: \"yes\"", "query_template": "{text}\nAnswer: \""},
                      "de": {"demonstrations": "b\nAntwort: \"yes\"", "query_template": "{text}\nAntwort: \"",
                             "label_words": {"yes": "ja", "no": "nein"}}}}
EN = [{"index": 0, "label": "yes", "text": "x"}, {"index": 1, "label": "no", "text": "y"}]


def _task(folder: Path, spec: dict | bytes | str = SPEC, files: dict | None = None) -> str:
    """A task folder; `spec` as a dict (JSON), or raw text/bytes for task.json; `files` lang -> lines."""
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(spec, dict):
        spec = json.dumps(spec)
    (folder / "task.json").write_bytes(spec if isinstance(spec, bytes) else spec.encode("utf-8"))
    files = {"en": EN, "de": [{"index": 0, "text": "xx"}, {"index": 1, "text": "yy"}]} if files is None else files
    for lang, rows in files.items():
        if isinstance(rows, bytes):
            (folder / f"{lang}.jsonl").write_bytes(rows)
            continue
        lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
        (folder / f"{lang}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(folder)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


# ---- task.json ------------------------------------------------------------------------------


@pytest.mark.parametrize("text, message", [
    ("null", r"task\.json: a task spec must be a JSON object, not null$"),
    ("3", r"task\.json: a task spec must be a JSON object, not a number$"),
    ("[1, 2]", r"task\.json: a task spec must be a JSON object, not a list$"),
    (b'{"labels": ["caf\xe9", "no"]}', r"task\.json: not UTF-8 text \(byte 0xe9 cannot be decoded\)$"),
    ('{"labels": ["yes", "no"],\n "fields": ["text"] "x": 1}',
     r"task\.json:2: invalid JSON: Expecting ',' delimiter at column 21$"),
    ('{"labels": null, "fields": ["text"], "languages": {}}', r"field 'labels' must be a list, not null$"),
])
def test_task_json_that_is_not_an_object_is_one_line(tmp_path, text, message):
    folder = _task(tmp_path / "t", text)
    with pytest.raises(AlignlensError, match=message) as exc:
        data.load_task(folder)
    assert _one_line(exc).startswith(str(tmp_path / "t" / "task.json"))


@pytest.mark.parametrize("template, problem", [
    ("{text}\nAntwort: {", r"Single '\{' encountered in format string \(write \{\{ or \}\} for a literal brace\)"),
    ("{text}\nAntwort: }", r"Single '\}' encountered"),
    ("{}\nAntwort: \"", r"positional placeholder \{\} \(name a field: \{text\}\)"),
    ("{0}\nAntwort: \"", r"positional placeholder"),
    ("{txt}\nAntwort: \"", r"uses unknown placeholder\(s\) \['txt'\] \(fields: text\)"),
    ("{text!z}", r"cannot be filled \(ValueError: Unknown conversion specifier z\)"),
    ("{text:d}", r"cannot be filled \(ValueError: Unknown format code 'd'"),
])
def test_bad_query_template_fails_at_load_naming_task_and_language(tmp_path, template, problem):
    spec = json.loads(json.dumps(SPEC))
    spec["languages"]["de"]["query_template"] = template
    folder = _task(tmp_path / "mytask", spec)
    with pytest.raises(AlignlensError) as exc:
        data.load_task(folder)  # no model anywhere: the template is checked when the spec loads
    msg = _one_line(exc)
    assert msg.startswith(f"{tmp_path / 'mytask' / 'task.json'}: field 'languages.de.query_template' "
                          "of task mytask, language de: "), msg
    assert re.search(problem, msg), msg


def test_literal_braces_and_braces_in_demonstrations_are_fine(tmp_path):
    spec = json.loads(json.dumps(SPEC))
    spec["languages"]["de"]["query_template"] = "{{json}} {text}\nAntwort: \""
    spec["languages"]["de"]["demonstrations"] = "{not a template} {}"
    folder = _task(tmp_path / "t", spec)
    item = data.load_items(folder, "de")[1]
    assert data.build_prompt(data.load_task(folder), "de", item) == '{not a template} {}\n{json} yy\nAntwort: "'


@pytest.mark.parametrize("word", ["", "  "])
def test_empty_label_word_names_task_language_and_label(tmp_path, word):
    spec = json.loads(json.dumps(SPEC))
    spec["languages"]["de"]["label_words"] = {"yes": "ja", "no": word}
    folder = _task(tmp_path / "mytask", spec)
    with pytest.raises(AlignlensError) as exc:
        data.load_task(folder)
    assert _one_line(exc).endswith(
        "task.json: field 'languages.de.label_words.no': empty label word (task mytask, language de, label 'no')")


def test_label_token_ids_errors_name_their_place(tiny_gemma):
    with pytest.raises(AlignlensError, match=r"^task t, language de, label 'no': empty label word$"):
        label_token_ids(tiny_gemma.tokenizer, "", "task t, language de, label 'no'")
    with pytest.raises(AlignlensError, match=r"^task t, language de, label ' ': empty label word$"):
        label_sets(tiny_gemma.tokenizer, ["yes", " "], where="task t, language de")


# ---- item files -----------------------------------------------------------------------------


def test_item_missing_from_english_is_reported_where_it_is(tmp_path):
    folder = _task(tmp_path / "t", files={"en": EN, "de": [{"index": 0, "text": "a"}, {"index": 5, "text": "b"}]})
    with pytest.raises(AlignlensError) as exc:
        data.load_items(folder, "de")
    assert _one_line(exc) == (f"{tmp_path / 't' / 'de.jsonl'}:2: item index 5 is not in en.jsonl "
                              "(gold labels come from the English file)")
    with pytest.raises(AlignlensError, match=r"de\.jsonl:2: item index 5 is not in en\.jsonl"):
        data.load_items(folder, "de", limit=1)  # a non-parallel file is refused whatever the limit


def test_english_item_without_label_is_reported_at_its_line(tmp_path):
    folder = _task(tmp_path / "t", files={"en": [EN[0], {"index": 1, "text": "y"}], "de": [{"index": 1, "text": "b"}]})
    with pytest.raises(AlignlensError) as exc:
        data.load_items(folder, "de")
    assert _one_line(exc) == f"{tmp_path / 't' / 'en.jsonl'}:2: missing field 'label' (item index 1, needed by de.jsonl)"
    with pytest.raises(AlignlensError, match=r"en\.jsonl:2: missing field 'label' \(item index 1\)$"):
        data.load_items(folder, "en")


@pytest.mark.parametrize("line, message", [
    ('{"index": 1, "text": "unterminated}', r"de\.jsonl:2: invalid JSON: Unterminated string starting at column 22$"),
    ("{'index': 1}", r"de\.jsonl:2: invalid JSON: Expecting property name enclosed in double quotes at column 2$"),
    ('{"index": 1, "text": "tab\there"}', r"de\.jsonl:2: invalid JSON: Invalid control character at column 26$"),
    ("[1, 2]", r"de\.jsonl:2: a line must be a JSON object, not a list$"),
])
def test_malformed_json_line_gives_file_line_and_whole_error(tmp_path, line, message):
    folder = _task(tmp_path / "t", files={"en": EN, "de": ['{"index": 0, "text": "a"}', line]})
    with pytest.raises(AlignlensError, match=message) as exc:
        data.load_items(folder, "de")
    _one_line(exc)


def test_non_utf8_and_damaged_gzip_item_files(tmp_path):
    folder = _task(tmp_path / "t", files={"en": EN, "de": b'{"index": 0, "text": "a"}\n{"index": 1, "text": "caf\xe9"}\n'})
    with pytest.raises(AlignlensError, match=r"de\.jsonl:2: not UTF-8 text \(byte 0xe9 cannot be decoded\)$"):
        data.load_items(folder, "de")
    (tmp_path / "t" / "de.jsonl").unlink()
    with gzip.open(tmp_path / "t" / "de.jsonl.gz", "wb") as fh:
        fh.write(b'{"index": 0, "text": "a"}\n' * 200)
    good = (tmp_path / "t" / "de.jsonl.gz").read_bytes()
    (tmp_path / "t" / "de.jsonl.gz").write_bytes(good[: len(good) // 2])  # truncated download
    data._read_items.cache_clear()
    with pytest.raises(AlignlensError, match=r"de\.jsonl\.gz: cannot read"):
        data.load_items(folder, "de")


# ---- validate_tasks (before any model) ------------------------------------------------------


def test_validate_tasks_finds_bad_files_of_requested_languages_only(tmp_path):
    folder = _task(tmp_path / "t", files={"en": EN, "de": ['{"index": 0, "text": "a"}', "{broken"]})
    data.validate_tasks([folder, "snli"], ["en"], limit=2)  # de is not requested
    with pytest.raises(AlignlensError, match=r"de\.jsonl:2: invalid JSON"):
        data.validate_tasks([folder], ["en", "de"], limit=2)
    with pytest.raises(AlignlensError, match=r"de\.jsonl:2: invalid JSON"):
        data.validate_tasks([folder], None, limit=None)  # None: every language of the task
    with pytest.raises(AlignlensError, match=r"unknown languages for task t xx"):
        data.validate_tasks([folder], ["en", "xx"], limit=1)


@pytest.mark.parametrize("tasks, languages, limit, message", [
    ([], None, 5, r"^no tasks given$"),
    (["snli"], [], 5, r"^no languages given$"),
    (["snli", "snli"], None, 5, r"^task 'snli' is given twice$"),
    (["snli"], ["en", "de", "en"], 5, r"^language 'en' is given twice$"),
    (["snli"], ["en"], 0, r"^limit must be a positive number of items, not 0$"),
    (["nope"], ["en"], 5, r"^unknown task 'nope'"),
])
def test_validate_tasks_refuses_bad_lists(tasks, languages, limit, message):
    with pytest.raises(AlignlensError, match=message):
        data.validate_tasks(tasks, languages, limit)


def test_validate_tasks_accepts_every_bundled_language():
    data.validate_tasks(list(data.BUNDLED_TASKS), None, limit=None)


# ---- model spec, device, dtype (before loading) ---------------------------------------------


def _hf_folder(folder: Path, weights: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    if weights:
        (folder / "model.safetensors").write_bytes(b"not really weights")
    return folder


def test_path_like_model_that_does_not_exist(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for spec in ("runs/aligend", "./aligned", "../aligned", "~/no-such-alignlens-model", str(tmp_path / "nope"),
                 "a/b/c", "runs\\aligned"):
        with pytest.raises(AlignlensError) as exc:
            model.check_model_spec(spec)
        assert _one_line(exc) == f"model folder {spec} does not exist"
    with pytest.raises(AlignlensError, match=r"^unknown model 'nonsense': not the default"):
        model.check_model_spec("nonsense")
    with pytest.raises(AlignlensError, match=r"^empty model name"):
        model.check_model_spec("")
    # hub names (org/name, org not a local folder) are left to the loader
    for spec in ("google/gemma-3-270m", "HuggingFaceTB/SmolLM2-135M", "Qwen/Qwen2.5-0.5B"):
        assert model.model_source(spec) == ("hub", None)
    assert model.model_source("gemma-3-270m") == ("default", None)


def test_existing_folders_that_are_not_models(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AlignlensError, match=r"^model folder .*empty has no config\.json \(neither an HF model "):
        model.check_model_spec(str(tmp_path / "empty"))
    _hf_folder(tmp_path / "noweights", weights=False)
    with pytest.raises(AlignlensError, match=r"noweights has config\.json but no weights"):
        model.check_model_spec(str(tmp_path / "noweights"))
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(AlignlensError, match=r"^model path .*file\.bin is a file"):
        model.check_model_spec(str(tmp_path / "file.bin"))
    assert model.model_source(str(_hf_folder(tmp_path / "hf"))) == ("folder", tmp_path / "hf")


def test_train_outputs_finished_interrupted_and_unfinished(tmp_path):
    run = tmp_path / "my run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    (run / "train_log.jsonl").write_text("{}\n")
    with pytest.raises(AlignlensError) as exc:
        model.check_model_spec(str(run))
    assert _one_line(exc) == (f"training in {run} was interrupted; resume with "
                              f"`alignlens train --out '{run}' --resume`")
    (run / "checkpoints" / "last.pt").unlink()
    with pytest.raises(AlignlensError, match=r"has not finished \(no merged/config\.json yet\)"):
        model.check_model_spec(str(run))
    _hf_folder(run / "merged")
    (run / "checkpoints" / "last.pt").write_bytes(b"x")  # kept checkpoints (--keep-checkpoints)
    (run / "manifest.json").write_text("{}")
    assert model.model_source(str(run)) == ("folder", run / "merged")


def test_load_model_checks_the_spec_and_dtype_before_loading(tmp_path):
    with pytest.raises(AlignlensError, match=r"^model folder .*nope does not exist$"):
        model.load_model(str(tmp_path / "nope"))
    folder = _hf_folder(tmp_path / "hf")  # its "weights" would fail to load: the dtype error must come first
    with pytest.raises(AlignlensError) as exc:
        model.load_model(str(folder), device="cpu", dtype="float16")
    assert _one_line(exc) == "dtype float16: float16 on CPU gives NaN probabilities; use float32 or bfloat16"


def test_device_and_dtype_checks():
    cpu = torch.device("cpu")
    for name in ("float16", "fp16"):
        with pytest.raises(AlignlensError, match="float16 on CPU gives NaN probabilities; use float32 or bfloat16"):
            model.resolve_dtype(name, cpu)
        with pytest.raises(AlignlensError, match="float16 on CPU"):
            model.check_dtype(name, "cpu")
    assert model.resolve_dtype("bfloat16", cpu) == torch.bfloat16
    assert model.resolve_dtype("auto", cpu) == torch.float32
    model.check_dtype("float32", "cpu")
    with pytest.raises(AlignlensError, match=r"^unknown dtype 'nonsense'"):
        model.check_dtype("nonsense", "cpu")
    with pytest.raises(AlignlensError, match=r"^unknown device 'gpu0'"):
        model.check_device("gpu0")
    model.check_device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(AlignlensError, match="CUDA is not available"):
            model.check_device("cuda")
        with pytest.raises(AlignlensError, match="float16 on CPU"):
            model.check_dtype("float16", "auto")  # auto is the CPU here


# ---- non-finite numbers ---------------------------------------------------------------------


class _HookProbe:
    """A probe (`engine.Probe`) that only adds the hooks `hooks_for(batch)` returns."""

    def __init__(self, hooks_for):
        self.hooks = hooks_for

    def after_batch(self, batch: SuffixBatch) -> None:
        pass


def _nan_rows(target: set[int], layer: int = 0) -> _HookProbe:
    """A probe writing NaN into the residual stream of the rows whose item index is in `target`."""
    def factory(batch: SuffixBatch):
        rows = [r for r, i in enumerate(batch.ids) if i in target]

        def hook(x, hook):
            x = x.clone()
            x[rows] = float("nan")
            return x
        return [(f"blocks.{layer}.hook_resid_post", hook)] if rows else []
    return _HookProbe(factory)


def test_nan_probabilities_name_task_language_and_items(tiny_gemma):
    spec = data.load_task("snli")
    items = data.load_items(spec, "de", limit=7)
    with pytest.raises(NumericalError) as exc:
        ev.evaluate_language(tiny_gemma, spec, "de", items, batch_size=3, probes=[_nan_rows({2, 5})])
    assert re.fullmatch(
        r"task snli, language de: non-finite label probabilities \(NaN or inf\) for item index (2|5|2, 5)", _one_line(exc))
    with pytest.raises(NumericalError, match=r"^task snli, language de: non-finite label probabilities "
                                             r"\(NaN or inf\) for item index 2, 5$"):
        ev.evaluate_language(tiny_gemma, spec, "de", items, batch_size=7, probes=[_nan_rows({2, 5})])
    # +inf in the residual stream is caught too; an untouched run is finite
    def inf_everywhere(x, hook):
        return torch.full_like(x, float("inf"))
    with pytest.raises(NumericalError, match=r"item index 0, 1, 2, 3, 4, 5, 6$"):
        ev.evaluate_language(tiny_gemma, spec, "de", items, batch_size=7,
                             fwd_hooks=[("blocks.1.hook_resid_post", inf_everywhere)])
    assert ev.evaluate_language(tiny_gemma, spec, "de", items, batch_size=7).probs.shape == (7, 3)


def test_nan_activations_stop_the_capture(tiny_gemma):
    from alignlens.config import AnalyzeConfig
    from alignlens.pipeline import capture_run
    from alignlens.capture.capturer import Capturer

    def nan_everywhere(x, hook):
        return x * float("nan")

    cfg = AnalyzeConfig(tasks=["snli"], languages=["en"], limit=3, batch_size=2)
    with pytest.raises(NumericalError) as exc:
        capture_run(tiny_gemma, cfg, fwd_hooks=[("blocks.0.hook_resid_post", nan_everywhere)])
    assert _one_line(exc).startswith("task snli, language en: non-finite residual-stream activations (NaN or inf) "
                                     "for item index ")
    # rows of one batch are named by their item index
    spec = data.load_task("snli")
    items = data.load_items(spec, "hi", limit=5)
    cap = Capturer(tiny_gemma, spec, "hi")
    with pytest.raises(NumericalError, match=r"^task snli, language hi: non-finite residual-stream activations "
                                             r"\(NaN or inf\) for item index 3$"):
        ev.evaluate_language(tiny_gemma, spec, "hi", items, batch_size=5,
                             probes=[cap, _nan_rows({3})])


def test_nan_at_padding_positions_is_ignored(tiny_gemma):
    """Padding never enters a statistic: NaN written only at padding positions changes nothing."""
    from alignlens.capture.capturer import Capturer

    spec = data.load_task("snli")
    items = data.load_items(spec, "de", limit=4)

    def nan_padding(batch: SuffixBatch):
        def hook(x, hook):
            return torch.where(batch.mask.unsqueeze(-1), x, torch.full_like(x, float("nan")))
        return [("blocks.1.hook_resid_post", hook)]

    lengths = {len(ids) for ids in encode(tiny_gemma.tokenizer, [data.build_prompt(spec, "de", it) for it in items])}
    assert len(lengths) > 1  # so the batch of 4 has padding
    runs = []
    for extra in (lambda b: [], nan_padding):
        cap = Capturer(tiny_gemma, spec, "de")
        res = ev.evaluate_language(tiny_gemma, spec, "de", items, batch_size=4,
                                   probes=[cap, _HookProbe(extra)])
        runs.append((res, cap.capture))
    assert (runs[0][0].probs == runs[1][0].probs).all()
    assert torch.equal(runs[0][1].mean.to_tensor(), runs[1][1].mean.to_tensor())
