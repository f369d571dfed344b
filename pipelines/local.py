"""Run the whole training pipeline on this machine through ``kfp.local``.

The same compiled DAG as on the cluster runs task by task in subprocesses of this Python
(``SubprocessRunner(use_venv=False)``: the project's environment is the "image"), against the
local stack: the stack's environment (S3, MLflow endpoints and generated credentials) is
exported to the tasks the way ``use_secret_as_env`` does on the cluster, and the rollout step
targets the local model server at ``$VINSPECT_MODEL_URL``. ``kfp.local`` caches task outputs
under the pipeline root, so a re-run on the same data re-uses them.
"""

import contextlib
import json
import logging
import os
import re
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from components.kfp.outcome import OUTCOME_ENV
from vinspect.errors import VinspectError


class LocalRunError(VinspectError, RuntimeError):
    """The local run could not start or a step failed (the message names the step)."""


@dataclass
class LocalRunResult:
    """What a local pipeline run decided.

    Attributes:
        outcome: ``deployed``, ``rejected`` (quality gate), ``skipped`` (dataset unchanged),
            ``rolled_back`` or ``failed``.
        detail: Why, in one sentence.
        records: Every outcome record the steps wrote (normally one).
        wall_s: Wall time of the run.
        pipeline_root: Where the run's artifacts are.
        arguments: The pipeline arguments used.
        steps: ``{"task", "seconds", "cached"}`` per step that was reached, in order.
    """

    outcome: str
    detail: str
    records: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    pipeline_root: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def deployed(self) -> bool:
        """Whether a new champion was rolled out."""
        return self.outcome == "deployed"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "outcome": self.outcome,
            "detail": self.detail,
            "records": self.records,
            "wall_s": round(self.wall_s, 3),
            "pipeline_root": self.pipeline_root,
            "arguments": self.arguments,
            "steps": self.steps,
        }


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '([^']+)'")
_END = re.compile(r"Task '([^']+)' finished with status")
_HIT = re.compile(r"Task (\S+) cache hit")


class _StepTimer(logging.Filter):
    """Times each step from kfp.local's own log records (a logger filter survives its handlers)."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: dict[str, dict[str, Any]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        text = _ANSI.sub("", record.getMessage())
        if m := _START.search(text):
            self.steps[m.group(1)] = {"task": m.group(1), "started": record.created, "seconds": None, "cached": False}
        elif (m := _END.search(text)) and m.group(1) in self.steps:
            step = self.steps[m.group(1)]
            step["seconds"] = round(record.created - step.pop("started"), 3)
        elif m := _HIT.search(text):
            self.steps[m.group(1)] = {"task": m.group(1), "seconds": 0.0, "cached": True}
        return True

    def result(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in s.items() if k != "started"} for s in self.steps.values()]


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block (child processes inherit them), then restore."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def synthetic_source(state: Path, *, images: int = 24, seed: int = 0, size: int = 128) -> Path:
    """A synthetic CVAT "YOLO 1.1" export under ``state`` (made once per size/seed, then re-used).

    Args:
        state: The local stack's state directory.
        images: Number of images.
        seed: Generator seed.
        size: Image side in pixels.

    Returns:
        The export folder, usable as ``data_source``.
    """
    from components.data import synthesize

    out = Path(state) / "datasets" / f"synthetic-n{images}-s{seed}-{size}px"
    if not (out / "obj.data").is_file():
        synthesize(out, images, seed=seed, size=size)
    return out


# What the steps need to find the stack; the rest of the stack's settings are optional.
_REQUIRED = ("AWS_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_URI")


def _stack_env() -> dict[str, str]:
    """The stack's client environment: ``<state>/stack.env``, the process environment winning.

    (The same precedence as :mod:`vinspect.settings`.)
    """
    from vinspect.local import StackConfig, StackError, stack_env

    try:
        env = stack_env(StackConfig.from_env())
    except StackError as exc:
        env, problem = {}, str(exc)
    else:
        problem = ""
    keys = set(env) | set(_REQUIRED)
    env = {k: os.environ.get(k, env.get(k)) for k in keys if os.environ.get(k, env.get(k)) is not None}
    missing = [k for k in _REQUIRED if not env.get(k)]
    if missing:
        raise LocalRunError(problem or f"{', '.join(missing)} not set: run `vinspect local up` first")
    return env


def _check_model_server(url: str) -> None:
    """Fail before training when the rollout's target server is not there (not after)."""
    import httpx

    try:
        resp = httpx.get(f"{url.rstrip('/')}/v2/health/live", timeout=5)
    except httpx.HTTPError as exc:
        raise LocalRunError(
            f"no model server answers at {url} ({exc.__class__.__name__}): start one with "
            "`vinspect serve model`, or pass --model-url / set VINSPECT_MODEL_URL"
        ) from None
    if resp.status_code != 200:
        raise LocalRunError(f"the model server at {url} is not live (HTTP {resp.status_code})")


