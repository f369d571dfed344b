"""KFP step: data-aware gate before training: is this dataset already the champion's?"""

from typing import NamedTuple


def check_dataset(
    dataset_id: str,
    model_name: str,
    skip_if_unchanged: bool,
) -> NamedTuple(
    "CheckOutputs",
    [("action", str), ("reason", str), ("champion_version", str), ("champion_metrics", dict), ("champion_sha256", str)],
):
    """Compare the new dataset id with the champion's and decide whether to train.

    Not cached: the answer depends on the registry's state at run time, not on the inputs.

    Args:
        dataset_id: Id of the validated, split dataset.
        model_name: Registered model name.
        skip_if_unchanged: Skip training when the champion was trained on this very dataset
            (scheduled runs set this; a manual run retrains unless asked not to).

    Returns:
        ``action`` (``train`` or ``skip``), a human ``reason``, the champion's version (empty when
        there is none; the evaluate step measures that version on the candidate's data for
        the quality gate), the champion's recorded metrics when they are on this dataset (empty
        otherwise), and the sha256 of the champion's ONNX file
        (empty when there is no champion).
    """
    from collections import namedtuple

    from components.registry import champion_metrics as _champion_metrics
    from components.registry import get_champion, version_info
    from vinspect.settings import MLflowSettings

    fields = ["action", "reason", "champion_version", "champion_metrics", "champion_sha256"]
    out = namedtuple("CheckOutputs", fields)
    client = MLflowSettings.from_env().client()
    try:
        champion = get_champion(client, model_name)
    except Exception as exc:  # a model never registered has no aliases to read
        if getattr(exc, "error_code", None) != "RESOURCE_DOES_NOT_EXIST":
            raise
        champion = None
    if champion is None:
        return out("train", f"no champion for model {model_name!r} yet", "", {}, "")
    info = version_info(client, model_name, champion)
    metrics = _champion_metrics(client, model_name, dataset_id) or {}
    sha = info.get("onnx_sha256") or ""
    if info.get("dataset_id") == dataset_id:
        reason = f"dataset {dataset_id} is the one champion {model_name} v{champion} was trained on"
        if skip_if_unchanged:
            return out("skip", f"training skipped: {reason}", str(champion), metrics, sha)
        return out("train", f"{reason}; retraining because skip_if_unchanged is off", str(champion), metrics, sha)
    return out(
        "train",
        f"new data: dataset {dataset_id}, champion {model_name} v{champion} was trained on "
        f"{info.get('dataset_id') or 'an unknown dataset'}",
        str(champion),
        metrics,
        sha,
    )
