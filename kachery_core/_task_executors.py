"""Where a TaskBackend runs its handlers: a thread pool by default, or Dask for more than one machine.

``TaskBackend(executor=DaskExecutor(...))`` sends each job to a ``dask.distributed`` cluster: a
``Client`` you made, a scheduler address, or a ``LocalCluster`` it starts (and stops). Handlers
then run in worker processes: they must be picklable (cloudpickle sends a function defined in a
notebook by value, but not one that holds a lock, an open file, a database connection...), and
:func:`kachery_core.report_task_progress` / ``task_cancel_requested`` speak only in the backend's
own process (in Dask workers they do nothing). Needs the ``dask`` extra.
"""

from __future__ import annotations

import concurrent.futures
import importlib
from collections.abc import Callable
from typing import Any

from .errors import InvalidArgumentError, KacheryError


class TaskFunctionError(KacheryError, TypeError):
    """A handler that cannot be sent to Dask workers (it cannot be pickled)."""


class DaskExecutor:
    """Runs task handlers on a Dask cluster; ``submit`` returns a ``concurrent.futures.Future``."""

    #: Handlers run in other processes: a backend does not pass them its per-job context.
    remote = True

    def __init__(self, client: Any = None, *, n_workers: int = 2, threads_per_worker: int = 1,
                 processes: bool = True) -> None:
        try:
            # Any: dask.distributed is only partly typed
            distributed: Any = importlib.import_module("distributed")
        except ImportError:
            raise KacheryError("DaskExecutor needs dask.distributed: pip install 'kachery-jupyter[dask]'") from None
        self._cluster: Any = None
        self.client: Any
        if client is None:
            self._cluster = distributed.LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker,
                                                     processes=processes, dashboard_address=None)
            self.client = distributed.Client(self._cluster)
        elif isinstance(client, str):
            self.client = distributed.Client(client)
        elif isinstance(client, distributed.Client):
            self.client = client
        else:
            raise InvalidArgumentError("client", client, "expected a dask.distributed.Client, a scheduler address or None")
        self._own_client = not isinstance(client, distributed.Client)

    def __repr__(self) -> str:
        return f"<DaskExecutor {self.client.scheduler_info().get('address', '?')}>"

    def check_function(self, function: Callable[..., Any], task_name: str) -> None:
        """Refuse, when it is registered, a handler Dask could not send to its workers."""
        cloudpickle: Any = importlib.import_module("cloudpickle")
        try:
            cloudpickle.dumps(function)
        except Exception as e:  # noqa: BLE001 - whatever pickling raises is the reason
            raise TaskFunctionError(
                f"the handler of task {task_name!r} cannot be sent to Dask workers: {type(e).__name__}: {e}. "
                "Define it at the top level of a module (or of the notebook) without references to open files, "
                "locks or connections, or serve it with the default thread executor"
            ) from None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        outer: concurrent.futures.Future[Any] = concurrent.futures.Future()
        inner = self.client.submit(fn, *args, pure=False, **kwargs)

        def relay(done: Any) -> None:
            try:
                outer.set_result(done.result())
            except BaseException as e:  # noqa: BLE001 - a lost worker, a pickling failure: the job's error
                outer.set_exception(e)

        inner.add_done_callback(relay)
        return outer

    def shutdown(self, wait: bool = True) -> None:
        if self._own_client:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()
