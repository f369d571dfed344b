"""CVAT set-up as a command: project and labels, a task of images, pre-annotations, an annotator.

The original demo's manual steps in CVAT (create a project with the labels ``scratch`` and
``bent``, create a task from the images, invite an annotator) done idempotently through cvat-sdk:

* the project is found by exact name (CVAT's list filter is an equality filter) or created with
  the labels in class order; labels it lacks are added (never renumbered: ids follow names, see
  ``map_by_name`` in :mod:`components.data.convert`);
* the task is found by name inside the project, or created and filled with the images (a folder,
  a ``.zip`` archive or an ``s3://bucket/prefix``) through CVAT's upload protocol, waiting on the
  background request with a deadline;
* pre-annotations (boxes the labeller corrects rather than draws) come from YOLO label files
  (a dataset) or from a ``predict`` callable (the champion model through the v2 model server:
  :func:`champion_predictor`), and are written only into a task this run created, so a re-run
  never overwrites a labeller's work;
* the annotator is found by user name or registered (its password from the environment, never
  printed), and the task's jobs are assigned to it.

Every function takes a logged-in ``cvat_sdk.Client`` (:func:`components.data.cvat_pull.make_client`).
"""

from __future__ import annotations

import logging
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from components.data.cvat_pull import _api_call, _public_host
from components.data.errors import CVATError, DatasetError

log = logging.getLogger(__name__)

DEFAULT_PROJECT = "metal-nuts"
DEFAULT_LABELS = ("scratch", "bent")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# A box in image pixels: (label name, x1, y1, x2, y2).
Box = tuple[str, float, float, float, float]
# image bytes -> detections as the processor writes them: {"class_name", "score", "box": [x1, y1, x2, y2]}
Predictor = Callable[[bytes], list[dict]]


@dataclass
class SetupReport:
    """What ``setup`` found or made; printed by the CLI, never with a credential."""

    project_id: int
    project_created: bool
    labels_added: list[str]
    task_id: int | None = None
    task_created: bool = False
    task_url: str | None = None
    frames: int = 0
    boxes: int = 0
    annotator: str | None = None
    annotator_created: bool = False
    jobs_assigned: list[int] = field(default_factory=list)


# --------------------------------------------------------------------------- helpers


def _list_all(endpoint, **kwargs) -> list:
    from cvat_sdk.core.helpers import get_paginated_collection

    return get_paginated_collection(endpoint, **kwargs)


def _host(client) -> str:
    return _public_host(client.api_map.host).rstrip("/")


def task_url(client, task_id: int) -> str:
    """The task's page in CVAT's web UI."""
    return f"{_host(client)}/tasks/{int(task_id)}"


def wait_request(client, rq_id: str, what: str, *, timeout: float = 600.0, poll: float = 1.0):
    """Poll a CVAT background request (``GET /api/requests/{rq_id}``) until it finishes, with a deadline.

    Raises:
        CVATError: The request failed (with CVAT's message) or did not finish in time.
    """
    deadline = time.monotonic() + timeout
    while True:
        request, _ = _api_call(f"polling {what} (request {rq_id})", client.api_client.requests_api.retrieve, rq_id)
        status = str(getattr(request.status, "value", request.status))
        if status == "finished":
            return request
        if status == "failed":
            raise CVATError(f"CVAT failed {what}: {request.message or 'no message'}")
        if time.monotonic() + poll > deadline:
            raise CVATError(
                f"{what} not finished after {timeout:.0f}s (request {rq_id} is {status!r}); "
                "CVAT may be busy: retry later or raise --timeout"
            )
        time.sleep(poll)


# --------------------------------------------------------------------------- project and labels


def label_ids(client, project_id: int) -> dict[str, int]:
    """``{label name: label id}`` of a project."""
    labels = _api_call(
        f"listing labels of project {project_id}",
        _list_all,
        client.api_client.labels_api.list_endpoint,
        project_id=project_id,
    )
    return {lab.name: lab.id for lab in labels}


