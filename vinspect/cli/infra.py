"""``vinspect infra``: render, validate and bootstrap the cluster manifests (``infra/``).

A RenderError, SchemasMissingError or BootstrapError (each a :class:`vinspect.errors.VinspectError`,
exit 1) is reported by the root command group; a command here only catches what it turns into
another outcome (a bootstrap without the offline schemas goes on with a warning).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import typer

REPO_ROOT = Path(__file__).resolve().parents[2]
# Exit status of a bootstrap that applied everything required but had to skip an optional part.
OPTIONAL_SKIPPED_EXIT = 3


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def render(
    overlay: str = typer.Option("default", "--overlay", "-o", help="Overlay under infra/manifests/overlays."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the YAML here instead of stdout."),
) -> None:
    """Render an overlay with kustomize (`kubectl kustomize`) and print the YAML."""
    from infra.render import dump_objects
    from infra.render import render as render_overlay

    objects = render_overlay(overlay)
    text = dump_objects(objects)
    if out is None:
        sys.stdout.write(text)
        return
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(out)
    typer.echo(f"{len(objects)} objects of overlay {overlay} -> {out}", err=True)


def validate(
    overlay: Optional[list[str]] = typer.Option(
        None, "--overlay", "-o", help="Overlay(s) to check (repeatable; default: every overlay)."
    ),
) -> None:
    """Validate every rendered object against the upstream schemas in ../shared/schemas/crds.

    Unknown kinds, undeclared fields, literal credentials and images neither built by the overlay nor
    pinned in infra/images.yaml are errors. The shared folder can be moved with VINSPECT_SHARED_DIR.
    """
    from tqdm import tqdm

    from infra.image_policy import check_images, manifest_images
    from infra.render import list_overlays
    from infra.render import render as render_overlay
    from infra.validate import default_store, validate_objects

    names = overlay or list_overlays()
    if not names:
        _fail("no overlays found under infra/manifests/overlays")
    store = default_store()
    failed = 0
    for name in tqdm(names, desc="validate", unit="overlay", file=sys.stderr, disable=len(names) < 2):
        objects = render_overlay(name)
        issues = validate_objects(objects, store)
        # Every image built by this overlay or pinned in infra/images.yaml.
        issues += check_images(manifest_images(objects), objects, require_all_used=False)
        if issues:
            failed += 1
            typer.echo(f"overlay {name}: {len(issues)} problem(s) in {len(objects)} objects", err=True)
            for issue in issues:
                typer.echo(f"  {issue}", err=True)
        else:
            typer.echo(f"overlay {name}: {len(objects)} objects valid")
    if failed:
        raise typer.Exit(1)


def _oc_builder(kubeconfig: Optional[Path], context: Optional[str]):
    """A builder that uploads the committed tree of this repository (`oc start-build --from-repo`)."""
    oc = shutil.which("oc")
    if oc is None:
        _fail(
            "`oc` is not on PATH: it uploads this repository for the image builds. Install it, or pass "
            "--skip-builds and make the images available otherwise"
        )

    def start(bc: dict[str, Any]) -> str:
        cmd = [
            oc,
            "start-build",
            bc["metadata"]["name"],
            "-n",
            bc["metadata"]["namespace"],
            f"--from-repo={REPO_ROOT}",
            "-o",
            "name",
        ]
        if kubeconfig:
            cmd += ["--kubeconfig", str(kubeconfig)]
        if context:
            cmd += ["--context", context]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
        if proc.returncode != 0:
            from infra.bootstrap import BootstrapError

            raise BootstrapError(f"oc start-build {bc['metadata']['name']} failed: {proc.stderr.strip()}")
        # `-o name` prints e.g. build.build.openshift.io/vinspect-processor-3
        match = re.search(r"(?:^|/)([a-z0-9][-a-z0-9.]*)\s*$", proc.stdout.strip())
        if not match:
            from infra.bootstrap import BootstrapError

            raise BootstrapError(f"could not read the build name from `oc start-build` output: {proc.stdout!r}")
        return match.group(1)

    return start


def bootstrap(
    overlay: str = typer.Option("default", "--overlay", "-o", help="Overlay under infra/manifests/overlays."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (phases, objects, waits); touch nothing."),
    kubeconfig: Optional[Path] = typer.Option(
        None, "--kubeconfig", help="Kubeconfig file (default: KUBECONFIG or ~/.kube/config)."
    ),
    context: Optional[str] = typer.Option(None, "--context", help="Kubeconfig context."),
    timeout: float = typer.Option(1800.0, "--timeout", help="Seconds each wait may take before giving up."),
    poll_interval: float = typer.Option(5.0, "--poll-interval", help="Seconds between readiness polls."),
    skip_builds: bool = typer.Option(False, "--skip-builds", help="Do not build the images in the cluster."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Build images even when their tag exists."),
) -> None:
    """Apply an overlay in dependency order, waiting on CSVs, CRDs and readiness; safe to re-run.

    Generates the Minio credentials and the S3 data connection into Secrets on the cluster; they are
    never written to disk or printed. Needs a default StorageClass (LVM Storage on single-node
    OpenShift). Optional parts (CVAT on OpenShift Virtualization, the GPU stack) come last; when one
    cannot come up the rest is still installed and the exit status is 3 (1: a required part failed).
    """
    from tqdm import tqdm

    from infra.bootstrap import Bootstrapper, format_plan, plan
    from infra.render import render as render_overlay
    from infra.validate import SchemasMissingError, validate_objects

    objects = render_overlay(overlay)
    try:
        issues = validate_objects(objects)
    except SchemasMissingError as exc:
        # The schemas are a development resource; a cluster admin may not have them.
        typer.echo(f"warning: not validated offline ({exc})", err=True)
        issues = []
    if issues:
        for issue in issues:
            typer.echo(f"  {issue}", err=True)
        _fail(f"overlay {overlay} does not validate ({len(issues)} problem(s)); nothing applied")
    phases = plan(objects, builds=not skip_builds)
    if dry_run:
        typer.echo(format_plan(phases))
        return

    from kubernetes import config as kube_config
    from kubernetes import dynamic

    try:
        api_client = kube_config.new_client_from_config(
            config_file=str(kubeconfig) if kubeconfig else None, context=context
        )
    except Exception as exc:  # noqa: BLE001 - the kubernetes client raises several kinds
        _fail(f"cannot load kubeconfig {kubeconfig or '(default)'}: {exc}")
    client = dynamic.DynamicClient(api_client)
    builder = None if skip_builds else _oc_builder(kubeconfig, context)
    total = sum(len(p.steps) for p in phases)
    with tqdm(total=total, desc=f"bootstrap {overlay}", unit="step", file=sys.stderr) as bar:
        runner = Bootstrapper(
            client,
            timeout=timeout,
            poll_interval=poll_interval,
            log=bar.write,
            builder=builder,
            rebuild=rebuild,
            on_step=lambda ref, outcome: bar.update(1),
        )
        report = runner.run(phases)
    finish(report, overlay)


def finish(report: Any, overlay: str) -> None:
    """Print what a bootstrap did; exit 3 naming the optional parts it had to skip.

    Args:
        report: The :class:`infra.bootstrap.Report`.
        overlay: The overlay's name, for the message.
    """
    typer.echo(
        f"bootstrap of {overlay} done in {report.elapsed_s:.0f}s: {report.count('created')} created, "
        f"{report.count('configured')} configured, {report.count('unchanged')} unchanged"
    )
    if report.skipped:
        for part, why in sorted(report.skipped.items()):
            typer.echo(f"warning: optional part {part!r} skipped: {why}", err=True)
        typer.echo(
            f"everything else is in place; fix the optional part(s) ({', '.join(sorted(report.skipped))}) "
            "and run the bootstrap again (it is idempotent)",
            err=True,
        )
        raise typer.Exit(OPTIONAL_SKIPPED_EXIT)


def register(app: typer.Typer) -> None:
    """Add ``render``, ``validate`` and ``bootstrap`` to the ``infra`` sub-app."""
    app.command("render")(render)
    app.command("validate")(validate)
    app.command("bootstrap")(bootstrap)
