"""Operator interface: ``A`` maps images to measurements, ``A_adjoint`` back (linear ones)."""

from __future__ import annotations

import torch


class Operator(torch.nn.Module):
    """A forward model. Subclasses implement :meth:`A`; linear ones set ``is_linear``.

    ``A_adjoint`` defaults to the exact vector-Jacobian product of ``A``, which is the
    adjoint for a linear ``A``; subclasses override it with a closed form when cheaper.
    """

    is_linear: bool = False

    def A(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def input_shape(self, y_shape: torch.Size) -> torch.Size:
        """Shape of x for a measurement of shape ``y_shape`` (identity by default)."""
        return y_shape

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        if not self.is_linear:
            raise TypeError(f"{type(self).__name__} is not linear: it has no adjoint")
        x = torch.zeros(self.input_shape(y.shape), dtype=y.dtype, device=y.device, requires_grad=True)
        with torch.enable_grad():
            (adj,) = torch.autograd.grad(self.A(x), x, grad_outputs=y)
        return adj

    def batch(self, index: slice) -> "Operator":
        """The operator for images ``index`` of a batch (the same one unless it is per-image)."""
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.A(x)
