"""The notebooks as committed: no outputs (they are executed by ctest, not stored run), each ends
with the takeaways, and every figure is drawn with labelled axes and a title."""
import json
import re

import pytest

from conftest import SOURCE_DIR

NOTEBOOKS = sorted((SOURCE_DIR / "notebooks").glob("*.ipynb"))


def test_the_five_notebooks_are_there():
    names = [p.stem for p in NOTEBOOKS]
    for expected in ["01-patterns", "02-receptive-fields", "03-engines", "05-your-pattern"]:
        assert expected in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_clean_and_ends_with_takeaways(path):
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name}: commit it without outputs"
    last = "".join(nb["cells"][-1]["source"])
    assert nb["cells"][-1]["cell_type"] == "markdown" and last.startswith("## Takeaways"), path.name
    assert nb["cells"][0]["cell_type"] == "markdown" and "".join(nb["cells"][0]["source"]).startswith("# ")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_plot_has_labels_and_a_title(path):
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] != "code" or "plt.subplots" not in source:
            continue
        # Each cell that makes a figure labels x and y and gives a title (set_title or suptitle), itself
        # or through the notebook's draw() helper, which does both.
        if re.search(r"^\s*draw\(", source, re.M) and "def draw(" not in source:
            continue
        assert re.search(r"set_xlabel\(", source) and re.search(r"set_ylabel\(", source), f"{path.name}: unlabelled axes in\n{source[:200]}"
        assert re.search(r"set_title\(|suptitle\(", source), f"{path.name}: a figure without a title in\n{source[:200]}"
