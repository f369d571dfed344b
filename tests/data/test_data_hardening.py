"""Issue 18, points 5 and 8: paths outside the export, racing imports, stale temp folders,
label files without an image. Each case is small and bounded."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from components.data import DatasetError, import_dataset
from components.data.formats import read_export
from components.data.staging import clean_stale_temp

REPO = Path(__file__).resolve().parents[2]


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture
def outside(tmp_path) -> Path:
    """A real image outside any export: the file an attacker would like imported."""
    d = tmp_path / "elsewhere"
    d.mkdir()
    from PIL import Image

    Image.new("RGB", (64, 64), (9, 9, 9)).save(d / "secret.png")
    (d / "secret.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    return d / "secret.png"


def _append_line(export: Path, line: str) -> int:
    lines = (export / "train.txt").read_text().splitlines()
    lines.append(line)
    (export / "train.txt").write_text("\n".join(lines) + "\n")
    return len(lines)


# --- point 5: every path an export names resolves inside it --------------------------------------


@pytest.mark.parametrize("how", ["absolute", "dotdot", "data-dotdot"])
def test_list_file_paths_outside_the_export_are_refused_with_file_and_line(export_copy, outside, tmp_path, how):
    rel_up = os.path.relpath(outside, export_copy)  # ../elsewhere/secret.png
    line = {"absolute": str(outside), "dotdot": rel_up, "data-dotdot": "data/" + rel_up}[how]
    lineno = _append_line(export_copy, line)
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match=r"points outside the export") as err:
        import_dataset(export_copy, out)
    assert str(err.value).startswith(f"train.txt:{lineno}: ")
    assert err.value.file == "train.txt" and err.value.line == lineno
    assert not out.exists() and _hidden(tmp_path) == []


def test_a_missing_outside_path_gets_the_same_answer(export_copy, outside, tmp_path):
    """The error never tells whether a path outside the export exists."""
    answers = []
    for target in (str(outside), str(outside.with_name("no-such.png"))):
        shutil.copy(export_copy / "train.txt", tmp_path / "train.bak")
        _append_line(export_copy, target)
        with pytest.raises(DatasetError) as err:
            import_dataset(export_copy, tmp_path / "out")
        answers.append(err.value.reason.replace(repr(target), "<path>"))
        shutil.copy(tmp_path / "train.bak", export_copy / "train.txt")
    assert answers[0] == answers[1]


def test_paths_outside_are_refused_inside_a_zip_too(export_copy, outside, tmp_path):
    lineno = _append_line(export_copy, "data/../../../../../../.." + str(outside))
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(export_copy.rglob("*")):
            zf.write(p, p.relative_to(export_copy).as_posix())
    with pytest.raises(DatasetError, match=rf"^train\.txt:{lineno}: path .* points outside the export"):
        import_dataset(archive, tmp_path / "out")


def test_obj_data_pointing_outside_is_refused(export_copy, outside, tmp_path):
    shutil.copy(export_copy / "train.txt", outside.parent / "train.txt")
    text = (export_copy / "obj.data").read_text().replace("data/train.txt", str(outside.parent / "train.txt"))
    (export_copy / "obj.data").write_text(text)
    with pytest.raises(DatasetError, match=r"^obj\.data:2: path .* points outside the export"):
        import_dataset(export_copy, tmp_path / "out")


def test_a_symlink_inside_the_export_pointing_outside_is_refused(export_copy, outside, tmp_path):
    (export_copy / "obj_train_data" / "linked.png").symlink_to(outside)
    lineno = _append_line(export_copy, "data/obj_train_data/linked.png")
    with pytest.raises(DatasetError, match=rf"^train\.txt:{lineno}: path .* resolves outside the export"):
        import_dataset(export_copy, tmp_path / "out")


def test_cvat_xml_and_coco_names_outside_are_refused(shared_dir, outside, tmp_path):
    cvat = tmp_path / "cvat"
    shutil.copytree(shared_dir / "data/cvat_samples/cvat-ai-datumaro_cvat-for-images-1.1", cvat)
    xml = (cvat / "train.xml").read_text().replace('name="img0.jpg"', f'name="../../{outside.parent.name}/secret.png"')
    (cvat / "train.xml").write_text(xml)
    with pytest.raises(DatasetError, match=r"^train\.xml:83: path .* points outside the export"):
        read_export(cvat)

    coco = tmp_path / "coco"
    shutil.copytree(shared_dir / "data/cvat_samples/cvat-ai-datumaro_coco-1.0-instances", coco)
    ann = coco / "annotations/instances_train.json"
    ann.write_text(ann.read_text().replace('"file_name":"a.jpg"', f'"file_name":"{outside}"'))
    with pytest.raises(DatasetError, match=r"instances_train\.json \(image id 5\): path .* points outside"):
        read_export(coco)


def test_ultralytics_list_and_folder_outside_are_refused(shared_dir, outside, tmp_path):
    ul = tmp_path / "ul"
    shutil.copytree(shared_dir / "data/cvat_samples/cvat-ai-datumaro_ultralytics-yolo-detection-1.0_subset-txt", ul)
    (ul / "train.txt").write_text(f"data/images/train/1.jpg\n{outside}\n")
    with pytest.raises(DatasetError, match=r"^train\.txt:2: path .* points outside the export"):
        read_export(ul)
    (ul / "train.txt").write_text("data/images/train/1.jpg\n")
    (ul / "data.yaml").write_text((ul / "data.yaml").read_text().replace("train: train.txt", "train: ../elsewhere"))
    with pytest.raises(DatasetError, match=r"^data\.yaml: path '\.\./elsewhere' points outside the export"):
        read_export(ul)


# --- point 8: racing imports, stale temp folders, label files without an image ---------------------


def _import(export: str, out: str, queue) -> None:
    try:
        import_dataset(export, Path(out))
        queue.put("ok")
    except DatasetError as exc:
        queue.put(f"error: {exc}")


def test_two_imports_into_the_same_new_out_cannot_both_succeed(small_export, tmp_path):
    ctx = multiprocessing.get_context("fork")
    for round_ in range(3):
        out = tmp_path / f"out{round_}"
        queue = ctx.Queue()
        procs = [ctx.Process(target=_import, args=(str(small_export), str(out), queue)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
        outcomes = sorted((queue.get(timeout=5) for _ in procs), key=lambda o: o != "ok")
        assert outcomes[0] == "ok", outcomes
        assert outcomes[1].startswith("error:"), outcomes  # exactly one wins
        assert "--overwrite" in outcomes[1]
        assert (out / "manifest.json").is_file()
        assert _hidden(tmp_path) == [], "the loser leaves no temp folder behind"


def test_the_commit_refuses_an_out_filled_meanwhile(small_export, tmp_path, monkeypatch):
    """Deterministic form of the race: another import fills --out between check and commit."""
    import components.data.staging as staging

    out = tmp_path / "out"
    real_commit = staging.commit

    def racing_commit(stage, out_dir, overwrite):
        if out_dir == out.resolve():
            out_dir.mkdir(exist_ok=True)
            (out_dir / "manifest.json").write_text("{}")  # the other import's result
        return real_commit(stage, out_dir, overwrite)

    monkeypatch.setattr(staging, "commit", racing_commit)
    with pytest.raises(DatasetError, match="filled by another import"):
        import_dataset(small_export, out)
    assert (out / "manifest.json").read_text() == "{}"  # the other result stands
    assert _hidden(tmp_path) == []


_KILLED_IMPORT = r"""
import sys, time
from pathlib import Path
import components.data.convert as convert
import components.data.importer as importer
real = convert._write_normalized
def slow(*a, **kw):
    print("staging", flush=True)
    time.sleep(60)
