"""The training pipeline's parameters: their types and defaults, and ``key=value`` parsing."""

import difflib
import json
from typing import Any

from vinspect.errors import VinspectError


class ParameterError(VinspectError, ValueError):
    """A ``key=value`` pipeline parameter that is malformed, unknown or of the wrong type."""


def _bool(text: str) -> bool:
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text.lower())
    if value is None:
        raise ValueError(text)
    return value


def _json(kind: type):
    def parse(text: str):
        value = json.loads(text)
        if not isinstance(value, kind):
            raise ValueError(text)
        return value

    return parse


# Python annotation of a pipeline parameter -> how a command-line string becomes that value.
_PARSERS = {str: str, int: int, float: float, bool: _bool, list: _json(list), dict: _json(dict)}


def pipeline_parameters() -> dict[str, dict[str, Any]]:
    """``{name: {"type": python type, "default": value}}`` of ``training_pipeline``, in order."""
    import inspect

    from pipelines.training import build_training_pipeline

    func = build_training_pipeline(revision="").pipeline_func
    return {
        name: {"type": p.annotation, "default": p.default} for name, p in inspect.signature(func).parameters.items()
    }


def parse_params(pairs: list[str], known: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Parse ``key=value`` strings into typed pipeline arguments.

    Args:
        pairs: E.g. ``["epochs=5", "gpu_node_selector={\\"gpu\\": \\"a100\\"}"]``.
        known: Parameter table (default :func:`pipeline_parameters`).

    Returns:
        ``{name: value}`` with each value of its parameter's type.

    Raises:
        ParameterError: Malformed pair, unknown parameter (with the closest name), or a value of the
            wrong type.
    """
    known = pipeline_parameters() if known is None else known
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ParameterError(f"parameter {pair!r}: expected key=value")
        if key not in known:
            hint = difflib.get_close_matches(key, list(known), n=1)
            raise ParameterError(
                f"unknown pipeline parameter {key!r}"
                + (f"; did you mean {hint[0]!r}?" if hint else "")
                + " (see `vinspect pipeline params`)"
            )
        kind = known[key]["type"]
        try:
            out[key] = _PARSERS.get(kind, str)(raw)
        except (ValueError, json.JSONDecodeError):
            raise ParameterError(f"parameter {key}={raw!r}: not a valid {getattr(kind, '__name__', kind)}") from None
    return out
