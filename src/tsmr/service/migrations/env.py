"""Alembic environment of the verifier database: run by tsmr.service.db.upgrade, or by alembic itself.

Programmatic runs pass an open connection in ``config.attributes["connection"]``
(inside the transaction that holds the migration lock); a command-line run
(``alembic -x url=... upgrade head`` with ``script_location`` pointing here)
opens its own from ``-x url=`` or ``TSMR_DATABASE_URL``.
"""

from __future__ import annotations

import os

from alembic import context

from tsmr.service.db import Base, make_engine

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get("TSMR_DATABASE_URL")
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get("TSMR_DATABASE_URL")
    engine = make_engine(url)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
