"""A learned operator answering requests, the same in-process and over HTTP (no MLflow here).

A call is a list of requests, each an object with a ``kind``:

- ``{"kind": "psf_at", "x": 0.3, "y": 0.7}``: the PSF at a normalised field position
  (x left to right, y top to bottom, both in [0, 1]) -> ``{"psf": (K, K)}``;
- ``{"kind": "grid"}``: every node PSF -> ``{"grid": (Gy, Gx, K, K), "x_nodes", "y_nodes"}``;
- ``{"kind": "apply", "image": (H, W) or (H, W, C) numbers}``: the forward model, 'valid' at
  the borders, the image spanning the whole field -> ``{"image": (H', W'[, C])}``;
- ``{"kind": "info"}``: task, family, sizes, SR factor and request limits.

Over HTTP the body is ``{"inputs": [request, ...]}`` and the answer ``{"predictions": [...]}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ddmops.errors import DdmopsError
from ddmops.io import read_json
from ddmops.operators.psf_grid import position_map
from ddmops.operators.psf_grid_math import grid_nodes, psf_at
from ddmops.operators.psf_operator import PsfOperator

INFO_FILE = "operator.json"  # beside operator.npz: task, family, sizes, limits, provenance

FIELDS = {"psf_at": ("x", "y"), "grid": (), "apply": ("image",), "info": ()}


class RequestError(DdmopsError):
    """A request that cannot be answered; the message names the field at fault."""


@dataclass(frozen=True)
class Limits:
    """What one call to a served operator may ask for."""

    max_image_side: int = 256
    max_channels: int = 3
    max_requests: int = 64


@dataclass(frozen=True)
class ServedOperator:
    """A learned operator and its operator.json; every family is read as a grid (a single
    kernel: 1 x 1)."""

    operator: PsfOperator
    info: Mapping[str, Any] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def load(cls, folder: Path) -> "ServedOperator":
        """From an operator folder (operator.npz, and operator.json when there is one)."""
        info = read_json(folder / INFO_FILE) if (Path(folder) / INFO_FILE).is_file() else {}
        return cls(PsfOperator.load(folder), info, Limits(**info.get("limits", {})))

    @property
    def grid(self) -> np.ndarray:
        """(Gy, Gx, K, K) float32."""
        return self.operator.grid_array()

    @property
    def factor(self) -> int:
        return self.operator.factor

    def psf_at(self, x: float, y: float) -> np.ndarray:
        """PSF at normalised field position (x, y), clipped at 0 and summing to 1. -> (K, K)"""
        return psf_at(self.grid, x, y)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The forward model ('valid'), the image spanning the whole field.
        image: (H, W) or (H, W, C) -> (H', W'[, C])"""
        x = torch.from_numpy(np.asarray(image, dtype=np.float32))
        x = x[None, None] if x.dim() == 2 else x.permute(2, 0, 1)[None]  # (1, C, H, W)
        with torch.no_grad():
            out = self.operator.operator(position_map(*x.shape[-2:])[None]).A(x)[0]
        return (out[0] if np.ndim(image) == 2 else out.permute(1, 2, 0)).numpy()

    def describe(self) -> dict[str, Any]:
        gy, gx, k, _ = self.grid.shape
        task = self.info.get("task") or self.operator.task
        return {"task": task, "family": self.operator.family, "kernel_size": k, "grid_shape": [gy, gx],
                "factor": self.factor,
                "padding": "valid", "limits": vars(self.limits)}


def handle(op: ServedOperator, requests: Any) -> list[dict[str, Any]]:
    """Answer each request in order; the first bad one raises :class:`RequestError`."""
    if not isinstance(requests, list):
        raise RequestError(f"expected a list of requests, got {type(requests).__name__}")
    if len(requests) > op.limits.max_requests:
        raise RequestError(f"{len(requests)} requests in one call, more than the limit of {op.limits.max_requests}")
    return [_answer(op, request, f"request {i}") for i, request in enumerate(requests)]


