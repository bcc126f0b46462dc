"""ddmops: an experiment platform for unsupervised imaging inverse problems (DDM4IP, DCDP)."""

__version__ = "0.1.0"
