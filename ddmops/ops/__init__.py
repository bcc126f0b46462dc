"""The MLOps wing: MLflow runs, the model registry and serving, the team's servers and
buckets, Optuna studies, run queries and the workspace's layout on disk.

It knows the imaging library; the library knows nothing of it but the
:class:`ddmops.tracker.Tracker` protocol. MLflow and Optuna are imported here only.
"""
