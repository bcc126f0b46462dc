import os, sys, time, numpy as np, mlflow
sys.path.insert(0, "/tmp/proto")
from mlflow.models import ModelSignature
from mlflow.types.schema import Schema, ColSpec, AnyType, Map
mlflow.set_tracking_uri("sqlite:////tmp/proto/mlruns.db")
sig = ModelSignature(inputs=Schema([ColSpec(Map(AnyType()))]), outputs=Schema([ColSpec(Map(AnyType()))]))
with mlflow.start_run() as run:
    info = mlflow.pyfunc.log_model(name="op", python_model="/tmp/proto/code3.py", signature=sig,
        input_example=[{"kind": "psf_at", "x": 0.5, "y": 0.5}], registered_model_name="proto3",
        pip_requirements=["mlflow"], code_paths=["/tmp/proto/model_mod3.py"])
m = mlflow.pyfunc.load_model(info.model_uri)
print(m.predict([{"kind": "psf_at", "x": 0.5, "y": 0.5}]))
print(m.predict([{"kind": "apply", "image": [[1.0,2.0],[3.0,4.0]]}, {"kind": "info"}]))
