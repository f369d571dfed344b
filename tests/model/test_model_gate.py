"""Quality gate decisions, both ways."""

from __future__ import annotations

import json

import pytest

from components.model import GateDecision, decide_gate


def _metrics(map50=0.8, map50_95=0.6, scratch=0.75, bent=0.85, ds="abc", bent_support=9):
    return {
        "map50": map50,
        "map50_95": map50_95,
        "precision": 0.8,
        "recall": 0.7,
        "eval_dataset_id": ds,
        "per_class": {
            "scratch": {"map50": scratch, "map50_95": 0.5, "precision": 0.8, "recall": 0.7, "support": 12},
            "bent": {
                "map50": bent if bent_support else None,
                "map50_95": 0.6 if bent_support else None,
                "precision": 0.8 if bent_support else None,
                "recall": 0.7 if bent_support else None,
                "support": bent_support,
            },
        },
    }


FLOORS = {"map50": 0.5, "per_class_map50": 0.3}


def test_passes_floors_without_champion_and_says_why():
    d = decide_gate(_metrics(), floors=FLOORS, champion=None)
    assert isinstance(d, GateDecision) and d.passed
    assert any("no champion" in r for r in d.reasons)
    assert any("map50 0.8000 >= floor 0.5000" in r for r in d.reasons)
    assert json.loads(json.dumps(d.to_dict()))["passed"] is True


def test_fails_overall_floor():
    d = decide_gate(_metrics(map50=0.4), floors=FLOORS, champion=None)
    assert not d.passed
    assert d.reasons == ["map50 0.4000 < floor 0.5000"]


def test_fails_per_class_floor_naming_the_class():
    d = decide_gate(_metrics(scratch=0.2), floors=FLOORS, champion=None)
    assert not d.passed
    assert d.reasons == ["scratch map50 0.2000 < floor 0.3000"]


def test_class_without_ground_truth_is_skipped_not_failed():
    d = decide_gate(_metrics(bent_support=0), floors=FLOORS, champion=None)
    assert d.passed
    assert not any("bent" in c["check"] for c in d.checks)


def test_missing_or_nan_metric_fails():
    m = _metrics()
    m["map50"] = float("nan")
    d = decide_gate(m, floors=FLOORS, champion=None)
    assert not d.passed and d.reasons == ["map50 missing < floor 0.5000"]


def test_regression_against_champion_fails_and_small_drop_passes():
    champion = _metrics(map50=0.85, map50_95=0.62)
    worse = decide_gate(_metrics(map50=0.80, map50_95=0.61), floors=FLOORS, champion=champion)
    assert not worse.passed
    assert worse.reasons == ["map50 0.8000 < champion 0.8500 - 0.02"]
    close = decide_gate(_metrics(map50=0.84, map50_95=0.61), floors=FLOORS, champion=champion)
    assert close.passed
    better = decide_gate(_metrics(map50=0.9, map50_95=0.7), floors=FLOORS, champion=champion, max_regression=0.0)
    assert better.passed


def test_champion_measured_on_other_data_is_not_compared():
    d = decide_gate(_metrics(ds="new"), floors=FLOORS, champion=_metrics(map50=0.1, ds="old"))
    assert not d.passed
    assert "re-evaluate the champion" in d.reasons[0]


def test_unknown_floor_key_is_refused_with_a_suggestion():
    with pytest.raises(ValueError, match="did you mean 'map50_95'"):
        decide_gate(_metrics(), floors={"map50-95": 0.3}, champion=None)
    with pytest.raises(ValueError, match="max_regression"):
        decide_gate(_metrics(), floors=FLOORS, champion=None, max_regression=-1)


def test_champion_label_names_the_comparison():
    d = decide_gate(
        _metrics(map50=0.7),
        floors=FLOORS,
        champion=_metrics(map50=0.9),
        champion_label="champion v4 (re-evaluated on this data)",
    )
    assert not d.passed
    assert d.reasons == ["map50 0.7000 < champion v4 (re-evaluated on this data) 0.9000 - 0.02"]


