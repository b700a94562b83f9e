"""The doors every protocol goes through: `DataPlane` for reads, `ModelControl` for admin changes."""

from mlserve.dataplane.plane import DataPlane

__all__ = ["DataPlane"]
