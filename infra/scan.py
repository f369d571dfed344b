"""Security scan of the rendered overlays with checkov, against one reviewed skip list.

checkov runs from its own virtualenv (infra/tools.py) with ``--skip-download`` (no call to its
vendor's API: CI has no internet). Findings are matched against ``infra/checkov-skips.yaml``:
every finding must be listed there with its reason, and every listed entry must still match a
finding, so the list cannot silently grow stale.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from infra.render import dump_objects
from infra.tools import tool_path
from vinspect.errors import VinspectError

SKIPS_FILE = Path(__file__).resolve().parent / "checkov-skips.yaml"


class ScanError(VinspectError, RuntimeError):
    """checkov failed, or the skip list is malformed; the message says which."""


@dataclass(frozen=True)
class Finding:
    """One failed checkov check."""

    overlay: str
    check: str
    resource: str
    name: str

    def __str__(self) -> str:
        return f"[{self.overlay}] {self.check} {self.resource}: {self.name}"


def load_skips(path: Path = SKIPS_FILE) -> dict[tuple[str, str], str]:
    """(check id, resource) -> reason.

    Raises:
        ScanError: An entry without a check, resources or a reason; the message names it.
    """
    data = yaml.safe_load(path.read_text()) or {}
    skips = {}
    for index, entry in enumerate(data.get("skips") or [], start=1):
        check, resources, reason = entry.get("check"), entry.get("resources"), str(entry.get("reason") or "").strip()
        if not check or not resources or not reason:
            raise ScanError(f"{path}: entry {index} needs check, resources and reason")
        for resource in resources:
            if (check, resource) in skips:
                raise ScanError(f"{path}: entry {index} lists {check} {resource} a second time")
            skips[(check, resource)] = reason
    return skips


def run_checkov(overlays: dict[str, list[dict[str, Any]]]) -> list[Finding]:
    """Scan the rendered overlays (name -> objects) in one checkov run.

    Raises:
        ToolMissingError: checkov is not installed.
        ScanError: checkov failed or printed something other than its report.
    """
    checkov = tool_path("checkov")
    with tempfile.TemporaryDirectory(prefix="vinspect-checkov-") as tmp:
        for name, objects in overlays.items():
            (Path(tmp) / f"{name}.yaml").write_text(dump_objects(objects))
        proc = subprocess.run(
            [
                checkov,
                "--directory",
                tmp,
                "--framework",
                "kubernetes",
                "--skip-download",
                "--quiet",
                "--compact",
                "--output",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    # Exit 1 means "checks failed", which is what this function reports; anything else is an error.
    if proc.returncode not in (0, 1):
        raise ScanError(f"checkov failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    try:
        reports = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError as exc:
        raise ScanError(f"checkov printed no JSON report: {exc}\n{proc.stdout[:2000]}{proc.stderr[-2000:]}") from exc
    findings = []
    for report in reports if isinstance(reports, list) else [reports]:
        if report.get("summary", {}).get("parsing_errors"):
            raise ScanError(f"checkov could not parse the rendered YAML: {report['summary']}")
        for failed in (report.get("results") or {}).get("failed_checks") or []:
            overlay = Path(failed["file_path"]).stem
            findings.append(Finding(overlay, failed["check_id"], failed["resource"], failed["check_name"]))
    return findings


def compare(findings: list[Finding], skips: dict[tuple[str, str], str]) -> tuple[list[Finding], list[tuple[str, str]]]:
    """(findings not in the skip list, skip entries that matched nothing)."""
    unexpected = [f for f in findings if (f.check, f.resource) not in skips]
    used = {(f.check, f.resource) for f in findings}
    stale = sorted(key for key in skips if key not in used)
    return unexpected, stale


def main(argv: list[str] | None = None) -> int:
    """``python -m infra.scan``: scan overlays and print what the skip list does not cover."""
    from infra.render import list_overlays, render

    parser = argparse.ArgumentParser(prog="python -m infra.scan", description=__doc__.split("\n")[0])
    parser.add_argument("--overlay", action="append", help="overlay(s) to scan (default: every overlay)")
    args = parser.parse_args(argv)
    findings = run_checkov({name: render(name) for name in args.overlay or list_overlays()})
    unexpected, stale = compare(findings, load_skips())
    for finding in unexpected:
        print(f"new finding (fix it, or add it to {SKIPS_FILE.name} with a reason): {finding}")
    for check, resource in stale:
        print(f"stale skip (remove it from {SKIPS_FILE.name}): {check} {resource}")
    print(f"{len(findings)} finding(s), {len(findings) - len(unexpected)} accepted by the skip list")
    return 1 if unexpected or stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
