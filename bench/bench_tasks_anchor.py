"""The anchor of ``bench_tasks.py``: a bare FastAPI JSON round trip on uvicorn.

``POST /calc`` with a JSON object ``{"x": ..., ...}`` answers ``{"result": x * x}``:
the request's JSON parsed, the trivial calculation the task benchmark serves done
in the server, the answer sent as JSON. No database, signatures, queue or second
process: the floor of "ask a server for a calculation over HTTP". Started by
:mod:`bench_tasks` as ``python -m uvicorn --factory
bench_tasks_anchor:task_anchor_app`` with uvicorn's defaults, as ``kachery-hub
serve`` runs.

Module-level imports on purpose: FastAPI reads the handlers' annotations from
this module's globals.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request


def task_anchor_app() -> Any:
    """The anchor's FastAPI app (built by uvicorn ``--factory`` in the anchor process)."""
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/calc")
    async def calc(request: Request) -> dict[str, Any]:
        task_input = await request.json()
        return {"result": task_input["x"] * task_input["x"]}

    return app
