"""The package's version: setup.cfg reads it from here, and OpenAPI's info.version says it."""

__version__ = "0.10.0"
