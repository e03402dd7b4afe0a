"""The language additions of issue 18 under hostile scripts, from the CLI.

random(r, seed = s, outside = P) and every(p, offset = o, width = w): every wrong type, sign or
size is refused by every command that reads a script, with the place, the problem and how to
fix it, and nothing written; extreme sizes (r far beyond the row, a period near 2^63, outside
nested thousands deep, a P with no candidate left) compile or stop with a diagnostic in bounded
time; the BigBird example gains exactly 3 blocks per non-global row through `sparsa compile`
and its mask file. Each case asserts the exit code, the message's key words, and what was written.
"""
import os

import pytest

from conftest import PATTERNS, ok, refused, run, unchanged, write

COMMANDS = [["check"], ["compile", "--n", "256", "-o", "out.npz"], ["stats", "--n", "256"], ["show", "--n", "256"],
            ["reach", "--n", "256"], ["run", "--n", "256"]]


def cli(scratch, command, name):
    """`sparsa COMMAND name ARGS` for one of COMMANDS (the script goes after the command)."""
    return run([command[0], name] + command[1:], cwd=scratch)


# [SECTION] Bad input: refused everywhere, with a caret, nothing written

BAD = [
    ("attend = band(1) | random(3, outside = first(128))\n", "bad.pat:1:40",
     ["random: outside takes a pattern", "got a token set", "global(S), rows(S) or columns(S)", "^~~~~~~~~~"]),
    ("attend = band(1) | random(3, outside = 0..128)\n", "bad.pat:1:40", ["outside takes a pattern", "got a range"]),
    ("attend = random(3, outside = 2.5)\n", "bad.pat:1:30", ["outside takes a pattern", "got a real number"]),
    ('attend = random(3, outside = "band(1)")\n', "bad.pat:1:30", ["outside takes a pattern", "got a string"]),
    ("attend = band(1) | random(3, outside = lsh(buckets = 8) | band(1))\n", "bad.pat:1:40",
     ["outside must be a fixed pattern", "lsh(...) depends on Q and K", "leave lsh out"]),
    ("attend = random(3, outsde = band(1))\n", "bad.pat:1:20", ["random has no parameter 'outsde'", "did you mean 'outside'?"]),
    ("attend = random(3, outside = band(1), outside = band(2))\n", "bad.pat:1:39", ["'outside' is given twice"]),
    ("attend = random(3, seed = 1, band(1))\n", "bad.pat:1:30", ["positional arguments come before keyword arguments"]),
    ("attend = random(-1, outside = band(1))\n", "bad.pat:1:17", ["random: r must be at least 0; got -1"]),
    ("attend = global(every(8, offset = 2, width = 9))\n", "bad.pat:1:46",
     ["every: width = 9 is more than the period p = 8", "use 0 <= w <= p"]),
    ("attend = global(every(0, width = 1))\n", "bad.pat:1:23", ["every: p must be at least 1; got 0"]),
    ("attend = columns(every(-4, width = 2))\n", "bad.pat:1:24", ["every: p must be at least 1; got -4"]),
    ("attend = global(every(8, width = -1))\n", "bad.pat:1:34", ["every: width must be at least 0; got -1"]),
    ("attend = global(every(8, width = 2.5))\n", "bad.pat:1:34", ["width must be an integer; got 2.5", "floor(...)"]),
    ("attend = global(every(8, width = band(1)))\n", "bad.pat:1:34", ["width must be an integer; got a pattern"]),
    ("attend = global(every(8, offset = -1, width = 2))\n", "bad.pat:1:35", ["every: offset must be at least 0; got -1"]),
    ("attend = global(every(8, widht = 2))\n", "bad.pat:1:26", ["every has no parameter 'widht'", "did you mean 'width'?"]),
    ("attend = every(8, width = 2)\n", "bad.pat:1:10", ["pattern"]),
    ("attend = global(every(8, 0, 2, 1))\n", "bad.pat:1:32", ["every takes at most 3 arguments"]),
    ("heads 9\nattend = sparse_transformer_fixed(64, 8, patterns = 9)\n", "<prelude>:",
     ["every: offset must be at least 0; got -8"]),
    ("attend = sparse_transformer_fixed(64, 8, patterns = 0)\n", "<prelude>:", ["division by zero"]),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize("text, place, words", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_arguments_are_refused_with_a_caret_in_every_command(scratch, command, text, place, words):
    write(scratch, "bad.pat", text)
    with unchanged(scratch):
        r = cli(scratch, command, "bad.pat")
    refused(r, place, "error:", *words)
    assert "^" in r.out, r.out


# [SECTION] Extreme sizes: compile or stop with a diagnostic, in bounded time

EXTREME = [
    # r far beyond the row: every candidate, once.
    "attend = band(1) | random(1000000000000000000, seed = 9223372036854775807, outside = band(1))\n",
    # P keeps everything: no candidate anywhere; the line keeps P.
    "attend = band(0) | random(3, outside = dense)\n",
    # P is itself a draw, and P's P too.
    "attend = random(2, outside = random(2, outside = random(2, outside = band(0))))\n",
    # Periods and widths near 2^63: empty sets or every token from the offset on.
    "attend = band(0) | global(every(9223372036854775807, offset = 9223372036854775807, width = 9223372036854775807))\n",
    "attend = band(0) | columns(every(4611686018427387904, offset = 3, width = 4611686018427387904))\n",
    "attend = band(0) | columns(every(1, width = 0))\n",
    "causal\nattend = random(5, outside = window(left = -1, right = 200))\n",
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize("text", EXTREME, ids=[str(i) for i in range(len(EXTREME))])
def test_extreme_sizes_compile_in_every_command(scratch, command, text):
    write(scratch, "big.pat", text)
    r = cli(scratch, command, "big.pat")
    ok(r)
    for bad in ("internal error", "terminate called", "Segmentation"):
        assert bad not in r.out


def outside_chain(count):
    lines = ["let p1 = band(0)"] + [f"let p{i} = random(1, seed = {i}, outside = p{i - 1})" for i in range(2, count + 1)]
    return "\n".join(lines + [f"attend = p{count} | band(0)"]) + "\n"


def test_outside_nested_3000_deep_compiles_and_10000_stops_at_the_part_limit(scratch):
    write(scratch, "deep.pat", outside_chain(3000))
    ok(run(["stats", "deep.pat", "--n", "4096", "--brief"], cwd=scratch, timeout=120))
    write(scratch, "deeper.pat", outside_chain(10001))
    with unchanged(scratch):
        r = run(["compile", "deeper.pat", "--n", "4096", "-o", "out.npz"], cwd=scratch, timeout=120)
    refused(r, "deeper.pat:", "this pattern has more than 10000 parts")


def test_an_outside_with_no_candidates_at_a_million_tokens_answers_quickly(scratch):
    # P keeps every block of every row as FULL runs: the draw is skipped without walking them.
    write(scratch, "full.pat", "attend = band(1) | random(3, outside = dense | causal)\n")
    r = run(["stats", "full.pat", "--n", "1048576", "--brief"], cwd=scratch, timeout=60)
    ok(r, "full.pat")


# [SECTION] The BigBird example through the CLI and its mask file

def blocks_per_row(npz_path):
    """Per (layer, head), the kept key blocks of each query block, read with numpy alone
    (docs/formats.md: row_ptr [U, Q + 1] holds absolute offsets into col_idx)."""
    import numpy as np
    with np.load(npz_path) as z:
        row_ptr, col_idx, mask_index = z["row_ptr"], z["col_idx"], z["mask_index"]
        return [[col_idx[row_ptr[u][i]:row_ptr[u][i + 1]].tolist() for i in range(row_ptr.shape[1] - 1)]
                for u in mask_index.reshape(-1)]


def test_bigbird_example_gains_exactly_3_blocks_per_non_global_row_in_the_mask_file(scratch):
    local = write(scratch, "local.pat", "block 64\nheads 8\nlayers 6\nattend = band(1) | global(first(2 * B))\n")
    for n in (4096, 3000):
        ok(run(["compile", PATTERNS / "bigbird.pat", "--n", str(n), "-o", "bigbird.npz"], cwd=scratch))
        ok(run(["compile", local, "--n", str(n), "-o", "local.npz"], cwd=scratch))
        with_random = blocks_per_row(scratch / "bigbird.npz")
        base = blocks_per_row(scratch / "local.npz")
        assert len(with_random) == 48 and len(with_random[0]) == -(-n // 64)
        for i, mask in enumerate(with_random):
            for qb, row in enumerate(mask):
                kept, before = set(row), set(base[i][qb])
                assert before <= kept, (n, i, qb)
                assert len(kept - before) == (0 if qb < 2 else 3), (n, i, qb, sorted(kept - before))
        os.remove(scratch / "bigbird.npz")
        os.remove(scratch / "local.npz")
