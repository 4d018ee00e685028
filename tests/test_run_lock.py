"""One run, one trainer (issue 12): two sweeps launched at once into one folder train each run once, and the
sweep table holds each run once; a run another live process holds is skipped with a note, a stale lock
(its holder died) does not block."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from tiny import tiny_overrides

from lora_analysis import cli
from lora_analysis.atomic import try_lock
from lora_analysis.layout import RunDir
from lora_analysis.train.sweep import run_name

RUNS = ["r1", "r2", "r3"]
# Holds the lock on argv[1] until its stdin closes (a live process that is training the run).
HOLDER = "import sys; from lora_analysis.atomic import try_lock\n" \
         "with try_lock(sys.argv[1]) as other:\n    print(other, flush=True); sys.stdin.read()"


def _trained(stdout: str, sweep: Path) -> dict[str, int]:
    """How often each run logged its final test scores (once per training that finished)."""
    return {run: len(re.findall(rf"{re.escape(str(sweep / run))}: \{{'test_", stdout)) for run in RUNS}


@pytest.mark.slow
def test_two_sweeps_at_once_train_each_run_once(tiny, tmp_path):
    model, csv = tiny
    fixed = [o for o in tiny_overrides(model, csv, tmp_path / "runs", steps=6) if not o.startswith("lora.r=")]
    command = [sys.executable, "-m", "lora_analysis", "train", "-m", "lora.r=1,2,3", *fixed]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(cli.__file__).parents[2]), *sys.path])}
    sweeps = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
              for _ in range(2)]
    outputs = [process.communicate(timeout=600) for process in sweeps]
    assert [process.returncode for process in sweeps] == [0, 0], [err for _, err in outputs]
    sweep = tmp_path / "runs" / "default"
    trained = _trained("".join(out for out, _ in outputs), sweep)
    assert trained == dict.fromkeys(RUNS, 1), (trained, outputs)
    busy = "".join(err for _, err in outputs).count("is being trained by another process")
    done = "".join(out for out, _ in outputs).count("finished already, skipped")
    print(f"two sweeps at once: {busy} runs skipped as busy, {done} as done")
    assert busy + done == len(RUNS), outputs  # every run: trained by one sweep, skipped by the other
    table = pd.read_parquet(sweep / "runs.parquet")
    assert sorted(table["run"]) == RUNS
    assert not list(sweep.glob(f"*/{RunDir.LOCK}"))  # released, and removed, at the end of each run


def _hold(path: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "None"  # it holds the lock
    return holder


def test_a_run_held_by_a_live_process_is_skipped_then_taken(tiny, tmp_path, capsys):
    model, csv = tiny
    overrides = [*tiny_overrides(model, csv, tmp_path / "runs", steps=1), "name=held"]
    run = RunDir(tmp_path / "runs" / "held" / run_name(overrides))
    holder = _hold(run.lock_path)
    try:
        assert cli.main(["train", *overrides]) == 0  # skipped, not failed
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"lora-analysis train: note: {run.path} is being trained by another process "
                       f"(pid {holder.pid}); skipped"]
        assert sorted(p.name for p in run.path.iterdir()) == [RunDir.LOCK]  # nothing of the run written
        with try_lock(run.lock_path) as other:
            assert other == holder.pid
    finally:
        holder.stdin.close()
        holder.wait()
    with try_lock(run.lock_path) as other:  # released: this process takes it
        assert other is None and run.lock_path.read_text().strip() == str(os.getpid())
    assert not run.lock_path.exists()


def test_a_stale_lock_does_not_block(tmp_path):
    path = tmp_path / "run" / RunDir.LOCK
    holder = _hold(path)
    holder.send_signal(signal.SIGKILL)  # died holding it: the file stays, the lock goes with the process
    holder.wait()
    assert path.read_text().strip() == str(holder.pid)
    with try_lock(path) as other:
        assert other is None
