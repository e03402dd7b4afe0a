"""The suite's own helpers catch what they exist to catch (so that a case cannot pass vacuously)."""
import os

import pytest

from conftest import refused, snapshot, unchanged, write


def test_unchanged_sees_a_new_file(scratch):
    with pytest.raises(AssertionError, match="added"):
        with unchanged(scratch):
            write(scratch, "new.npz", "x")


def test_unchanged_sees_a_changed_file_and_a_replaced_link(scratch):
    f = write(scratch, "a.pat", "heads 1\n")
    with pytest.raises(AssertionError, match="changed"):
        with unchanged(scratch):
            f.write_text("heads 2\n")
    target = write(scratch, "t", "x")
    os.symlink(target, scratch / "link")
    with pytest.raises(AssertionError, match="changed"):
        with unchanged(scratch):
            os.remove(scratch / "link")
            write(scratch, "link", "x")


def test_refused_sees_a_crash():
    from conftest import Ran
    with pytest.raises(AssertionError):
        refused(Ran(-11, "", ""), code=1)
    with pytest.raises(AssertionError):
        refused(Ran(1, "", "terminate called without an active exception"))
    with pytest.raises(AssertionError):
        refused(Ran(1, "", "error: something"), "other words")


def test_snapshot_lists_hidden_files(scratch):
    write(scratch, ".x.npz.tmp-1-abc", "x")
    assert ".x.npz.tmp-1-abc" in snapshot(scratch)
