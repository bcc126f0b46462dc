"""Where operator models registered before ddmops 0.2 look for their loader (their stored
model code imports ``ddmops.registry``); new models name :mod:`ddmops.ops.registry`."""

from ddmops.ops.registry import OperatorModel  # noqa: F401

__all__ = ["OperatorModel"]
