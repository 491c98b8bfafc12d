"""Every paper's `reproduce --budget smoke` runs on a handful of real images and writes a complete report.

The values are not checked (a smoke budget trains for seconds); the files, the tables' shape and their ranges are.
"""
import json
import math
import re
import subprocess
import sys

import matplotlib.pyplot as plt
import pytest

from medanomaly.errors import MedAnomalyError
from medanomaly.reproduce import PAPERS, Report, Versus, get_paper, reproduce

# Columns whose figures are fractions: they must lie in [0, 1].
FRACTION = re.compile(r"AUROC|AUPRC|AUC|accuracy|sensitivity|specificity|Dice|hit rate|F1|precision|recall", re.I)


def _numbers(cell):
    if isinstance(cell, dict):  # Versus, as written to results.json
        return [value for value in (cell["ours"], cell["paper"]) if isinstance(value, (int, float))]
    return [cell] if isinstance(cell, (int, float)) and not isinstance(cell, bool) else []


@pytest.mark.parametrize("name", list(PAPERS))
def test_smoke_budget_writes_every_table_and_figure(name, data_root, tmp_path, one_torch_thread):
    out = tmp_path / "reports" / name
    report_md = reproduce(name, data_root, out, budget="smoke", work=tmp_path / "work")
    text = report_md.read_text(encoding="utf-8")
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["paper"] == name and results["budget"] == "smoke"
    assert results["tables"] and results["figures"] and results["deviations"]
    for figure in results["figures"]:
        assert (out / "figures" / f"{figure}.png").stat().st_size > 1000
        assert f"figures/{figure}.png" in text
    ours_seen = 0
    for table in results["tables"]:
        assert table["rows"], table["title"]
        assert f"### {table['title']}" in text
        for row in table["rows"]:
            assert len(row) == len(table["columns"])
            for column, cell in zip(table["columns"], row):
                if isinstance(cell, dict):
                    ours_seen += cell["ours"] is not None
                for value in _numbers(cell):
                    assert math.isfinite(value) or column.lower().startswith("p"), (table["title"], column, value)
                    if FRACTION.search(column) and math.isfinite(value):
                        assert 0.0 <= value <= 1.0, (table["title"], column, value)
    assert ours_seen, "no table holds a figure of ours beside the paper's"
    assert "## Deviations from the paper" in text
    assert not any(path.name.endswith(".partial") for path in out.parent.iterdir())


def test_unknown_paper_is_refused_with_the_list(data_root, tmp_path):
    with pytest.raises(MedAnomalyError, match="gcm"):
        get_paper("no-such-paper")
    done = subprocess.run([sys.executable, "-m", "medanomaly", "reproduce", "gcm", "--data", str(tmp_path / "none"),
                           "--budget", "smoke", "--out", str(tmp_path / "r")], capture_output=True,
                          encoding="utf-8", errors="replace", timeout=300)
    assert done.returncode == 2 and "data folder not found" in done.stderr
    assert not (tmp_path / "r").exists()


def test_a_failed_run_keeps_the_previous_report(tmp_path):
    out = tmp_path / "gcm"
    first = Report("gcm", "A title", "A citation", "smoke", out)
    first.table("Image AUROC", ["model", "AUROC"], [["ours", Versus(0.9, 0.85)]])
    figure, axis = plt.subplots()
    axis.plot([0, 1], [0, 1])
    first.figure("roc", figure, "a diagonal")
    first.deviation("fewer films")
    first.write()
    before = (out / "report.md").read_text(encoding="utf-8")
    assert "| ours | 0.900 (0.850) |" in before

    second = Report("gcm", "A title", "A citation", "smoke", out)
    second.table("Image AUROC", ["model", "AUROC"], [["ours", 0.1]])
    second.discard()  # what reproduce() does when the paper's run raises
    assert (out / "report.md").read_text(encoding="utf-8") == before
    assert (out / "figures" / "roc.png").exists()
    with pytest.raises(ValueError, match="2 cells"):
        Report("gcm", "t", "c", "smoke", tmp_path / "x").table("bad", ["a", "b"], [[1]])
    with pytest.raises(ValueError, match="budget"):
        Report("gcm", "t", "c", "tiny", tmp_path / "y")
