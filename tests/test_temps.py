"""Temporaries of a killed run are removed; a live run's never are (issue 19 follow-up: a report
rendered into /tmp removed another run's staging folder there)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from alignlens.results.io import TEMP_PREFIX, clean_stale_temps, temp_prefix


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no such process now (a reuse within the test is very unlikely)


def test_temp_prefix_names_its_owner():
    assert temp_prefix("summary.json") == f"{TEMP_PREFIX}{os.getpid()}@{socket.gethostname()}.summary.json."


def test_only_dead_owners_temporaries_are_removed(tmp_path):
    host = socket.gethostname()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            "live": f"{TEMP_PREFIX}{live.pid}@{host}.new.x1",  # another run, still writing
            "mine": f"{TEMP_PREFIX}{os.getpid()}@{host}.new.x2",  # this process's own
            "dead": f"{TEMP_PREFIX}{_dead_pid()}@{host}.new.x3",  # a killed run's
            "untagged": f"{TEMP_PREFIX}summary.json.x4",  # an older version's or a torchrun-agreed name
            "foreign": f"{TEMP_PREFIX}1@elsewhere.example.new.x5",  # another host (shared file system)
            "old_foreign": f"{TEMP_PREFIX}1@elsewhere.example.new.x6",
        }
        sub = tmp_path / "base"
        sub.mkdir()
        for key, name in names.items():
            (sub / name).mkdir()
        week_ago = time.time() - 7 * 24 * 3600
        os.utime(sub / names["old_foreign"], (week_ago, week_ago))
        # a folder the caller does not lock (a report's parent): only the dead run's go
        removed = {p.name for p in clean_stale_temps(tmp_path, locked=False)}
        assert removed == {names["dead"]}
        # a folder the caller holds the lock of: also untagged ones and old ones of other hosts
        removed = {p.name for p in clean_stale_temps(tmp_path)}
        assert removed == {names["untagged"], names["old_foreign"]}
        assert sorted(p.name for p in sub.iterdir()) == sorted([names["live"], names["mine"], names["foreign"]])
    finally:
        live.kill()
        live.wait()
    # once its process has ended, the other run's temporary is a leftover too
    assert {p.name for p in clean_stale_temps(tmp_path, locked=False)} == {names["live"]}
