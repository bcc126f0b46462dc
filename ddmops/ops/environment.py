"""Project defaults for the tools' environment: nothing may wait on the network."""

from __future__ import annotations

import logging
import os

# Telemetry and update checks off unless the user says otherwise.
QUIET_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "DVC_NO_ANALYTICS": "1",
             "DVC_NO_UPDATE_CHECK": "1", "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false",
             "MLFLOW_LOGGING_LEVEL": "WARNING"}


def quiet_environment() -> None:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in ("mlflow", "alembic"):  # store creation and migrations talk at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
