"""The run's outcome: what the pipeline decided (deployed, rejected by the gate, skipped) and why.

Every branch of the training pipeline ends in a step that records its outcome here, so a run
always says, in its own log, why it ended the way it did. For local runs the same record is
also appended, as one JSON line, to the file named by ``$VINSPECT_OUTCOME_FILE`` (set by
:func:`pipelines.local.run_local`), which is how the caller learns the result without parsing
logs.
"""

from typing import Any

OUTCOME_ENV = "VINSPECT_OUTCOME_FILE"


def record_outcome(outcome: str, detail: str, **fields: Any) -> dict:
    """Print the outcome and, when ``$VINSPECT_OUTCOME_FILE`` is set, append it there as JSON.

    Args:
        outcome: ``deployed``, ``rejected`` or ``skipped``.
        detail: One human sentence saying why.
        **fields: Extra JSON-serialisable facts (model version, dataset id, ...).

    Returns:
        The record.
    """
    import json
    import os

    record = {"outcome": outcome, "detail": detail, **fields}
    print(f"[vinspect] outcome: {outcome}: {detail}", flush=True)
    path = os.environ.get(OUTCOME_ENV)
    if path:
        # One line per record, appended with a single write: concurrent branches never interleave.
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
    return record


def report_outcome(outcome: str, detail: str, dataset_id: str) -> str:
    """KFP step ending a branch that deploys nothing: say why in the run's log.

    Args:
        outcome: ``rejected`` (quality gate) or ``skipped`` (data unchanged).
        detail: The reason.
        dataset_id: The dataset the decision was about.

    Returns:
        The message, as the step's output.
    """
    from components.kfp.outcome import record_outcome

    record_outcome(outcome, detail, dataset_id=dataset_id)
    return f"{outcome}: {detail}"
