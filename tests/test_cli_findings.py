"""Issue 19, command line and environment: every refusal is one `error:` line with the documented
exit code and nothing written; Ctrl-C and SIGTERM print one `interrupted:` line saying what was
kept (exit 130 / 143).

Most cases run the command in this process (`cli.main._run`, output captured); the signal, hub
and end-to-end cases run the real command in a subprocess, as tests/test_cli_errors.py does."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures import save_tiny_base
from synthetic_results import make_synthetic_run

from alignlens import AlignlensError
from alignlens.config import SEED_MAX, AnalyzeConfig, EvalConfig, check_seed


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return save_tiny_base(tmp_path_factory.mktemp("models") / "tiny", "gemma3", seed=0)


@pytest.fixture
def cli(capsys, monkeypatch):
    """`cli(*args, env={...})` -> (exit code, stdout, stderr) of `alignlens ARGS` run in this process
    (the signal handlers `_run` installs are put back afterwards)."""
    from alignlens.model import _hub_unreachable
    from alignlens.cli import main as cli_main

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            cli_main._run(list(args))
        out, err = capsys.readouterr()
        return exc.value.code, out, err

    yield run
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    cli_main._interrupt_note.clear()
    cli_main._signal_received.clear()
    _hub_unreachable.cache_clear()


def run_cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alignlens.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def one_error(code: int, err: str, expected_code: int = 2, early: bool = True) -> str:
    """The one `error:` line of a refusal: exit code, no traceback, no boxed panel and, for a refusal
    before any work (`early`), nothing else on stderr."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert code == expected_code, err
    assert len(errors) == 1 and (not early or lines == errors), err
    assert "Traceback" not in err and "╭" not in err and "internal error" not in err, err
    return errors[0]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- 28: usage errors from typer/click ----------------------------------------------------------


@pytest.mark.parametrize("args, names", [
    (["eval", "--limit", "0"], "--limit"),
    (["eval", "-b", "0"], "--batch-size"),
    (["eval", "--threads", "0"], "--threads"),
    (["analyze", "--similarity-resamples", "-1"], "--similarity-resamples"),
    (["train", "--out", "x", "--epochs", "0"], "--epochs"),
    (["eval", "--batch-size", "many"], "--batch-size"),
    (["eval", "--bogus"], "--bogus"),
    (["train"], "--out"),
    (["nosuchcommand"], "nosuchcommand"),
    (["data", "show", "emotion"], "lang"),
])
def test_usage_errors_are_one_error_line(cli, args, names):
    code, out, err = cli(*args)
    line = one_error(code, err)
    assert names in line and "--help" in line, line
    assert out == ""


def test_help_still_works(cli):
    code, out, err = cli("--help")
    assert code == 0 and "Usage: alignlens" in out and "eval" in out and err == ""
    code, out, err = cli("eval", "--help")
    assert code == 0 and "--limit" in out and err == ""
    code, out, err = cli()  # no arguments: the help, as before (click's exit code 2), no error line
    assert code == 2 and "Usage: alignlens" in out and "error" not in err


def test_usage_error_through_the_real_command():
    proc = run_cli("eval", "--limit", "0")
    line = one_error(proc.returncode, proc.stderr)
    assert "--limit" in line


# ---- 14: seeds ------------------------------------------------------------------------------------


def test_seed_range_checked_when_the_config_is_built():
    for bad in (-1, SEED_MAX + 1, 99999999999999999999999, True, 1.5, "3"):
        with pytest.raises(AlignlensError, match="seed must be a whole number from 0 to"):
            EvalConfig(seed=bad)
        with pytest.raises(AlignlensError, match="seed must be a whole number from 0 to"):
            AnalyzeConfig(seed=bad)
    assert EvalConfig(seed=SEED_MAX).seed == SEED_MAX and AnalyzeConfig(seed=0).seed == 0
    assert check_seed(2**32 - 1, high=2**32 - 1) == 2**32 - 1
    with pytest.raises(AlignlensError, match="--seed must be a whole number from 0 to 4294967295"):
        check_seed(2**32, "--seed", high=2**32 - 1)