def test_unavailable_champion_fails_closed_unless_allowed():
    why = "champion v3: its ONNX s3://models/m/3/1/model.onnx is missing from S3 (NoSuchKey)"
    closed = decide_gate(_metrics(), floors=FLOORS, champion=None, champion_unavailable=why)
    assert not closed.passed
    assert closed.reasons == [
        f"{why}: no regression check is possible, so the model is rejected "
        "(set allow_missing_champion to gate on the floors only)"
    ]
    allowed = decide_gate(
        _metrics(), floors=FLOORS, champion=None, champion_unavailable=why, allow_missing_champion=True
    )
    assert allowed.passed
    assert f"{why}: floors only, as allow_missing_champion is set" in allowed.reasons
    assert not any("no champion yet" in r for r in allowed.reasons)
    # The allowance never rescues a model that misses a floor.
    low = decide_gate(
        _metrics(map50=0.4), floors=FLOORS, champion=None, champion_unavailable=why, allow_missing_champion=True
    )
    assert low.reasons == ["map50 0.4000 < floor 0.5000"]


def test_the_gate_reads_typed_metrics():
    from components.model import EvalMetrics
    from components.model.gate import ClassMetrics

    m = EvalMetrics.from_dict(_metrics(bent_support=0) | {"map50_95": "n/a"})
    assert m.map50 == 0.8 and m.map50_95 is None and m.eval_dataset_id == "abc"
    assert m.per_class["scratch"] == ClassMetrics(map50=0.75, map50_95=0.5, precision=0.8, recall=0.7, support=12)
    assert m.per_class["bent"].support == 0 and m.per_class["bent"].map50 is None
    # The typed figures and the dict they came from decide alike.
    assert decide_gate(m, floors=FLOORS) == decide_gate(_metrics(bent_support=0) | {"map50_95": "n/a"}, floors=FLOORS)
    with pytest.raises(ValueError, match="per_class must map class names"):
        EvalMetrics.from_dict({"map50": 0.5, "per_class": ["scratch"]})


def test_gate_model_measures_the_champion_through_its_source():
    from components.model import EvalMetrics, GateError, gate_model
    from components.model.champion import GIVEN, RE_EVALUATED, ChampionMetrics, ChampionUnavailable
    from vinspect.errors import VinspectError

    candidate = EvalMetrics.from_dict(_metrics(map50=0.80))
    champ = ChampionMetrics("4", "abc", RE_EVALUATED, _metrics(map50=0.9))
    asked = []

    def source():
        asked.append(True)
        return champ

    result = gate_model(candidate, floors=FLOORS, champion=source)
    assert asked and not result.passed and result.champion is champ and result.champion_unavailable is None
    assert result.reasons == ["map50 0.8000 < champion v4 (re-evaluated on this data) 0.9000 - 0.02"]

    def gone():
        raise ChampionUnavailable("champion v4: its ONNX is missing from S3 (NoSuchKey)", version="4")

    closed = gate_model(candidate, floors=FLOORS, champion=gone)
    assert not closed.passed and closed.champion is None
    assert closed.champion_unavailable.startswith("champion v4: its ONNX is missing")
    assert gate_model(candidate, floors=FLOORS, champion=gone, allow_missing_champion=True).passed
    assert gate_model(candidate, floors=FLOORS, champion=lambda: None).reasons[-1] == "no champion yet: floors only"
    # Figures an operator gives are named plainly, as `vinspect model evaluate --champion` always did.
    given = gate_model(candidate, champion=ChampionMetrics("", "abc", GIVEN, _metrics(map50=0.85)))
    assert given.reasons == ["map50 0.8000 < champion 0.8500 - 0.02"]
    # Without floors the pipeline's defaults apply (vinspect.defaults.GATE).
    assert {c["check"] for c in given.decision.checks} >= {"map50", "map50_95", "per_class_map50[scratch]"}
    with pytest.raises(GateError) as err:
        gate_model(candidate, floors={"map5": 0.5})
    assert isinstance(err.value, VinspectError) and err.value.exit_code == 2
