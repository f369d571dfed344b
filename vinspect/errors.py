"""The root of every error vinspect raises on purpose.

Every layer (``serving``, ``components``, ``pipelines``, ``infra``, the CLI) derives its own errors from
:class:`VinspectError`, so that the CLI catches them once (``vinspect.cli.main``) and prints the
message without a traceback, and callers can tell an expected failure (bad input, a service that is
down, a gate that said no) from a bug. A layer's error may also derive from the built-in that fits
(``ValueError`` for bad input, ``RuntimeError`` for a failed operation), as kserve's ``errors.py``
does, so that code written against the built-in keeps working.

This module imports nothing from the project and nothing heavy: every layer may import it.
"""

from __future__ import annotations


class VinspectError(Exception):
    """An expected failure with a message that says what went wrong and what to do next.

    Attributes:
        exit_code: The process exit status the CLI uses for it (1 unless a subclass says otherwise).
    """

    exit_code: int = 1
