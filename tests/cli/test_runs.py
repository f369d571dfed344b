"""``vinspect runs compare`` (``vinspect/cli/runs.py``) against the local stack: table, sort, plot, errors."""

from __future__ import annotations

import json

from tests.cli.conftest import run_cli as _run


def test_runs_compare_table_and_plot(env, register, model_name, tmp_path):
    for i, score in enumerate((0.3, 0.9), start=1):
        register(model_name, f"run-{i}", metrics={"mAP50": score})
    experiment = f"vinspect-tests-{model_name}"
    png = tmp_path / "compare.png"
    code, out = _run("runs", "compare", "-e", experiment, "-m", "mAP50", "-p", "epochs", "--plot", str(png))
    assert code == 0, out
    assert out.index("0.9") < out.index("0.3")  # sorted by the first metric, best first
    assert png.read_bytes()[:4] == b"\x89PNG"
    code, out = _run("runs", "compare", "-e", experiment, "-s", "mAP50", "--ascending", "--json")
    assert [r["metrics"]["mAP50"] for r in json.loads(out)] == [0.3, 0.9]
    code, out = _run("runs", "compare", "-e", "nope-experiment")
    assert code == 1 and "no MLflow experiment 'nope-experiment'" in out