@pytest.mark.parametrize("command", ["eval", "analyze"])
def test_huge_seed_refused_before_the_model_loads(cli, tiny_folder, tmp_path, command):
    out = tmp_path / "out"
    code, _, err = cli(command, "--model", str(tiny_folder), "--seed", "99999999999999999999999", "--out", str(out))
    assert "seed must be a whole number from 0 to 9223372036854775807" in one_error(code, err)
    assert "loading model" not in err and not out.exists()


# ---- 15: ALIGNLENS_PROGRESS / ALIGNLENS_PROGRESS_SECONDS ------------------------------------------


@pytest.mark.parametrize("variable, value", [
    ("ALIGNLENS_PROGRESS_SECONDS", "abc"), ("ALIGNLENS_PROGRESS_SECONDS", "-1"),
    ("ALIGNLENS_PROGRESS_SECONDS", "nan"), ("ALIGNLENS_PROGRESS", "bogus"),
])
def test_bad_progress_variables_refused_at_start(cli, tiny_folder, tmp_path, variable, value):
    out = tmp_path / "out"
    code, _, err = cli("eval", "--model", str(tiny_folder), "--out", str(out), env={variable: value})
    line = one_error(code, err)
    assert f"{variable}={value!r}" in line, line
    assert "loading model" not in err and not out.exists()
    code, _, err = cli("report", str(tmp_path / "no-results"), env={variable: value})  # checked before the folder
    assert variable in one_error(code, err)


def test_progress_variables_accepted_values(monkeypatch):
    from alignlens.progress import progress_mode, progress_seconds

    for value, terminal, mode in (("", True, "bar"), ("", False, "lines"), ("LINES", True, "lines"),
                                  ("on", False, "bar"), ("0", True, "off"), (" off ", True, "off")):
        monkeypatch.setenv("ALIGNLENS_PROGRESS", value)
        assert progress_mode(terminal) == mode
    for value, seconds in (("", 10.0), ("0", 0.0), ("2.5", 2.5)):
        monkeypatch.setenv("ALIGNLENS_PROGRESS_SECONDS", value)
        assert progress_seconds() == seconds


# ---- 26: --device-map FILE that does not exist --------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    ("nosuch.json", "--device-map: file not found: nosuch.json"),
    ("maps/layers", "--device-map: file not found: maps/layers"),
    ("nosuch", "not one of auto, balanced"),
])
def test_device_map_file_not_found(cli, tiny_folder, tmp_path, value, expected):
    out = tmp_path / "out"
    code, _, err = cli("eval", "--model", str(tiny_folder), "--device-map", value, "--out", str(out))
    assert expected in one_error(code, err)
    assert not out.exists()


def test_device_map_folder_is_not_a_file(tmp_path):
    from alignlens.model import parse_device_map

    (tmp_path / "map.json").mkdir()
    with pytest.raises(AlignlensError, match=r"is a folder, not a JSON file"):
        parse_device_map(str(tmp_path / "map.json"))


# ---- 27: ALIGNLENS_HOME that is a file ----------------------------------------------------------


@pytest.mark.parametrize("below", ["", "sub"])
def test_alignlens_home_must_be_a_folder(cli, tiny_folder, tmp_path, below):
    home_file = tmp_path / "home"
    home_file.write_text("not a folder", encoding="utf-8")
    home = home_file / below if below else home_file
    out = tmp_path / "out"
    code, _, err = cli("eval", "--model", str(tiny_folder), "--out", str(out), env={"ALIGNLENS_HOME": str(home)})
    line = one_error(code, err)
    assert f"ALIGNLENS_HOME={home}" in line and "must be a folder" in line, line
    assert not out.exists() and home_file.read_text(encoding="utf-8") == "not a folder"


# ---- 18: a full disk names the file ------------------------------------------------------------