def _answer(op: ServedOperator, request: Any, where: str) -> dict[str, Any]:
    if not isinstance(request, dict):
        raise RequestError(f"{where}: expected an object such as {{\"kind\": \"psf_at\", \"x\": 0.5, \"y\": 0.5}}, "
                           f"got {type(request).__name__}")
    kind = request.get("kind")
    if kind is None:
        raise RequestError(f"{where}: missing field 'kind' (one of {', '.join(FIELDS)})")
    if kind not in FIELDS:
        raise RequestError(f"{where}: unknown kind {kind!r} (one of {', '.join(FIELDS)})")
    for name in FIELDS[kind]:
        if name not in request:
            raise RequestError(f"{where}: kind {kind!r} needs field {name!r}")
    extra = sorted(set(request) - {"kind", *FIELDS[kind]})
    if extra:
        raise RequestError(f"{where}: unknown field {extra[0]!r} for kind {kind!r} "
                           f"(accepted: {', '.join(('kind', *FIELDS[kind]))})")
    return {"kind": kind, **ANSWERS[kind](op, request, where)}


def _psf_at(op: ServedOperator, request: dict, where: str) -> dict[str, Any]:
    x, y = (_position(request[name], f"{where}: field {name!r}") for name in ("x", "y"))
    return {"x": x, "y": y, "psf": op.psf_at(x, y).tolist()}


def _grid(op: ServedOperator, request: dict, where: str) -> dict[str, Any]:
    gy, gx = op.grid.shape[:2]
    return {"grid": op.grid.tolist(), "x_nodes": grid_nodes(gx).tolist(), "y_nodes": grid_nodes(gy).tolist()}


def _apply(op: ServedOperator, request: dict, where: str) -> dict[str, Any]:
    return {"image": op.apply(_image(op, request["image"], f"{where}: field 'image'")).tolist()}


def _info(op: ServedOperator, request: dict, where: str) -> dict[str, Any]:
    return op.describe()


ANSWERS: dict[str, Callable[[ServedOperator, dict, str], dict[str, Any]]] = {
    "psf_at": _psf_at, "grid": _grid, "apply": _apply, "info": _info}


def _position(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{where} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise RequestError(f"{where} = {value} lies outside [0, 1]")
    return float(value)


def _image(op: ServedOperator, value: Any, where: str) -> np.ndarray:
    """Validate an image given as nested lists. -> (H, W) or (H, W, C) float64"""
    lim, k = op.limits, op.grid.shape[-1]
    shape = _nested_shape(value)
    if shape is None or len(shape) not in (2, 3):
        raise RequestError(f"{where} must be a 2-D (H, W) or 3-D (H, W, C) array of numbers")
    if max(shape[:2]) > lim.max_image_side:
        raise RequestError(f"{where} is {shape[0]} x {shape[1]}, larger than the limit of "
                           f"{lim.max_image_side} x {lim.max_image_side}")
    if len(shape) == 3 and not 1 <= shape[2] <= lim.max_channels:
        raise RequestError(f"{where} has {shape[2]} channels; accepted: 1 to {lim.max_channels}")
    if min(shape[:2]) < k:
        raise RequestError(f"{where} is {shape[0]} x {shape[1]}, smaller than the {k} x {k} PSF")
    try:
        image = np.asarray(value)
    except ValueError:  # numpy refuses ragged nesting
        image = None
    if image is None or image.shape != shape:
        raise RequestError(f"{where} is ragged: rows of different lengths (expected shape {shape})")
    if image.dtype.kind not in "iuf":
        found = {"b": "true/false", "U": "text", "S": "text"}.get(image.dtype.kind, "values other than numbers")
        raise RequestError(f"{where} must hold numbers only, found {found}")
    image = image.astype(np.float64)
    if not np.isfinite(image).all():
        raise RequestError(f"{where} holds NaN or infinite values")
    return image


def _nested_shape(value: Any) -> tuple[int, ...] | None:
    """Shape of nested lists following the first element; None for a scalar or an empty list."""
    shape = []
    while isinstance(value, (list, tuple)):
        if not value:
            return None
        shape.append(len(value))
        value = value[0]
    return tuple(shape) or None


def redact(requests: Any) -> None:
    """Cut every image in ``requests`` down to a note of its shape, in place (the list objects
    themselves, which MLflow's copies of the requests share), so an error echo stays short."""
    for request in requests if isinstance(requests, list) else []:
        image = request.get("image") if isinstance(request, dict) else None
        if isinstance(image, list):
            image[:] = [f"<{' x '.join(map(str, _nested_shape(image) or (0,)))} array, not echoed>"]