def ensure_project(
    client, name: str = DEFAULT_PROJECT, labels: Sequence[str] = DEFAULT_LABELS
) -> tuple[int, bool, list[str]]:
    """Find the project by exact name, or create it with ``labels``; add the labels it lacks.

    Returns:
        ``(project id, created, labels added to an existing project)``.

    Raises:
        CVATError: Two projects have that name (the ids are listed), or the server refused.
    """
    from cvat_sdk.api_client import models

    found = [
        p
        for p in _api_call(
            f"listing projects named {name!r}", _list_all, client.api_client.projects_api.list_endpoint, name=name
        )
        if p.name == name
    ]
    if len(found) > 1:
        raise CVATError(
            f"{len(found)} CVAT projects are named {name!r} (ids {sorted(p.id for p in found)}); "
            "rename one or pass --project-id"
        )
    if not found:
        request = models.ProjectWriteRequest(
            name=name, labels=[models.PatchedLabelRequest(name=n, type="rectangle") for n in labels]
        )
        project, _ = _api_call(f"creating project {name!r}", client.api_client.projects_api.create, request)
        log.info("created CVAT project %s (%s) with labels %s", project.id, name, list(labels))
        return project.id, True, []
    project_id = found[0].id
    have = label_ids(client, project_id)
    missing = [n for n in labels if n not in have]
    if missing:
        patch = models.PatchedProjectWriteRequest(
            labels=[models.PatchedLabelRequest(name=n, type="rectangle") for n in missing]
        )
        _api_call(
            f"adding labels {missing} to project {project_id}",
            client.api_client.projects_api.partial_update,
            project_id,
            patched_project_write_request=patch,
        )
        log.info("added labels %s to CVAT project %s", missing, project_id)
    return project_id, False, missing


# --------------------------------------------------------------------------- images


def collect_images(source: str | Path, work: Path, *, s3_client=None) -> list[Path]:
    """The images of a folder (recursively), a ``.zip`` archive or an ``s3://bucket/prefix``, as local files.

    Archive members and S3 objects are written under ``work`` with their base names, which become
    the frame names in CVAT (two images with one base name would be ambiguous there).

    Raises:
        DatasetError: The source does not exist, holds no image, or two images share a name.
    """
    text = str(source)
    files: list[Path] = []
    if text.startswith("s3://"):
        if s3_client is None:
            raise DatasetError(f"{text} is on S3: S3 settings are needed (AWS_S3_ENDPOINT, credentials)")
        bucket, _, prefix = text[len("s3://") :].partition("/")
        work.mkdir(parents=True, exist_ok=True)
        for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key.lower().endswith(IMAGE_SUFFIXES):
                    dest = work / key.rsplit("/", 1)[-1]
                    s3_client.download_file(bucket, key, str(dest))
                    files.append(dest)
    else:
        path = Path(text).expanduser()
        if not path.exists():
            raise DatasetError("image source does not exist", file=path)
        if path.is_file() and zipfile.is_zipfile(path):
            work.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if info.is_dir() or not info.filename.lower().endswith(IMAGE_SUFFIXES):
                        continue
                    dest = work / info.filename.rsplit("/", 1)[-1]
                    dest.write_bytes(zf.read(info))
                    files.append(dest)
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            raise DatasetError("not a folder, .zip archive or s3:// prefix of images", file=path)
    if not files:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {text}")
    names: dict[str, Path] = {}
    for f in files:
        if f.name in names and names[f.name] != f:
            raise DatasetError(
                f"two images are named {f.name!r} ({names[f.name]} and {f}); CVAT frames need distinct names", file=f
            )
        names[f.name] = f
    return sorted(files, key=lambda p: p.name)


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.width, im.height
    except OSError as e:
        raise DatasetError(f"cannot read image ({e})", file=path) from e


