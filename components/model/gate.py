"""Quality gate: absolute floors and non-regression against the current champion.

Pure function over metric dicts as :func:`components.model.evaluate_onnx` returns them, so the
pipeline's ``dsl.If`` branch, the CLI and the tests all decide the same way.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

METRICS = ("map50", "map50_95", "precision", "recall")
FLOOR_KEYS = METRICS + tuple(f"per_class_{m}" for m in METRICS)
DEFAULT_FLOORS: dict[str, float] = {"map50": 0.5, "per_class_map50": 0.3}
DEFAULT_COMPARE = ("map50", "map50_95")


@dataclass
class GateDecision:
    """The gate's verdict.

    Attributes:
        passed: Whether the candidate may be registered as challenger and rolled out.
        reasons: Why: the failed checks when it failed, the checks that held when it passed.
        checks: Every check made, as ``{"check", "value", "threshold", "ok"}``.
    """

    passed: bool
    reasons: list[str]
    checks: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def _check_floor_keys(floors: Mapping[str, float]) -> None:
    for key in floors:
        if key not in FLOOR_KEYS:
            hint = difflib.get_close_matches(key, FLOOR_KEYS, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ValueError(f"unknown gate floor {key!r} (known: {', '.join(FLOOR_KEYS)}){suggestion}")


def decide_gate(
    metrics: Mapping[str, Any],
    *,
    floors: Mapping[str, float] | None = None,
    champion: Mapping[str, Any] | None = None,
    max_regression: float = 0.02,
    compare: Sequence[str] = DEFAULT_COMPARE,
    champion_label: str = "champion",
    champion_unavailable: str | None = None,
    allow_missing_champion: bool = False,
) -> GateDecision:
    """Decide whether a candidate model passes the quality gate.

    Args:
        metrics: Candidate metrics (``map50``, ``map50_95``, ``precision``, ``recall``,
            ``per_class: {name: {..., "support"}}``, optionally ``eval_dataset_id``).
        floors: Absolute minimums. Keys: ``map50``, ``map50_95``, ``precision``, ``recall`` for the
            overall figures, ``per_class_<metric>`` for every class with ground truth in the split
            (classes with ``support`` 0 cannot be judged and are skipped). Default
            :data:`DEFAULT_FLOORS`.
        champion: The current champion's metrics on the same evaluation data, or ``None`` when
            there is no champion yet (then only the floors apply).
        max_regression: Largest allowed drop (absolute, e.g. 0.02 = two mAP points) below the
            champion for each metric in ``compare``.
        compare: Overall metrics compared with the champion.
        champion_label: How the reasons name the champion (e.g. ``champion v3 (re-evaluated on
            this data)``).
        champion_unavailable: Why a champion that exists could not be measured on this data
            (``champion`` is then ``None``). The gate fails closed on it: without the champion's
            figures a regression cannot be ruled out.
        allow_missing_champion: Gate on the floors only when ``champion_unavailable`` is set,
            instead of failing (an explicit operator choice, recorded in the reasons).

    Returns:
        A :class:`GateDecision`.

    Raises:
        ValueError: For an unknown floor key or a negative ``max_regression``.
    """
    floors = dict(DEFAULT_FLOORS if floors is None else floors)
    _check_floor_keys(floors)
    if max_regression < 0:
        raise ValueError(f"max_regression must be >= 0, got {max_regression}")
    checks: list[dict[str, Any]] = []

    def add(check: str, value: float | None, threshold: float, ok: bool, text: str) -> None:
        checks.append({"check": check, "value": value, "threshold": threshold, "ok": ok, "text": text})

    for key, floor in floors.items():
        floor = float(floor)
        if key.startswith("per_class_"):
            metric = key[len("per_class_") :]
            per_class = metrics.get("per_class") or {}
            if not per_class:
                add(key, None, floor, False, f"{key}: the metrics have no per-class figures")
            for name, stats in per_class.items():
                if int(stats.get("support") or 0) == 0:
                    continue  # no ground truth for this class in the split: nothing to judge
                value = _number(stats.get(metric))
                ok = value is not None and value >= floor
                shown = "missing" if value is None else f"{value:.4f}"
                add(
                    f"{key}[{name}]",
                    value,
                    floor,
                    ok,
                    f"{name} {metric} {shown} {'>=' if ok else '<'} floor {floor:.4f}",
                )
        else:
            value = _number(metrics.get(key))
            ok = value is not None and value >= floor
            shown = "missing" if value is None else f"{value:.4f}"
            add(key, value, floor, ok, f"{key} {shown} {'>=' if ok else '<'} floor {floor:.4f}")

    if champion:
        cand_ds, champ_ds = metrics.get("eval_dataset_id"), champion.get("eval_dataset_id")
        if cand_ds and champ_ds and cand_ds != champ_ds:
            add(
                "same_data",
                None,
                0.0,
                False,
                f"champion was evaluated on dataset {champ_ds}, the candidate on {cand_ds}: "
                "re-evaluate the champion on the candidate's validation split before comparing",
            )
        else:
            for key in compare:
                base = _number(champion.get(key))
                if base is None:
                    continue  # champion never recorded this figure: nothing to regress against
                value = _number(metrics.get(key))
                threshold = base - max_regression
                ok = value is not None and value >= threshold
                shown = "missing" if value is None else f"{value:.4f}"
                add(
                    f"no_regression_{key}",
                    value,
                    threshold,
                    ok,
                    f"{key} {shown} {'>=' if ok else '<'} {champion_label} {base:.4f} - {max_regression:g}",
                )
    elif champion_unavailable:
        if allow_missing_champion:
            add("champion", None, 0.0, True, f"{champion_unavailable}: floors only, as allow_missing_champion is set")
        else:
            add(
                "champion",
                None,
                0.0,
                False,
                f"{champion_unavailable}: no regression check is possible, so the model is rejected "
                "(set allow_missing_champion to gate on the floors only)",
            )
    else:
        add("champion", None, 0.0, True, "no champion yet: floors only")

    failed = [c["text"] for c in checks if not c["ok"]]
    passed = not failed
    reasons = failed if failed else [c["text"] for c in checks]
    return GateDecision(passed=passed, reasons=reasons, checks=checks)


DEFAULT_VARIANT_TOLERANCE = 0.01
"""Largest mAP50-95 drop below the FP32 variant a faster variant may have (one mAP point)."""


@dataclass
class VariantChoice:
    """Which precision variant serves, and why.

    Attributes:
        variant: The chosen variant's name.
        reference: The FP32 variant the others are held to.
        tolerance: Allowed mAP50-95 drop below the reference.
        per_variant: ``{name: {"map50", "map50_95", "latency_ms", "engine", "eligible", "text"}}``.
        reasons: One line per variant, then the choice.
    """

    variant: str
    reference: str
    tolerance: float
    per_variant: dict[str, dict[str, Any]]
    reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def choose_variant(
    results: Mapping[str, Mapping[str, Any]],
    *,
    tolerance: float = DEFAULT_VARIANT_TOLERANCE,
    reference: str = "fp32",
    candidates: Sequence[str] | None = None,
) -> VariantChoice:
    """The fastest variant whose mAP50-95 is within ``tolerance`` of the FP32 reference.

    Args:
        results: ``{variant: {"map50_95", "latency_ms", ...}}`` as
            :func:`components.model.evaluate.evaluate_variants` returns them (measured with the
            engine and precision that will serve each variant).
        tolerance: Allowed drop of mAP50-95 below the reference (absolute, default 0.01).
        reference: The FP32 variant; always eligible, so there is always a choice.
        candidates: Variants that may serve (default: every one in ``results`` except the ONNX
            Runtime record ``onnx``).

    Returns:
        A :class:`VariantChoice`. Ties in latency go to the more accurate variant.

    Raises:
        ValueError: A negative tolerance, no reference figures, or a candidate without a
            mAP50-95 or latency (named).
    """
    if tolerance < 0:
        raise ValueError(f"variant tolerance must be >= 0, got {tolerance}")
    if reference not in results:
        raise ValueError(f"no figures for the reference variant {reference!r} (have: {', '.join(results)})")
    names = list(candidates) if candidates is not None else [n for n in results if n != "onnx"]
    if reference not in names:
        names.insert(0, reference)
    ref_map = _number(results[reference].get("map50_95"))
    if ref_map is None:
        raise ValueError(f"reference variant {reference!r} has no mAP50-95")
    per: dict[str, dict[str, Any]] = {}
    for name in names:
        if name not in results:
            raise ValueError(f"candidate variant {name!r} was not evaluated (have: {', '.join(results)})")
        figures = results[name]
        value, latency = _number(figures.get("map50_95")), _number(figures.get("latency_ms"))
        if value is None or latency is None:
            raise ValueError(f"variant {name!r} lacks mAP50-95 or latency_ms: {dict(figures)}")
        eligible = name == reference or value >= ref_map - tolerance
        per[name] = {
            "map50": _number(figures.get("map50")),
            "map50_95": value,
            "latency_ms": latency,
            "engine": figures.get("engine"),
            "eligible": eligible,
            "text": (
                f"{name} ({figures.get('engine') or '?'}): mAP50-95 {value:.4f} "
                f"{'>=' if eligible else '<'} {reference} {ref_map:.4f} - {tolerance:g}, {latency:.2f} ms"
            ),
        }
    chosen = min((n for n in names if per[n]["eligible"]), key=lambda n: (per[n]["latency_ms"], -per[n]["map50_95"]))
    reasons = [per[n]["text"] for n in names]
    reasons.append(f"chosen: {chosen}, the fastest within {tolerance:g} mAP50-95 of {reference}")
    return VariantChoice(
        variant=chosen, reference=reference, tolerance=float(tolerance), per_variant=per, reasons=reasons
    )
