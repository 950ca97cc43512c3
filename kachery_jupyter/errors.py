"""Errors of the Jupyter layer; magics turn every kachery error into a one-line UsageError."""

from __future__ import annotations

from kachery_core.errors import KacheryError


class KacheryJupyterError(KacheryError):
    """Base class of errors raised by kachery_jupyter."""


class WidgetUnavailableError(KacheryJupyterError, ImportError):
    """anywidget is not installed."""

    def __init__(self) -> None:
        super().__init__('The kachery widgets need anywidget: pip install "kachery-jupyter[jupyter]"')