def read_yolo_annotations(
    ann_dir: Path, images: Iterable[Path], classes: Sequence[str] | None = None
) -> dict[str, list[Box]]:
    """Boxes in pixels per image name from YOLO label files (``<stem>.txt``: ``class cx cy w h``).

    Class names come from ``classes``, else the dataset's ``manifest.json`` / ``data.yaml`` /
    ``obj.names``, else ``scratch, bent``. An image without a label file has no box.

    Raises:
        DatasetError: A malformed line or a class id out of range (naming file and line).
    """
    import json

    import yaml

    ann_dir = Path(ann_dir)
    if not ann_dir.is_dir():
        raise DatasetError("annotations folder does not exist", file=ann_dir)
    if classes is None:
        if (ann_dir / "manifest.json").is_file():
            classes = json.loads((ann_dir / "manifest.json").read_text())["classes"]
        elif (ann_dir / "data.yaml").is_file():
            names = yaml.safe_load((ann_dir / "data.yaml").read_text()).get("names")
            classes = [names[k] for k in sorted(names)] if isinstance(names, dict) else list(names or [])
        elif (ann_dir / "obj.names").is_file():
            classes = [ln.strip() for ln in (ann_dir / "obj.names").read_text().splitlines() if ln.strip()]
        else:
            classes = list(DEFAULT_LABELS)
    by_stem = {p.stem: p for p in ann_dir.rglob("*.txt") if p.name not in ("train.txt", "valid.txt", "test.txt")}
    out: dict[str, list[Box]] = {}
    for img in images:
        label = by_stem.get(img.stem)
        if label is None:
            continue
        width, height = _image_size(img)
        boxes = []
        for n, line in enumerate(label.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            try:
                cid, cx, cy, w, h = int(parts[0]), *(float(v) for v in parts[1:5])
                if len(parts) < 5:
                    raise ValueError
            except ValueError:
                raise DatasetError("expected 'class cx cy w h'", file=label, line=n) from None
            if not 0 <= cid < len(classes):
                raise DatasetError(f"class id {cid} is not one of {list(classes)}", file=label, line=n)
            boxes.append(
                (classes[cid], (cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
            )
        out[img.name] = boxes
    return out


def predict_boxes(predict: Predictor, images: Iterable[Path], *, min_score: float = 0.0) -> dict[str, list[Box]]:
    """Boxes per image name from a model (:data:`Predictor`), keeping scores >= ``min_score``."""
    out = {}
    for img in images:
        out[img.name] = [
            (str(d["class_name"]), *(float(v) for v in d["box"][:4]))
            for d in predict(img.read_bytes())
            if float(d.get("score", 1.0)) >= min_score
        ]
    return out


def champion_predictor(
    model_client, *, conf: float = 0.2, iou: float = 0.4, names: Sequence[str] = DEFAULT_LABELS
) -> Predictor:
    """A :data:`Predictor` over the serving model (v2 protocol), exactly as the image processor calls it.

    Args:
        model_client: :class:`serving.model_client.ModelClient` of the champion's endpoint.
        conf: Score threshold (the processor's default).
        iou: NMS IoU threshold.
        names: Class names in id order.
    """
    from serving.events import image_event, result_data
    from serving.processor import InspectConfig, Inspector

    inspector = Inspector(model_client, InspectConfig(conf=conf, iou=iou, names=tuple(names), annotate=False))

    def predict(image: bytes) -> list[dict]:
        return list(result_data(inspector.inspect(image_event(image, "cvat-setup"))).get("detections") or [])

    return predict


# --------------------------------------------------------------------------- task


def find_task(client, project_id: int, name: str) -> int | None:
    """The id of the project's task with exactly this name, or None."""
    tasks = [
        t
        for t in _api_call(
            f"listing tasks of project {project_id}",
            _list_all,
            client.api_client.tasks_api.list_endpoint,
            project_id=project_id,
            name=name,
        )
        if t.name == name and t.project_id == project_id
    ]
    if len(tasks) > 1:
        raise CVATError(
            f"{len(tasks)} tasks of project {project_id} are named {name!r} "
            f"(ids {sorted(t.id for t in tasks)}); pass another --task-name"
        )
    return tasks[0].id if tasks else None


def create_task(
    client,
    project_id: int,
    name: str,
    images: Sequence[Path],
    *,
    segment_size: int = 0,
    image_quality: int = 95,
    timeout: float = 600.0,
    poll: float = 1.0,
) -> int:
    """Create a task in the project and upload the images; wait until CVAT has built it.

    Returns:
        The task id.
    """
    from cvat_sdk.api_client import models
    from cvat_sdk.core.uploading import DataUploader

    spec = models.TaskWriteRequest(
        name=name, project_id=project_id, **({"segment_size": segment_size} if segment_size else {})
    )
    task, _ = _api_call(f"creating task {name!r} in project {project_id}", client.api_client.tasks_api.create, spec)
    url = client.api_map.make_endpoint_url(client.api_client.tasks_api.create_data_endpoint.path, kwsub={"id": task.id})
    response = _api_call(
        f"uploading {len(images)} image(s) to task {task.id}",
        DataUploader(client).upload_files,
        url,
        list(images),
        image_quality=image_quality,
        sorting_method="lexicographical",
    )
    import json

    rq_id = json.loads(response.data).get("rq_id")
    if not rq_id:
        raise CVATError(f"CVAT accepted the images of task {task.id} but returned no request id")
    wait_request(client, rq_id, f"creating the data of task {task.id}", timeout=timeout, poll=poll)
    return task.id


def frame_numbers(client, task_id: int) -> dict[str, int]:
    """``{frame name: frame number}`` of a task, in CVAT's frame order."""
    meta, _ = _api_call(
        f"reading the frames of task {task_id}", client.api_client.tasks_api.retrieve_data_meta, task_id
    )
    return {Path(f.name).name: i for i, f in enumerate(meta.frames)}


def upload_boxes(
    client, task_id: int, project_id: int, boxes: Mapping[str, Sequence[Box]], *, source: str = "auto"
) -> int:
    """Write rectangles into a task (replacing its annotations), label ids looked up by name.

    Args:
        client: Logged-in client.
        task_id: The task.
        project_id: Its project (for the label ids).
        boxes: ``{image name: [(label, x1, y1, x2, y2)]}``.
        source: CVAT's shape source (``auto`` marks pre-annotations, ``manual`` a person's).

    Returns:
        How many shapes were written.

    Raises:
        CVATError: A label the project does not have, or an image that is no frame of the task.
    """
    from cvat_sdk.api_client import models

    ids = label_ids(client, project_id)
    frames = frame_numbers(client, task_id)
    shapes = []
    for name, image_boxes in boxes.items():
        if name not in frames:
            raise CVATError(f"pre-annotation for {name!r}, which is no frame of task {task_id}")
        for label, x1, y1, x2, y2 in image_boxes:
            if label not in ids:
                raise CVATError(
                    f"pre-annotation of {name!r} has label {label!r}, which project {project_id} "
                    f"lacks (its labels: {sorted(ids)})"
                )
            shapes.append(
                models.LabeledShapeRequest(
                    type="rectangle",
                    frame=frames[name],
                    label_id=ids[label],
                    points=[x1, y1, x2, y2],
                    occluded=False,
                    z_order=0,
                    source=source,
                    attributes=[],
                )
            )
    data = models.LabeledDataRequest(version=0, tags=[], shapes=shapes, tracks=[])
    _api_call(
        f"writing {len(shapes)} pre-annotation(s) to task {task_id}",
        client.api_client.tasks_api.update_annotations,
        task_id,
        labeled_data_request=data,
    )
    return len(shapes)


# --------------------------------------------------------------------------- users


def ensure_user(client, username: str, *, email: str | None = None, password: str | None = None) -> tuple[int, bool]:
    """Find a user by name or register it.

    Returns:
        ``(user id, created)``.

    Raises:
        CVATError: The user does not exist and no password was given, or registration is closed.
    """
    from cvat_sdk.api_client import models

    def lookup():
        return [
            u
            for u in _api_call(
                f"looking up user {username!r}", _list_all, client.api_client.users_api.list_endpoint, username=username
            )
            if u.username == username
        ]

    found = lookup()
    if found:
        return found[0].id, False
    if not password:
        raise CVATError(f"CVAT user {username!r} does not exist; set CVAT_ANNOTATOR_PASSWORD to register it")
    request = models.RegisterSerializerExRequest(
        username=username, email=email or f"{username}@example.com", password1=password, password2=password
    )
    _api_call(f"registering user {username!r}", client.api_client.auth_api.create_register, request)
    found = lookup()
    if not found:
        raise CVATError(f"registered user {username!r} but CVAT does not list it; check its e-mail verification")
    return found[0].id, True


def assign_jobs(client, task_id: int, user_id: int) -> list[int]:
    """Assign every annotation job of a task to a user; returns the job ids."""
    from cvat_sdk.api_client import models

    from components.data.cvat_pull import is_annotation_job, list_jobs

    jobs = [j for j in list_jobs(client, task_id=task_id) if is_annotation_job(j)]
    for j in jobs:
        _api_call(
            f"assigning job {j.id} to user {user_id}",
            client.api_client.jobs_api.partial_update,
            j.id,
            patched_job_write_request=models.PatchedJobWriteRequest(assignee=user_id),
        )
    return sorted(j.id for j in jobs)


# --------------------------------------------------------------------------- the command


def setup(
    client,
    *,
    project: str = DEFAULT_PROJECT,
    labels: Sequence[str] = DEFAULT_LABELS,
    images: str | Path | None = None,
    task_name: str | None = None,
    s3_client=None,
    annotations: Path | None = None,
    annotation_classes: Sequence[str] | None = None,
    predict: Predictor | None = None,
    min_score: float = 0.0,
    segment_size: int = 0,
    annotator: str | None = None,
    annotator_email: str | None = None,
    annotator_password: str | None = None,
    timeout: float = 600.0,
    poll: float = 1.0,
) -> SetupReport:
    """Everything ``vinspect cvat setup`` does, idempotently (see the module docs).

    Args:
        client: Logged-in ``cvat_sdk.Client``.
        project: Project name.
        labels: Labels in class order.
        images: Folder, ``.zip`` or ``s3://bucket/prefix`` of images for a task (None: no task).
        task_name: Task name (default: the source's last path part).
        s3_client: boto3 client for an ``s3://`` source.
        annotations: YOLO label folder to pre-annotate from.
        annotation_classes: Class names of those label files (default: read from the folder).
        predict: A model to pre-annotate with (used when ``annotations`` is None).
        min_score: Lowest model score kept as a pre-annotation.
        segment_size: Frames per job (0: one job).
        annotator: User to find or register and assign the task's jobs to.
        annotator_email: Its e-mail for registration.
        annotator_password: Its password for registration (from the environment, never printed).
        timeout: Seconds to wait for CVAT to build the task.
        poll: Seconds between status polls.

    Returns:
        The :class:`SetupReport`.
    """
    if annotations is not None and predict is not None:
        raise DatasetError("pre-annotate from a dataset or from the model, not both")
    project_id, project_created, added = ensure_project(client, project, labels)
    report = SetupReport(project_id, project_created, added)
    if images is not None:
        name = task_name or str(images).rstrip("/").rsplit("/", 1)[-1].removesuffix(".zip") or "images"
        task_id = find_task(client, project_id, name)
        if task_id is None:
            with tempfile.TemporaryDirectory(prefix="vinspect-cvat-") as work_s:
                files = collect_images(images, Path(work_s), s3_client=s3_client)
                # Pre-annotations are read before the task exists, so bad labels create nothing.
                boxes = (
                    read_yolo_annotations(Path(annotations), files, annotation_classes)
                    if annotations is not None
                    else predict_boxes(predict, files, min_score=min_score)
                    if predict is not None
                    else None
                )
                task_id = create_task(
                    client, project_id, name, files, segment_size=segment_size, timeout=timeout, poll=poll
                )
                report.task_created = True
                if boxes:
                    report.boxes = upload_boxes(client, task_id, project_id, boxes)
        else:
            log.info("task %r (%s) exists in project %s: left as it is", name, task_id, project_id)
        report.frames = len(frame_numbers(client, task_id))
        report.task_id, report.task_url = task_id, task_url(client, task_id)
    if annotator:
        uid, report.annotator_created = ensure_user(
            client, annotator, email=annotator_email, password=annotator_password
        )
        report.annotator = annotator
        if report.task_id is not None:
            report.jobs_assigned = assign_jobs(client, report.task_id, uid)
    return report