def test_atomic_writer_names_the_target_of_a_failed_write(tmp_path):
    from alignlens.results.io import atomic_path, write_json

    target = tmp_path / "summary.json"
    with pytest.raises(OSError) as exc:
        with atomic_path(target):
            raise OSError(errno.ENOSPC, "No space left on device")  # what a write on a full disk raises
    assert exc.value.errno == errno.ENOSPC and exc.value.filename == str(target)
    folder = tmp_path / "model"
    with pytest.raises(OSError) as exc:
        with atomic_path(folder, folder=True) as tmp:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "weights.bin"))
    assert exc.value.filename == str(folder / "weights.bin")
    assert list(tmp_path.iterdir()) == []  # no temporary left
    with pytest.raises(FileNotFoundError) as exc:  # an error naming another file keeps its name
        with atomic_path(target):
            open(tmp_path / "missing" / "x")
    assert exc.value.filename == str(tmp_path / "missing" / "x")
    write_json(target, {"ok": 1})  # and an ordinary write still works
    assert target.read_text(encoding="utf-8").strip().startswith("{")


def test_full_disk_during_eval_names_the_file(cli, tiny_folder, tmp_path, monkeypatch):
    """The results file's write fails as on a full disk (ENOSPC, no file name from the kernel)."""
    import builtins

    from alignlens.results import io

    def full_disk_open(file, mode="r", *args, **kwargs):
        handle = builtins.open(file, mode, *args, **kwargs)
        if "w" in mode:
            def write(_):
                raise OSError(errno.ENOSPC, "No space left on device")
            handle.write = write
        return handle

    monkeypatch.setattr(io, "open", full_disk_open, raising=False)
    out = tmp_path / "out"
    code, _, err = cli("eval", "--model", str(tiny_folder), "--tasks", "paws", "--languages", "en", "--limit", "1",
                       "--out", str(out), env={"ALIGNLENS_PROGRESS": "off"})
    line = one_error(code, err, early=False)  # after the model's loading lines
    assert line == f"error: No space left on device ({out / 'predictions.jsonl'})", line
    assert [p for p in out.rglob("*")] == []  # no partial file, no temporary


# ---- 10: hub names without a network --------------------------------------------------------------


def _fake_hub_cache(cache: Path, repo: str, model_folder: Path) -> None:
    """`model_folder`'s files as the Hugging Face cache holds a downloaded `repo` (refs/main -> snapshot)."""
    import shutil

    root = cache / ("models--" + repo.replace("/", "--"))
    snapshot_dir = root / "snapshots" / ("0" * 40)
    shutil.copytree(model_folder, snapshot_dir)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text("0" * 40, encoding="utf-8")


def test_hub_name_without_network(tiny_folder, tmp_path):
    """No hub (an endpoint that refuses connections): a name not in the cache is refused at once
    with nothing written; a cached one loads from the cache without asking the hub."""
    cache = tmp_path / "hub"
    _fake_hub_cache(cache, "tinyorg/tiny", tiny_folder)
    env = {"HF_HUB_CACHE": str(cache), "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0",
           "TRANSFORMERS_OFFLINE": "0", "ALIGNLENS_PROGRESS": "off"}
    out = tmp_path / "out"
    proc = run_cli("eval", "--model", "nosuchorg/nosuchmodel", "--out", str(out), env=env)
    line = one_error(proc.returncode, proc.stderr)
    assert "'nosuchorg/nosuchmodel': not a local folder and not in the Hugging Face cache" in line, line
    assert "no network to download it" in line and not out.exists()
    proc = run_cli("eval", "--model", "tinyorg/tiny", "--tasks", "paws", "--languages", "en", "--limit", "1",
                   "--out", str(out), env=env)
    assert proc.returncode == 0, proc.stderr
    assert (out / "predictions.jsonl").is_file()


def test_hub_offline_mode_refuses_uncached(cli, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    code, _, err = cli("eval", "--model", "nosuchorg/nosuchmodel", "--out", str(tmp_path / "out"))
    assert "offline mode is on (HF_HUB_OFFLINE)" in one_error(code, err)
    assert not (tmp_path / "out").exists()


# ---- 17: Ctrl-C and SIGTERM ---------------------------------------------------------------------

PROGRESS_LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] ", re.MULTILINE)


