import pytest

from ddmops.config import Paths
from ddmops.errors import ConfigError
from ddmops.ops.workspace import Workspace


def test_relative_paths_stay_inside(tmp_path):
    with pytest.raises(ConfigError, match="paths.prepared"):
        Workspace(tmp_path, Paths(prepared="../elsewhere"))


def test_absolute_paths_allowed(tmp_path):
    ws = Workspace(tmp_path / "ws", Paths(prepared=str(tmp_path / "shared")))
    assert ws.path("prepared") == tmp_path / "shared"
    assert ws.path("metrics", "x.json") == tmp_path / "ws" / "metrics" / "x.json"
