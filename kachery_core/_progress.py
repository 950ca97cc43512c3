"""Progress bars for long operations on big content: hashing, storing, uploading, downloading.

A bar is drawn with tqdm, as ``tqdm.auto`` chooses: a notebook widget in a Jupyter kernel
(JupyterLab, Notebook 7, VS Code, Colab), a text bar on stderr in a terminal. Content smaller
than :data:`kachery_core._constants.PROGRESS_THRESHOLD_BYTES` (64 MiB) draws none.

``KACHERY_PROGRESS`` decides when bars are drawn:

- unset (or ``auto``): when someone is watching, in a kernel or with stderr a terminal;
  never in a script whose stderr goes to a file or a pipe (logs stay clean);
- ``0`` (``false``, ``no``, ``off``): never;
- ``1`` (``true``, ``yes``, ``on``): always (a text bar on stderr where there is no kernel).

The core imports no Jupyter module: a kernel is recognised by the IPython shell already
running in this process, and the notebook bar is imported only there.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any

from . import _constants

#: A bar's label is cut to this many characters (labels are free text, possibly long).
_MAX_LABEL = 48


def threshold() -> int:
    """Content at least this big (in bytes) shows a bar."""
    return _constants.PROGRESS_THRESHOLD_BYTES


def _kernel_shell() -> Any:
    """The IPython shell of the Jupyter kernel running this process, else None."""
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    shell = get_ipython() if callable(get_ipython) else None
    # A kernel's shell (ipykernel's, Colab's subclass of it) has a kernel; a terminal IPython has not.
    return shell if shell is not None and getattr(shell, "kernel", None) is not None else None


def _stderr_is_terminal() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


def enabled() -> bool:
    """Whether bars are drawn now (``KACHERY_PROGRESS``, else whether someone is watching)."""
    setting = _constants.progress_setting()
    if setting is not None:
        return setting
    return _kernel_shell() is not None or _stderr_is_terminal()


def shows(total: int) -> bool:
    """Whether an operation on ``total`` bytes draws a bar now."""
    return total >= threshold() and enabled()


def _clean(label: str) -> str:
    """``label`` fit for one line of a terminal: no control characters (a hostile label could
    move the cursor or change colours), cut to :data:`_MAX_LABEL` characters."""
    text = "".join(c if c.isprintable() else "?" for c in label)
    return text if len(text) <= _MAX_LABEL else text[: _MAX_LABEL - 1] + "…"


def _open_bar(label: str, total: int) -> Any:
    options: dict[str, Any] = dict(total=total, unit="B", unit_scale=True, unit_divisor=1024, leave=True)
    if _kernel_shell() is not None:
        try:
            from tqdm.notebook import tqdm as notebook_tqdm

            # The label goes in after construction: tqdm.notebook puts its first description into
            # an HTML widget unescaped, while later updates are escaped.
            bar = notebook_tqdm(**options)
            bar.set_description_str(_clean(label))
            return bar
        except ImportError:  # no ipywidgets: a text bar on stdout (stderr is a pink box in Jupyter)
            from tqdm.std import tqdm as text_tqdm

            return text_tqdm(desc=_clean(label), file=sys.stdout, mininterval=0.5, **options)
    from tqdm.std import tqdm as text_tqdm

    return text_tqdm(desc=_clean(label), file=sys.stderr, mininterval=0.5, dynamic_ncols=True, **options)


class Progress:
    """A progress bar for one operation on ``total`` bytes, named by ``label``
    (``"uploading arr.npy"``); nothing when ``total`` is small or no one watches.

    Called with the number of bytes done so far; closes itself when that reaches ``total``.
    Used as a context manager it also closes when the operation fails (a notebook bar turns red)::

        with Progress(f"hashing {name}", size) as progress:
            for chunk in chunks:
                ...
                progress(done)
    """

    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = total
        self._bar: Any = None
        if shows(total):
            self._bar = _open_bar(label, total)

    @property
    def shown(self) -> bool:
        """Whether a bar is drawn for this operation."""
        return self._bar is not None

    def __call__(self, done: int) -> None:
        bar = self._bar
        if bar is None:
            return
        if done > bar.n:
            bar.update(done - bar.n)
        if done >= self.total:
            self.close()

    def close(self) -> None:
        bar, self._bar = self._bar, None
        if bar is not None:
            bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()  # short of its total, a notebook bar turns red
