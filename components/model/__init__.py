"""Model step cores: train, export to ONNX with a parity check, evaluate, and the quality gate.

Heavy libraries (torch, Ultralytics, ONNX Runtime, matplotlib) are imported inside the functions,
so importing this package is cheap.
"""

from components.model.evaluate import compute_metrics, evaluate_onnx, evaluate_variants, match_predictions
from components.model.export import (
    DEFAULT_ATOL,
    DEFAULT_OPSET,
    ParityError,
    export_onnx,
    export_variants,
    parity_check,
    read_variants,
)
from components.model.gate import (
    DEFAULT_FLOORS,
    EvalMetrics,
    GateDecision,
    GateError,
    GateResult,
    VariantChoice,
    choose_variant,
    decide_gate,
    gate_model,
)
from components.model.train import TrainResult, train_model

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_FLOORS",
    "DEFAULT_OPSET",
    "EvalMetrics",
    "GateDecision",
    "GateError",
    "GateResult",
    "VariantChoice",
    "choose_variant",
    "evaluate_variants",
    "export_variants",
    "read_variants",
    "ParityError",
    "TrainResult",
    "compute_metrics",
    "decide_gate",
    "evaluate_onnx",
    "export_onnx",
    "gate_model",
    "match_predictions",
    "parity_check",
    "train_model",
]
