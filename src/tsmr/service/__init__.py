"""The HTTP verifier service and its storage.

``create_app(settings)`` (in :mod:`tsmr.service.app`) builds the FastAPI
application; :class:`~tsmr.service.db.Store` is the database layer shared with
the ``tsmr policy`` / ``tsmr refvals`` commands.  ``tsmr serve`` runs it under
uvicorn.  Importing this package imports neither FastAPI nor SQLAlchemy.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "Settings", "Store"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "Settings":
        from .settings import Settings

        return Settings
    if name == "Store":
        from .db import Store

        return Store
    raise AttributeError(name)
