"""`sparsa stats` on content-based heads (lsh, anchors, favor): their pairs are decided per input, so
the table, --json, --brief and --png must say so plainly and give the fixed part's figures only as
the fixed part's (an lsh head alone once read "empty rows 256", as if its queries had no key)."""
import json
import struct
import zlib

from conftest import PATTERNS, ok, run, write

# Head 0: lsh alone; head 1: a window united with lsh; head 2: favor; head 3: a window (fixed).
MIXED = ("heads 4\nblock 16\n"
         "attend = lsh(8, rounds = 2)\n"
         "attend[head 1] = window(4) | lsh(8, rounds = 2)\n"
         "attend[head 2] = favor(32)\n"
         "attend[head 3] = window(4)\n")


def rows(out):
    """The table's lines, by their label (the first 14 characters, stripped)."""
    return {line[:14].strip(): line for line in out.splitlines() if line.startswith(("L0 ", "  fixed", "fixed total", "total"))}


def test_table_says_pairs_are_decided_per_input(scratch):
    write(scratch, "mixed.pat", MIXED)
    ran = run(["stats", "mixed.pat", "--n", "256"], cwd=scratch)
    ok(ran)
    lines = ran.stdout.splitlines()
    table = rows(ran.stdout)
    # lsh alone: a sentence, no figures at all (no "empty rows 256")
    assert table["L0 H0 lsh"].split() == ["L0", "H0", "lsh", "pairs", "decided", "per", "input", "(sparsa", "run", "counts",
                                          "them);", "no", "fixed", "part"]
    # lsh | window: the sentence, then the window's figures on a row labelled as the fixed part
    i = next(i for i, line in enumerate(lines) if line.startswith("L0 H1 +lsh"))
    assert "pairs decided per input" in lines[i] and lines[i].endswith("its fixed part:")
    fixed_part = lines[i + 1].split()
    window = lines[next(j for j, line in enumerate(lines) if line.startswith("L0 H3 "))].split()
    assert fixed_part[:2] == ["fixed", "part"]
    assert fixed_part[2:] == window[2:]          # the same figures as the window head's own row
    assert fixed_part[-1] == "0"                  # the window leaves no row empty
    # favor: no pairs, no mask
    assert "FAVOR+ estimates attention over every key: no pairs, no mask" in table["L0 H2 favor"]
    # the total is the fixed total; its empty rows are the fixed heads' (none here)
    total = table["fixed total"].split()
    assert total[-1] == "0"
    assert int(total[5]) == 2 * int(window[5])    # kept pairs: the window head and the fixed part
    assert "total " not in [line[:6] for line in lines]
    assert "fixed total: the fixed heads and the fixed parts of content-based heads" in ran.stdout
    assert "3 of 4 heads are content-based" in ran.stdout


def test_a_script_without_content_heads_is_unchanged(scratch):
    write(scratch, "window.pat", "heads 2\nblock 16\nattend = window(4)\n")
    ran = run(["stats", "window.pat", "--n", "256"], cwd=scratch)
    ok(ran)
    assert "total " in ran.stdout and "fixed total" not in ran.stdout and "per input" not in ran.stdout
    doc = json.loads(run(["stats", "window.pat", "--n", "256", "--json"], cwd=scratch).stdout)
    assert all(m["pairs"] == "fixed" and "fixed_part" not in m and "kept_pairs" in m for m in doc["masks"])


def test_json_keeps_the_fixed_part_apart(scratch):
    write(scratch, "mixed.pat", MIXED)
    ran = run(["stats", "mixed.pat", "--n", "256", "--json"], cwd=scratch)
    ok(ran)
    doc = json.loads(ran.stdout)
    heads = doc["masks"]
    assert [m["pairs"] for m in heads] == ["per input", "per input", "per input", "fixed"]
    # content heads carry no figures of their own: a reader cannot take the fixed part's for the head's
    for m in heads[:3]:
        assert "empty_rows" not in m and "kept_pairs" not in m and "density" not in m
    assert heads[0]["fixed_part"]["kept_pairs"] == 0 and heads[0]["fixed_part"]["empty_rows"] == 256
    assert heads[1]["fixed_part"]["kept_pairs"] == heads[3]["kept_pairs"] > 0
    assert heads[2]["fixed_part"] is None and heads[2]["content"]["kind"] == "favor"
    assert heads[3]["empty_rows"] == 0
    assert doc["counts"] == "fixed part only" and doc["content_heads"] == 3
    assert doc["total"]["kept_pairs"] == 2 * heads[3]["kept_pairs"]
    assert doc["total"]["empty_rows"] == 0        # head 0's 256 rows get their keys per input


def test_brief_and_the_examples(scratch):
    ran = run(["stats", PATTERNS / "reformer_lsh.pat", PATTERNS / "performer_favor.pat", "--n", "4096", "--brief"])
    ok(ran)
    assert ran.stdout.count("content-based heads: pairs decided per input; counted above by the fixed part") == 2
    ran = run(["stats", PATTERNS / "reformer_lsh.pat", "--n", "4096"])
    ok(ran)
    assert ran.stdout.count("no fixed part") == 24 and ran.stdout.count("  fixed part ") == 24
    assert "4096\n" not in ran.stdout             # no head reads "empty rows 4096"


def png_pixels(path):
    """(width, height, rows of RGB bytes) of an 8-bit RGB PNG, as sparsa writes them."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, idat, width, height = 8, b"", 0, 0
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert (depth, colour) == (8, 2)
        elif kind == b"IDAT":
            idat += body
        at += 12 + length
    raw, stride, out, prev = zlib.decompress(idat), 3 * width + 1, [], bytearray(3 * width)
    for y in range(height):
        f, line = raw[y * stride], bytearray(raw[y * stride + 1:(y + 1) * stride])
        for x in range(len(line)):
            a = line[x - 3] if x >= 3 else 0
            b, c = prev[x], prev[x - 3] if x >= 3 else 0
            p = a + b - c
            pred = [0, a, b, (a + b) // 2, a if abs(p - a) <= abs(p - b) and abs(p - a) <= abs(p - c) else b if abs(p - b) <= abs(p - c) else c][f]
            line[x] = (line[x] + pred) & 0xFF
        out.append(bytes(line))
        prev = line
    return width, height, out


def test_png_hatches_content_heads(scratch):
    write(scratch, "mixed.pat", MIXED)
    ok(run(["stats", "mixed.pat", "--n", "256", "--png", "mixed.png"], cwd=scratch))
    write(scratch, "window.pat", "heads 4\nblock 16\nattend = window(4)\n")
    ok(run(["stats", "window.pat", "--n", "256", "--png", "window.png"], cwd=scratch))
    _, _, mixed = png_pixels(scratch / "mixed.png")
    _, h_window, window = png_pixels(scratch / "window.png")
    hatch = bytes([0x9A, 0x9A, 0x9A])

    def hatch_pixels(img):
        return sum(row[i:i + 3] == hatch for row in img for i in range(0, len(row), 3))
    # the chart of a fixed script has no hatching; the mixed one hatches its three content heads
    # in both panels, and its title has one more line
    assert hatch_pixels(window) == 0
    assert hatch_pixels(mixed) > 3 * 2 * 200
    assert len(mixed) > h_window
