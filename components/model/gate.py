"""Quality gate: absolute floors and non-regression against the current champion.

One gate for every caller: :func:`gate_model` is what the pipeline's evaluate step
(``components/kfp/evaluate.py``) and ``vinspect model evaluate`` call, with the same inputs (the
candidate's :class:`EvalMetrics`, the floors, the champion measured on the same data when there is
one, ``max_regression``) and the same typed result (:class:`GateResult`). :func:`decide_gate` is
its pure core over metrics already in hand. The defaults come from :data:`vinspect.defaults.GATE`.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Union

from vinspect.defaults import GATE
from vinspect.errors import VinspectError

if TYPE_CHECKING:
    from components.model.champion import ChampionMetrics

METRICS = ("map50", "map50_95", "precision", "recall")
FLOOR_KEYS = METRICS + tuple(f"per_class_{m}" for m in METRICS)
DEFAULT_FLOORS: dict[str, float] = GATE.floors()
DEFAULT_COMPARE = ("map50", "map50_95")


class GateError(VinspectError, ValueError):
    """The gate was asked something it cannot judge: an unknown floor, a negative tolerance (exit 2)."""

    exit_code = 2


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


@dataclass(frozen=True)
class ClassMetrics:
    """One class's figures on the evaluated split (``None`` where the class has no ground truth).

    Attributes:
        map50: AP at IoU 0.5.
        map50_95: AP averaged over IoU 0.5..0.95.
        precision: Precision at the confidence of best mean F1.
        recall: Recall at that confidence.
        support: Ground-truth boxes of the class in the split (0: the gate cannot judge it).
    """

    map50: float | None = None
    map50_95: float | None = None
    precision: float | None = None
    recall: float | None = None
    support: int = 0


@dataclass(frozen=True)
class EvalMetrics:
    """The evaluation figures the gate reads (candidate or champion).

    :func:`components.model.evaluate_onnx` returns them as a JSON-ready dict (what MLflow and the
    KFP ``Metrics`` output log); :meth:`from_dict` reads that dict, or a champion's recorded flat
    figures, into this type.

    Attributes:
        map50: Overall mAP50 (``None`` when not measured).
        map50_95: Overall mAP50-95.
        precision: Overall precision.
        recall: Overall recall.
        per_class: ``{class name: ClassMetrics}`` (empty for recorded champion figures).
        eval_dataset_id: The dataset the figures were measured on ("" when unknown).
    """

    map50: float | None = None
    map50_95: float | None = None
    precision: float | None = None
    recall: float | None = None
    per_class: dict[str, ClassMetrics] = field(default_factory=dict)
    eval_dataset_id: str = ""

    @classmethod
    def from_dict(cls, metrics: Mapping[str, Any]) -> EvalMetrics:
        """Read :func:`components.model.evaluate_onnx`'s dict (or recorded flat figures).

        A value that is not a number (missing, NaN, text) reads as ``None``: the gate then fails
        the floor on it instead of guessing.

        Raises:
            GateError: ``per_class`` is not a mapping of class name to figures.
        """
        per_class = metrics.get("per_class") or {}
        if not isinstance(per_class, Mapping) or not all(isinstance(v, Mapping) for v in per_class.values()):
            raise GateError(f"per_class must map class names to figures, got {type(per_class).__name__}")
        return cls(
            **{key: _number(metrics.get(key)) for key in METRICS},
            per_class={
                str(name): ClassMetrics(
                    **{key: _number(stats.get(key)) for key in METRICS}, support=int(_number(stats.get("support")) or 0)
                )
                for name, stats in per_class.items()
            },
            eval_dataset_id=str(metrics.get("eval_dataset_id") or ""),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


MetricsLike = Union[EvalMetrics, Mapping[str, Any]]


def _as_metrics(metrics: MetricsLike) -> EvalMetrics:
    # A Mapping is accepted for callers that still hold evaluate_onnx's dict
    # (components/registry/onnx_import.py); it is read once, here.
    return metrics if isinstance(metrics, EvalMetrics) else EvalMetrics.from_dict(metrics)


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


def _check_floor_keys(floors: Mapping[str, float]) -> None:
    for key in floors:
        if key not in FLOOR_KEYS:
            hint = difflib.get_close_matches(key, FLOOR_KEYS, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            raise GateError(f"unknown gate floor {key!r} (known: {', '.join(FLOOR_KEYS)}){suggestion}")


def decide_gate(
    metrics: MetricsLike,
    *,
    floors: Mapping[str, float] | None = None,
    champion: MetricsLike | None = None,
    max_regression: float = GATE.max_regression,
    compare: Sequence[str] = DEFAULT_COMPARE,
    champion_label: str = "champion",
    champion_unavailable: str | None = None,
    allow_missing_champion: bool = False,
) -> GateDecision:
    """Decide whether a candidate model passes the quality gate.

    Args:
        metrics: Candidate metrics (an :class:`EvalMetrics`; a dict as ``evaluate_onnx`` returns
            it is read with :meth:`EvalMetrics.from_dict`).
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
        GateError: For an unknown floor key or a negative ``max_regression`` (a ``ValueError``).
    """
    floors = dict(DEFAULT_FLOORS if floors is None else floors)
    _check_floor_keys(floors)
    if max_regression < 0:
        raise GateError(f"max_regression must be >= 0, got {max_regression}")
    metrics = _as_metrics(metrics)
    # An empty mapping is "no champion figures", as it always was.
    champion = None if champion is None or (isinstance(champion, Mapping) and not champion) else _as_metrics(champion)
    checks: list[dict[str, Any]] = []

    def add(check: str, value: float | None, threshold: float, ok: bool, text: str) -> None:
        checks.append({"check": check, "value": value, "threshold": threshold, "ok": ok, "text": text})

    for key, floor in floors.items():
        floor = float(floor)
        if key.startswith("per_class_"):
            metric = key[len("per_class_") :]
            per_class = metrics.per_class
            if not per_class:
                add(key, None, floor, False, f"{key}: the metrics have no per-class figures")
            for name, stats in per_class.items():
                if stats.support == 0:
                    continue  # no ground truth for this class in the split: nothing to judge
                value = getattr(stats, metric)
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
            value = getattr(metrics, key)
            ok = value is not None and value >= floor
            shown = "missing" if value is None else f"{value:.4f}"
            add(key, value, floor, ok, f"{key} {shown} {'>=' if ok else '<'} floor {floor:.4f}")

    if champion is not None:
        cand_ds, champ_ds = metrics.eval_dataset_id, champion.eval_dataset_id
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
                base = getattr(champion, key)
                if base is None:
                    continue  # champion never recorded this figure: nothing to regress against
                value = getattr(metrics, key)
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


@dataclass
class GateResult:
    """What :func:`gate_model` decided, and against which champion.

    Attributes:
        decision: The verdict with its reasons and checks.
        champion: The champion's figures the candidate was compared with (``None``: no champion,
            or it could not be measured).
        champion_unavailable: Why a champion that exists could not be measured on this data.
    """

    decision: GateDecision
    champion: ChampionMetrics | None = None
    champion_unavailable: str | None = None

    @property
    def passed(self) -> bool:
        """Whether the candidate passed."""
        return self.decision.passed

    @property
    def reasons(self) -> list[str]:
        """The decision's reasons."""
        return self.decision.reasons


