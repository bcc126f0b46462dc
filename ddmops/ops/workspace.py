"""The workspace: the folder holding params.yaml, against which relative paths resolve."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from ddmops.config import Paths
from ddmops.errors import ConfigError


@dataclass(frozen=True)
class Workspace:
    root: Path
    paths: Paths

    def __post_init__(self):
        for f in fields(self.paths):
            value = getattr(self.paths, f.name)
            if value and not Path(value).is_absolute():
                resolved = (self.root / value).resolve()
                if not resolved.is_relative_to(self.root.resolve()):
                    raise ConfigError(
                        f"paths.{f.name}: {value!r} leaves the workspace {self.root}; "
                        "give an absolute path to write outside it"
                    )

    def path(self, name: str, *parts: str) -> Path:
        """Absolute path of ``paths.<name>`` (joined with ``parts``)."""
        value = getattr(self.paths, name)
        base = Path(value) if Path(value).is_absolute() else self.root / value
        return base.joinpath(*parts)

    def key(self, path: Path) -> str:
        """How run tags and digests name ``path``: relative to the root when inside it."""
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)

    def metrics_file(self, stage: str) -> Path:
        return self.path("metrics", f"{stage}.json")
