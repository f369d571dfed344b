"""Where the scanners live: network-config-analyzer and checkov, each in its own virtualenv.

Both pin libraries the project's own environment cannot share (network-config-analyzer 2.1.0
pins ``networkx==3.2.1`` and ``PyYAML==6.0.2``; checkov 3.x pins ``networkx<2.7``), so the
Makefile installs each into ``.venv-nca`` / ``.venv-checkov`` at the repository root and the
checks call them as programs. ``VINSPECT_NCA`` / ``VINSPECT_CHECKOV`` point elsewhere.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from vinspect.errors import VinspectError

REPO_ROOT = Path(__file__).resolve().parents[1]

# name -> (environment variable, virtualenv folder, program); versions are pinned in the Makefile.
_TOOLS = {
    "nca": ("VINSPECT_NCA", ".venv-nca", "nca"),
    "checkov": ("VINSPECT_CHECKOV", ".venv-checkov", "checkov"),
}


class ToolMissingError(VinspectError, RuntimeError):
    """A scanner is not installed; the message says how to install it."""


def tool_path(name: str) -> str:
    """Path of the scanner ``name`` (``nca`` or ``checkov``).

    Looks at the environment variable, then the Makefile's virtualenv, then ``PATH``.

    Raises:
        ToolMissingError: Not found anywhere; the message names the make target that installs it.
    """
    env, venv, program = _TOOLS[name]
    candidates = [os.environ.get(env), str(REPO_ROOT / venv / "bin" / program), shutil.which(program)]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ToolMissingError(
        f"{program} is not installed: run `make {venv}` (it creates {venv} at the repository root) "
        f"or set {env} to the program"
    )
