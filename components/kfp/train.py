"""KFP step 3: train the YOLO detector (GPU node when there is one, CPU otherwise)."""

from typing import NamedTuple

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output


def train(
    dataset: Input[Dataset],
    model_yaml: str,
    init_weights: str,
    epochs: int,
    imgsz: int,
    batch: int,
    lr0: float,
    patience: int,
    seed: int,
    workers: int,
    weights: Output[Model],
    train_report: Output[Artifact],
    train_metrics: Output[Metrics],
) -> NamedTuple("TrainOutputs", [("device", str), ("params", dict)]):
    """Train on ``dataset`` and write ``best.pt`` to ``weights``.

    Args:
        dataset: The split dataset (``data.yaml``, ``images/``, ``labels/``).
        model_yaml: Model definition, e.g. ``yolo11n.yaml`` (built from scratch, offline).
        init_weights: Optional initial weights (local path or ``s3://``); empty for none.
        epochs: Epochs.
        imgsz: Input size (multiple of 32).
        batch: Batch size.
        lr0: Initial learning rate.
        patience: Early-stopping patience.
        seed: Training seed.
        workers: Data-loader workers (they use ``/dev/shm``, mounted as memory on the cluster).
        weights: Output: the best weights.
        train_report: Output folder: ``results.csv``, ``params.json``, ``train.json``, ``plots/``.
        train_metrics: Output: Ultralytics' final validation metrics.

    Returns:
        The device trained on and the hyper-parameters used.
    """
    import json
    import shutil
    import tempfile
    import time
    from collections import namedtuple
    from pathlib import Path

    import yaml

    from components.model import train_model
    from components.model.train import copy_best

    data_dir = Path(dataset.path)
    spec = yaml.safe_load((data_dir / "data.yaml").read_text())
    # The dataset was written elsewhere (another pod, another run folder): point Ultralytics at
    # where the artifact is now, keeping the splits and names as written.
    spec["path"] = str(data_dir.resolve())
    s3_client = None
    if init_weights.startswith("s3://"):
        from vinspect.settings import S3Settings

        s3_client = S3Settings.from_env().client()
    with tempfile.TemporaryDirectory(prefix="vinspect-train-") as work_s:
        work = Path(work_s)
        data_yaml = work / "data.yaml"
        data_yaml.write_text(yaml.safe_dump(spec, sort_keys=False))
        started = time.monotonic()
        result = train_model(
            data_yaml,
            work / "runs",
            model=model_yaml,
            weights=init_weights or None,
            epochs=epochs,
            imgsz=imgsz,
            batch=batch,
            lr0=lr0,
            patience=patience,
            seed=seed,
            workers=workers,
            s3_client=s3_client,
            # One line per epoch in the step's log (the KFP UI, or the terminal for local runs).
            progress=lambda done, total: print(f"epoch {done}/{total} ({time.monotonic() - started:.0f}s)", flush=True),
        )
        wall_s = time.monotonic() - started
        copy_best(result, Path(weights.path))
        report = Path(train_report.path)
        (report / "plots").mkdir(parents=True, exist_ok=True)
        if result.results_csv is not None:
            shutil.copyfile(result.results_csv, report / "results.csv")
        for plot in result.plots:
            shutil.copyfile(plot, report / "plots" / plot.name)
        (report / "params.json").write_text(json.dumps(result.params, indent=2, sort_keys=True))
        # Paths inside the temporary run folder mean nothing once it is gone: keep names only.
        summary = {
            k: v
            for k, v in result.to_dict().items()
            if k not in ("save_dir", "best_weights", "last_weights", "results_csv")
        }
        summary["plots"] = [p.name for p in result.plots]
        summary["wall_s"] = round(wall_s, 3)
        (report / "train.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
    final = {name: float(value) for name, value in result.final_metrics.items()}
    for name, value in final.items():
        train_metrics.log_metric(name, value)
    # The figures also go into the artifact's file: a Metrics artifact without one is treated
    # as missing by kfp.local's cache, and a file is what a reader of the bucket finds.
    Path(train_metrics.path).parent.mkdir(parents=True, exist_ok=True)
    Path(train_metrics.path).write_text(json.dumps(final, indent=2, sort_keys=True))
    weights.metadata.update({"device": result.device, "epochs": epochs, "imgsz": imgsz, "model": model_yaml})
    print(f"trained {model_yaml} for {epochs} epochs on {result.device}: {result.final_metrics}")
    return namedtuple("TrainOutputs", ["device", "params"])(result.device, result.params)