def run_local(
    data_source: str | None = None,
    *,
    arguments: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    model_url: str | None = None,
    pipeline_root: str | Path | None = None,
    enable_caching: bool = True,
    synth_images: int = 24,
    synth_seed: int = 0,
    synth_size: int = 128,
) -> LocalRunResult:
    """Run ``training_pipeline`` locally, end to end, against the local stack.

    Args:
        data_source: A CVAT export (folder, zip, ``s3://``); None: a synthetic dataset, unless the
            arguments name a CVAT task or project (``cvat_task_id``, ``cvat_project_id``): then the
            pull reads CVAT, and the run's ``source_version`` is read from CVAT (its modification
            dates), so a run after labellers completed jobs pulls again instead of re-using the cache.
        arguments: Pipeline parameters to override (``epochs``, ``imgsz``, ``min_map50``, ...).
            ``serving_mode`` defaults to ``local``.
        env: The stack's client environment (default: ``<state>/stack.env`` of ``vinspect local
            up``). Exported to the steps for the duration of the run.
        model_url: The local model server's v2 base URL (default ``$VINSPECT_MODEL_URL``).
        pipeline_root: Where task outputs and the cache go (default ``<state>/pipeline-root``).
        enable_caching: Re-use outputs of cached steps from earlier runs.
        synth_images: Images in the synthetic dataset (when ``data_source`` is None).
        synth_seed: Its seed.
        synth_size: Its image size.

    Returns:
        A :class:`LocalRunResult`; a rejected or skipped run is a result, not an error.

    Raises:
        LocalRunError: The stack is not up, or a step failed (the message names it).
    """
    from kfp import local

    from pipelines.source import cvat_ids, source_fingerprint
    from pipelines.training import build_training_pipeline
    from vinspect.settings import state_dir

    try:
        from_cvat = any(cvat_ids(arguments or {}))
    except ValueError as exc:
        raise LocalRunError(f"CVAT source: {exc}") from None

    stack = dict(env) if env is not None else _stack_env()
    state = Path(os.environ.get("VINSPECT_HOME") or state_dir())
    root = Path(pipeline_root or state / "pipeline-root").resolve()
    root.mkdir(parents=True, exist_ok=True)
    if data_source is None and from_cvat:
        data_source = ""  # the pull reads the CVAT task or project
    elif data_source is None:
        data_source = str(synthetic_source(state, images=synth_images, seed=synth_seed, size=synth_size))
    elif data_source and not str(data_source).startswith("s3://"):
        data_source = str(Path(data_source).expanduser().resolve())

    args: dict[str, Any] = {"serving_mode": "local", "data_source": data_source}
    args.update(arguments or {})

    run_env = {**stack, "VINSPECT_HOME": str(state)}
    if model_url:
        run_env["VINSPECT_MODEL_URL"] = model_url
    fd, outcome_path = tempfile.mkstemp(prefix="vinspect-outcome-", suffix=".jsonl")
    os.close(fd)
    run_env[OUTCOME_ENV] = outcome_path
    pipeline = build_training_pipeline()
    timer = _StepTimer()
    root_logger = logging.getLogger()
    root_logger.addFilter(timer)
    old_level = root_logger.level
    # kfp.local logs cache hits at INFO outside its own logging context.
    root_logger.setLevel(min(old_level or logging.WARNING, logging.INFO))
    started = time.monotonic()
    try:
        with _environment(run_env), warnings.catch_warnings():
            if args.get("serving_mode") == "local":
                from vinspect.settings import ModelServerSettings

                _check_model_server(ModelServerSettings.from_env().url)
            if "source_version" not in args and from_cvat:
                from pipelines.submit import resolve_source_version

                args["source_version"], note = resolve_source_version(args)
                if note:
                    raise LocalRunError(f"data source: {note}")
            if "source_version" not in args:
                s3_client = None
                if data_source.startswith("s3://"):
                    from vinspect.settings import S3Settings

                    s3_client = S3Settings.from_env().client()
                try:
                    args["source_version"] = source_fingerprint(data_source, s3_client=s3_client)
                except (FileNotFoundError, ValueError) as exc:
                    raise LocalRunError(f"data source: {exc}") from None
            # The component image is not a "python" image name and GPU settings mean nothing
            # locally; kfp.local warns about both on every task.
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", UserWarning)
            local.init(
                runner=local.SubprocessRunner(use_venv=False),
                pipeline_root=str(root),
                raise_on_error=True,
                enable_caching=enable_caching,
                cache_root=str(root / ".kfp_cache"),
            )
            try:
                pipeline(**args)
            except RuntimeError as exc:
                records = _read_records(outcome_path)
                detail = f"{exc}"
                if records and records[-1]["outcome"] == "rolled_back":
                    detail = records[-1]["detail"]
                raise LocalRunError(f"local pipeline run failed: {detail} (the step's log above says why)") from None
        records = _read_records(outcome_path)
    finally:
        root_logger.removeFilter(timer)
        root_logger.setLevel(old_level)
        Path(outcome_path).unlink(missing_ok=True)
    wall = time.monotonic() - started
    if not records:
        raise LocalRunError("the pipeline finished without recording an outcome (see the step logs above)")
    last = records[-1]
    return LocalRunResult(
        outcome=last["outcome"],
        detail=last["detail"],
        records=records,
        wall_s=wall,
        pipeline_root=str(root),
        arguments=args,
        steps=timer.result(),
    )


def _read_records(path: str) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
