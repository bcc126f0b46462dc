"""Rectified-flow / conditional flow matching priors: path, network, solvers, training."""
