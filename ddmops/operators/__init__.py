"""Forward operators y = A(x) shared by operator learning and inversion."""

from ddmops.operators.base import Operator
from ddmops.operators.blur import Blur

__all__ = ["Operator", "Blur"]
