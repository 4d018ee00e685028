"""Fuzzing the inputs the adapter fuzzing does not reach (issue 22): data files (encodings, compression,
broken archives, JSONL value types), base model folders (configs, indexes, shards), damaged sweep, run
and analysis files, names of every character class and length, and a full file system. Every case ends
in success or in one ``lora-analysis <command>: error: ...`` line with exit 2 within a time bound; each
test prints how many cases it tried."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from _tiny_models import peft_adapter, save_base
from bounds import hang_bound
from tiny import tiny_overrides

from lora_analysis import cli
from lora_analysis.analysis.base_weights import INDEX_FILE
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.layout import AnalysisDir, SweepDir
from lora_analysis.texts import read_text_table

ENCODINGS = ("utf-8", "utf-8-sig", "latin-1", "utf-16", "cp1252")
PACKINGS = {"": lambda b: b, ".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress, ".zip": None}
DAMAGE = ("none", "truncated", "bit flipped", "garbage")
LABELS = [1, 0, "pos", "neg", 1.5, None, True, [1], {"a": 1}, "", 2**70, "né"]
TEXTS = ["a fine film", "naïve — “quoted”", 5, None, ["a"], {"t": 1}, "", True, "x" * 300, "\u2028line"]


def one_error_line(err: str, command: str, what) -> str:
    lines = [x for x in err.splitlines() if x.strip() and "note:" not in x and "warn" not in x.lower()]
    assert "Traceback" not in err, (what, err[-800:])
    assert len(lines) == 1 and lines[0].startswith(f"lora-analysis {command}: error: "), (what, lines)
    return lines[0]


def _rows(rng, n=40, typed=False):
    if not typed:
        return [(f"review number {i} {'good' if i % 2 else 'bad'} ünïcode", "fresh" if i % 2 else "rotten")
                for i in range(n)]
    return [(TEXTS[rng.integers(len(TEXTS))] if rng.random() < 0.3 else f"text {i}",
             LABELS[rng.integers(len(LABELS))] if rng.random() < 0.5 else ["pos", "neg"][i % 2]) for i in range(n)]


def _write_data(folder: Path, case: int, rng) -> tuple[Path, str]:
    kind = ".jsonl" if rng.random() < 0.5 else ".csv"
    encoding = ENCODINGS[rng.integers(len(ENCODINGS))]
    packing = list(PACKINGS)[rng.integers(len(PACKINGS))]
    damage = DAMAGE[rng.integers(len(DAMAGE))]
    rows = _rows(rng, typed=kind == ".jsonl" and rng.random() < 0.5)
    if kind == ".csv":
        text = "text,label\n" + "".join(f"\"{t}\",{y}\n" for t, y in rows)
    else:
        text = "\n".join(json.dumps({"text": t, "label": y}, ensure_ascii=False) for t, y in rows) + "\n"
    raw = text.encode(encoding, errors="replace")
    path = folder / f"d{case}{kind}{packing}"
    if packing == ".zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(f"d{case}{kind}", raw)
        raw = path.read_bytes()
    else:
        raw = PACKINGS[packing](raw)
    if damage == "truncated":
        raw = raw[: int(rng.integers(0, len(raw)))]
    elif damage == "bit flipped":
        raw = bytearray(raw)
        raw[int(rng.integers(len(raw)))] ^= 1 << int(rng.integers(8))
        raw = bytes(raw)
    elif damage == "garbage":
        raw = bytes(rng.integers(0, 256, size=200, dtype=np.uint8))
    path.write_bytes(raw)
    return path, f"{kind} {encoding} {packing or 'plain'} {damage}"


def test_fuzzed_data_files_are_read_whole_or_refused_in_one_line(tmp_path):
    rng = np.random.default_rng(22)
    cases, outcomes = 300, {"read": 0, "refused": 0}
    for case in range(cases):
        path, what = _write_data(tmp_path, case, rng)
        with hang_bound(20):
            try:
                table = read_text_table(str(path), "text", "label")
            except LoraAnalysisError as error:
                assert "\n" not in str(error) and str(path) in str(error), (what, str(error))
                outcomes["refused"] += 1
                continue
        outcomes["read"] += 1
        assert all(isinstance(t, str) for t in table.texts), what
        assert not any(t.startswith(("[", "{")) for t in table.texts), (what, "a JSON value read as its repr")
        assert table.labels.dtype == np.int64 and len(table.names) >= 2, what
        if what.split()[1].startswith("utf-8") and what.endswith("none"):
            assert not any("Ã" in t for t in table.texts), (what, "mojibake")
    print(f"fuzzed {cases} data files: {outcomes['read']} read, {outcomes['refused']} refused in one line")
    assert outcomes["read"] >= cases // 20 and outcomes["refused"] > cases // 4  # most cases are damaged


@pytest.mark.parametrize("command", ["train", "analyze"])
def test_a_broken_data_file_is_one_line_for_train_and_analyze(tiny, tmp_path, capsys, command):
    model, _ = tiny
    rng = np.random.default_rng(5)
    adapter = peft_adapter("bert", tmp_path / "adapter", r=2)
    broken = []
    for case in range(40):
        path, what = _write_data(tmp_path, case, rng)
        if not what.endswith("none"):  # damaged files only
            broken.append((path, what))
    for path, what in broken[:6]:
        if command == "train":
            args = ["train", *tiny_overrides(model, path, tmp_path / "runs", 1), "data.text_column=text",
                    "data.label_column=label"]
        else:
            args = ["analyze", str(adapter), f"base={model}", f"data_path={path}", f"out={tmp_path / 'out'}",
                    "progress=false", "w_tables=false"]
        with hang_bound(60):
            code = cli.main(args)
        err = capsys.readouterr().err
        if code == 2:
            assert str(path) in one_error_line(err, command, what)
        else:
            assert code == 0, (what, err[-500:])
    print(f"{command}: {min(6, len(broken))} damaged data files")


def _base_cases(base: Path) -> list[tuple[str, callable]]:
    index = base / INDEX_FILE
    weights = base / "model.safetensors"
    key = "encoder.layer.0.attention.self.query.weight"

    def config(value):
        return lambda: (base / "config.json").write_text(value)

    def index_with(weight_map):
        def write():
            index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        return write

    def cut():
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])

    def flip():
        data = bytearray(weights.read_bytes())
        data[20] ^= 0x55
        weights.write_bytes(bytes(data))

    def outside_link():
        weights.rename(base / "real.safetensors")
        (base / "model.safetensors").symlink_to("/etc/hostname")
        index_with({key: "model.safetensors"})()

    return [
        ("config a list", config("[1, 2]")), ("config a string", config('"bert"')), ("config null", config("null")),
        ("config broken JSON", config("{\"model_type\": ")), ("config not UTF-8", config("\udcff")),
        ("index weight_map a list", index_with(["x"])), ("index weight_map a string", index_with("x")),
        ("index shard ../../etc/passwd", index_with({key: "../../../../etc/passwd"})),
        ("index shard /etc/passwd", index_with({key: "/etc/passwd"})),
        ("index shard missing", index_with({key: "model-00002.safetensors"})),
        ("index shard an int", index_with({key: 5})), ("index not JSON", lambda: index.write_text("{")),
        ("weights truncated", cut), ("weights bit flipped", flip), ("shard a link out of the folder", outside_link),
    ]


def test_fuzzed_base_folders_are_used_or_refused_in_one_line(tmp_path, capsys):
    adapter = peft_adapter("bert", tmp_path / "adapter", r=2)
    pristine = save_base("bert", tmp_path / "pristine")
    capsys.readouterr()  # the save's progress bar
    cases = _base_cases(tmp_path / "base")
    refused = 0
    for n, (what, damage) in enumerate(cases):
        base = tmp_path / "base"
        shutil.rmtree(base, ignore_errors=True)
        shutil.copytree(pristine, base)
        try:
            damage()
        except UnicodeEncodeError:
            (base / "config.json").write_bytes(b"\xff\xfe{")
        with hang_bound(60):
            code = cli.main(["analyze", str(adapter), f"base={base}", f"out={tmp_path / f'out{n}'}", "progress=false",
                             "input_stats=false"])
        err = capsys.readouterr().err
        if code == 2:
            refused += 1
            line = one_error_line(err, "analyze", what)
            if "etc" in what or "out of the folder" in what:
                assert "outside the model folder" in line, (what, line)
        else:
            assert code == 0 and "etc" not in what and "index" not in what, (what, err[-500:])
    print(f"fuzzed {len(cases)} base folders: {refused} refused in one line")
    assert refused >= len(cases) - 2  # a bit flip in the weights' values may leave a readable file


@pytest.fixture(scope="module")
def sweep2(tiny, tmp_path_factory):
    """A tiny sweep of two runs (r=2, 4) with its analysis."""
    root = tmp_path_factory.mktemp("sweep2")
    model, csv = tiny
    for r in (2, 4):
        assert cli.main(["train", *tiny_overrides(model, csv, root, 2), "name=s", f"lora.r={r}"]) == 0
    assert cli.main(["analyze", str(root / "s"), "progress=false"]) == 0
    return root / "s"


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "emptied":
        path.write_bytes(b"")
    elif how == "a JSON list":
        path.write_text("[1, 2, 3]")
    else:
        path.write_bytes(b"\x00\xffnot this file\n" * 3)


@pytest.mark.slow  # a report per case: about 7 s each
def test_damaged_sweep_run_and_analysis_files_are_reported_or_refused_in_one_line(sweep2, tmp_path, capsys):
    files = sorted(p.relative_to(sweep2) for p in sweep2.rglob("*") if p.is_file() and not p.name.startswith("."))
    files = [f for f in files if f.parts[0] != SweepDir.REPORT]
    rng = np.random.default_rng(7)
    cases = [(f, how) for f in files for how in ("truncated", "emptied", "a JSON list", "garbage")]
    chosen = [cases[i] for i in sorted(rng.choice(len(cases), size=min(20, len(cases)), replace=False))]
    outcomes = {0: 0, 2: 0}
    for n, (name, how) in enumerate(chosen):
        copy = shutil.copytree(sweep2, tmp_path / f"s{n}")
        _damage(copy / name, how)
        with hang_bound(120):
            code = cli.main(["report", str(copy), "analyze=false"])
        err = capsys.readouterr().err
        assert code in outcomes, (name, how, code, err[-800:])
        outcomes[code] += 1
        if code == 2:
            one_error_line(err, "report", (name, how))
        shutil.rmtree(copy)
    print(f"damaged {len(chosen)} sweep files: {outcomes[0]} reported, {outcomes[2]} refused in one line")


NAMES = ["a`b", "[x](javascript:alert(1))", "line\n# Heading", "cost $x^2$ here", "<script>alert(1)</script>",
         "tab\tand\u2028sep", "spaces and 'quotes\"", "ünïcödé-名前", "x" * 240, "-leading-dash", "emoji-🙂"]


def test_names_of_every_kind_reach_the_report_inert(tmp_path, capsys):
    adapter = peft_adapter("bert", tmp_path / "pristine", r=2)
    folder = tmp_path / "adapters"
    folder.mkdir()
    for name in NAMES:
        shutil.copytree(adapter, folder / name)
    raw = os.fsencode(folder) + b"/bad\xff\xfe"
    shutil.copytree(os.fsencode(adapter), raw)
    with hang_bound(300):
        code = cli.main(["report", str(folder)])
    assert code == 0, capsys.readouterr().err[-800:]
    markdown = (folder / "report" / "report.md").read_text()
    html = (folder / "report" / "report.html").read_text()
    assert not re.search(r"(?<!\\)\]\(javascript:", markdown), "a link made of a name"
    assert "\n# Heading" not in markdown and "<script>" not in markdown
    assert "<script>" not in html and "bad\\xff\\xfe" in markdown
    print(f"{len(NAMES) + 1} adapter names reported")


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


def test_a_full_disk_is_one_line_and_leaves_nothing_torn(sweep2, tmp_path, capsys):
    full = tmp_path / "full"
    if not _mount_tmpfs(full, "96k"):
        pytest.skip("cannot mount a small tmpfs here (needs root and mount): the full-disk case is not tried")
    try:
        cases = 0
        for command, args in (("analyze", [str(sweep2), f"out={full / 'analysis'}", "progress=false"]),
                              ("report", [str(sweep2), f"out={full / 'report'}"]),
                              ("compare", [str(next(p for p in sweep2.iterdir() if p.name.startswith("r2"))),
                                           str(next(p for p in sweep2.iterdir() if p.name.startswith("r4"))),
                                           f"out={full / 'compare'}", "progress=false"])):
            cases += 1
            with hang_bound(120):
                assert cli.main([command, *args]) == 2
            line = one_error_line(capsys.readouterr().err, command, command)
            assert "no space left on the device" in line or "No space left on device" in line, line
            torn = [p for p in full.rglob("*") if p.name.endswith((".tmp", ".old"))]
            assert not torn, torn
            analysis = AnalysisDir(full / "analysis")
            assert not analysis.exists() or analysis.meta_path.stat().st_size  # old or whole, never torn
        print(f"full disk: {cases} commands refused in one line")
    finally:
        subprocess.run(["umount", str(full)], check=False)