def _signal_during(args: list[str], sig: int, started: re.Pattern, tmp_path: Path,
                   timeout: float = 300) -> tuple[int, str]:
    """Run `alignlens ARGS`, send `sig` once stderr matches `started`; (exit code, stderr)."""
    err_path = tmp_path / "stderr.txt"
    env = {**os.environ, "ALIGNLENS_PROGRESS": "lines", "ALIGNLENS_PROGRESS_SECONDS": "0"}
    with open(err_path, "w", encoding="utf-8") as err_file:
        # SIG_DFL in the child: a test run started in the background ignores SIGINT (see test_cli_errors)
        proc = subprocess.Popen([sys.executable, "-m", "alignlens.cli.main", *args], stdout=subprocess.DEVNULL,
                                stderr=err_file, env=env,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            if started.search(err_path.read_text(encoding="utf-8")):
                break
            time.sleep(0.1)
        proc.send_signal(sig)
        proc.wait(timeout=timeout)
    return proc.returncode, err_path.read_text(encoding="utf-8")


def _one_interrupted(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("interrupted: ")]
    assert len(lines) == 1 and "Traceback" not in err and "error:" not in err, err
    return lines[0]


EVAL_LONG = ["eval", "--tasks", "snli,emotion,paws", "--limit", "30", "--threads", "1"]


def test_eval_ctrl_c_says_nothing_was_written(tiny_folder, tmp_path):
    out = tmp_path / "out"
    code, err = _signal_during([*EVAL_LONG, "--model", str(tiny_folder), "--out", str(out)], signal.SIGINT,
                               PROGRESS_LINE, tmp_path)
    assert code == 130, err
    assert _one_interrupted(err) == f"interrupted: eval stopped; nothing was written to {out}; run the command again to evaluate"
    assert not out.exists()


def test_eval_sigterm_keeps_earlier_results(tiny_folder, tmp_path):
    from alignlens.results import write_json
    from alignlens.results.manifest import folder_manifest

    out = tmp_path / "out"
    out.mkdir()
    for name in ("predictions.jsonl", "summary.json", "my_notes.txt"):
        (out / name).write_text(f"earlier {name}\n", encoding="utf-8")
    # an earlier eval's manifest (what --force may replace is what it lists; my_notes.txt is the user's)
    write_json(out / "manifest.json", folder_manifest("eval", ["predictions.jsonl", "summary.json"], command="alignlens eval",
                                                      started="2026-01-01T00:00:00"))
    before = snapshot(out)
    code, err = _signal_during([*EVAL_LONG, "--model", str(tiny_folder), "--out", str(out), "--force"],
                               signal.SIGTERM, PROGRESS_LINE, tmp_path)
    assert code == 143, err
    assert f"the earlier results in {out} are unchanged" in _one_interrupted(err)
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == sorted(before)


def test_report_sigterm_keeps_the_earlier_report(tmp_path):
    from synthetic_results import ALL_LANGUAGES

    run = make_synthetic_run(tmp_path / "run", 5, ALL_LANGUAGES, 6, tasks=("emotion",))
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(b"the earlier report")
    code, err = _signal_during(["report", str(run), "--out", str(pdf), "--force"], signal.SIGTERM,
                               re.compile(r"^report [1-9]\d*/", re.MULTILINE), tmp_path)
    assert code == 143, err
    assert _one_interrupted(err) == "interrupted: report stopped; nothing was written (a report already there is unchanged)"
    assert pdf.read_bytes() == b"the earlier report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.pdf", "run", "stderr.txt"]


def test_train_sigterm_says_what_was_kept(tiny_folder, tmp_path):
    """SIGTERM soon after the data are checked: before the first step (while the weights load) the
    command says no checkpoint was saved; in the loop, training saves one and names --resume."""
    out = tmp_path / "trained"
    code, err = _signal_during(["train", "--model", str(tiny_folder), "--out", str(out), "--languages", "de",
                                "--per-language", "600", "--epochs", "3", "--batch-size", "4", "--max-len", "128",
                                "--eval-every", "0", "--threads", "1"], signal.SIGTERM,
                               re.compile(r"^training data de:", re.MULTILINE), tmp_path)
    assert code == 143, err
    line = _one_interrupted(err)
    if (out / "checkpoints" / "last.pt").is_file():
        assert "--resume" in line, line
    else:
        assert line.startswith("interrupted: training stopped before its first step; no checkpoint was saved"), line
