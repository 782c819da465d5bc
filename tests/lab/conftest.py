"""Lab fixtures (shared with other test directories through ftcp.lab.pytest_fixtures)."""

from ftcp.lab.pytest_fixtures import lab_factory, module_lab_factory

__all__ = ["lab_factory", "module_lab_factory"]