ChampionSource = Callable[[], "ChampionMetrics | None"]


def gate_model(
    metrics: EvalMetrics,
    *,
    floors: Mapping[str, float] | None = None,
    champion: ChampionMetrics | ChampionSource | None = None,
    max_regression: float = GATE.max_regression,
    allow_missing_champion: bool = GATE.allow_missing_champion,
) -> GateResult:
    """The quality gate, as the pipeline and the CLI apply it.

    Args:
        metrics: The candidate's figures on the evaluation split.
        floors: Absolute minimums (keys of :data:`FLOOR_KEYS`); default ``GATE.floors()``.
        champion: The champion measured on the same data: a
            :class:`~components.model.champion.ChampionMetrics`, or a function that measures it
            (typically :func:`components.model.champion.champion_metrics_on` with its arguments
            bound), returning ``None`` when the model has no champion and raising
            :class:`~components.model.champion.ChampionUnavailable` when it has one that cannot be
            measured. ``None``: no champion, the floors only.
        max_regression: Largest allowed drop below the champion.
        allow_missing_champion: Gate on the floors only when the champion cannot be measured
            (otherwise the gate fails closed).

    Returns:
        A :class:`GateResult`.

    Raises:
        GateError: An unknown floor key or a negative ``max_regression``.
    """
    from components.model.champion import ChampionUnavailable

    found, unavailable = None, None
    if callable(champion):
        try:
            found = champion()
        except ChampionUnavailable as exc:
            unavailable = str(exc)
    else:
        found = champion
    decision = decide_gate(
        metrics,
        floors=floors,
        champion=EvalMetrics.from_dict(found.metrics) if found is not None else None,
        max_regression=max_regression,
        champion_label=found.label if found is not None else "champion",
        champion_unavailable=unavailable,
        allow_missing_champion=allow_missing_champion,
    )
    return GateResult(decision, found, unavailable)


DEFAULT_VARIANT_TOLERANCE = GATE.variant_tolerance
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
