"""bench/selection_parts.py (where the pooled gate's selection spends its time) on the CPU at a tiny
shape: it times the selection and the attention under its blocks, lists the profiled operations
with their time a call, and writes the table whole to -o; a bad size is refused before anything runs."""
import pathlib
import sys

import pytest

torch = pytest.importorskip("torch")
REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import selection_parts  # noqa: E402


def test_the_table_names_the_selection_its_operations_and_is_written_whole(tmp_path, capsys):
    out = tmp_path / "parts.md"
    assert selection_parts.main(["--n", "256", "--heads", "2", "--d", "32", "--block", "32", "--runs", "2", "--device", "cpu",
                                 "-o", str(out)]) == 0
    text = out.read_text()
    assert text == capsys.readouterr().out.rstrip("\n") + "\n"
    assert "Shape [1, 2, 256, 32] float32, blocks of 32" in text
    assert "- selection (PooledGate.top_k): " in text and "- sparse attention under its blocks" in text
    table = [line for line in text.splitlines() if line.startswith("| ") and "`" in line]
    assert table and all(float(line.split("|")[1]) > 0 for line in table)
    assert not (tmp_path / "parts.md.tmp").exists()


def test_a_bad_size_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        selection_parts.main(["--n", "16", "--block", "64", "--device", "cpu"])
    assert e.value.code == 2 and "--n must be at least --block (64)" in capsys.readouterr().err