convert._write_normalized = slow
importer.import_dataset(sys.argv[1], Path(sys.argv[2]))
"""


def test_a_killed_imports_temp_folders_are_cleaned_by_the_next_import(small_export, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_IMPORT, str(small_export), str(out)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "staging"
        left = _hidden(tmp_path)
        assert left, "the import holds hidden temp folders while it runs"
        # While it is alive, nothing of it is touched, even when old.
        for name in left:
            os.utime(tmp_path / name, (time.time() - 3600, time.time() - 3600))
        assert clean_stale_temp(tmp_path) == [] and _hidden(tmp_path) == left
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert _hidden(tmp_path) == left  # killed: left behind
    # Someone's own hidden folder that merely looks similar is never touched.
    (tmp_path / ".notes.tmp-mine").mkdir()
    import_dataset(small_export, tmp_path / "another")
    assert _hidden(tmp_path) == [".notes.tmp-mine"]


def test_a_label_file_without_an_image_is_a_qa_warning(export_copy, tmp_path):
    (export_copy / "obj_train_data" / "orphan_999.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    manifest = import_dataset(export_copy, tmp_path / "out")
    import json

    report = json.loads((tmp_path / "out" / "qa_report.json").read_text())
    assert report["orphan_labels"] == ["obj_train_data/orphan_999.txt"]
    assert any("belong to no image" in w and "orphan_999.txt" in w for w in report["warnings"])
    assert manifest.counts  # the import itself succeeded


def _png_header(width: int, height: int) -> bytes:
    """A valid PNG of ``width`` x ``height`` whose pixel data is a few hundred bytes of zlib.

    Grey 8-bit, every row filter 0 and black: it compresses ~1000:1, which is what a decompression
    bomb is (the issue's 450 KB PNG decodes to 12000 x 12000).
    """
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compressobj(9)
    raw = rows.compress(b"\0" * (width + 1) * 64) + rows.flush()  # the first rows; verify() never decodes
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def test_a_decompression_bomb_is_refused_from_its_header(export_copy, tmp_path):
    """Issue 18 point 6 (importer): the size is checked from the header, nothing is decoded."""
    import resource

    victim = sorted((export_copy / "obj_train_data").glob("*.png"))[0]
    victim.write_bytes(_png_header(12000, 12000))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DatasetError, match=r"12000x12000 = 144,000,000 pixels is over the limit") as err:
        import_dataset(export_copy, tmp_path / "out")
    assert err.value.file.endswith(victim.name)
    # 144 M pixels decoded would be >= 144 MB more peak memory; the header check costs nothing.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB
    assert not (tmp_path / "out").exists()
