"""The operator a stage restores with, named by a file, a folder or an MLflow URI, resolved to
a ready :class:`~ddmops.operators.psf_operator.PsfOperator` with provenance tags."""

from __future__ import annotations

from pathlib import Path

from ddmops.data import resolve_path
from ddmops.operators.psf_operator import PsfOperator

URI_SCHEMES = ("models:/", "runs:/")


def resolve_operator(ref: str, root: Path) -> tuple[PsfOperator, dict[str, str]]:
    """The operator ``ref`` names, and provenance tags: ``ddmops.operator`` and, for a registered
    model, ``ddmops.operator.model``, ``.version`` (the one an alias names now) and ``.run_id``.

    ref: ``models:/<name>@<alias>``, ``models:/<name>/<version>``, ``runs:/<run_id>/<path>``, or a
    file (.npz, .npy) or folder (an operator folder, a downloaded model) relative to ``root``.
    """
    if ref.startswith(URI_SCHEMES):
        from ddmops.ops.registry import fetch_operator  # imports MLflow
        return fetch_operator(ref)
    path = resolve_path(ref, root)
    folder = path
    if (path / "MLmodel").is_file():
        from ddmops.ops.registry import model_operator_folder
        folder = model_operator_folder(path)
    return PsfOperator.load(folder), {"ddmops.operator": str(path)}
