"""Wire the application once: settings -> engine -> unit of work -> use-case deps."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from sqlalchemy import Engine

from careloop.adapters.db.engine import is_sqlite, make_engine
from careloop.adapters.db.migrate import require_migrated, upgrade
from careloop.adapters.db.uow import SqlUnitOfWork, register_sqlite_write_lock
from careloop.adapters.definitions import checksum, load_workflow_text, shipped_definitions
from careloop.adapters.passwords import hash_password, verify_password
from careloop.config import Settings
from careloop.services.accounts import PasswordHashing
from careloop.services.deps import Deps
from careloop.services.ports import Clock, SystemClock
from careloop.services.workflows import WorkflowRegistry


@dataclass(frozen=True)
class App:
    settings: Settings
    engine: Engine
    deps: Deps
    hashing: PasswordHashing


def build(settings: Settings, clock: Clock | None = None, *, check_migrated: bool = True) -> App:
    url = settings.resolved_database_url()
    if url.startswith("sqlite:///") and settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(url, pool_size=settings.db_pool_size)
    if check_migrated:
        try:
            require_migrated(engine)
        except Exception:
            engine.dispose()
            raise
    if is_sqlite(engine):
        register_sqlite_write_lock(engine)
    uow = partial(SqlUnitOfWork, engine, settings.audit_chains)
    read_uow = partial(SqlUnitOfWork, engine, settings.audit_chains, read_only=True)
    deps = Deps(
        uow=uow,
        read_uow=read_uow,
        clock=clock or SystemClock(),
        workflows=WorkflowRegistry(uow, read_uow, load_workflow_text, checksum),
        max_upload_bytes=settings.max_upload_bytes,
        allowed_upload_types=settings.allowed_upload_types,
    )
    return App(settings, engine, deps, PasswordHashing(hash_password, verify_password))


def migrate(app: App) -> tuple[str, list[str]]:
    """Upgrade the schema and store any shipped definition version not stored yet."""
    revision = upgrade(app.engine)
    stored = []
    now = app.deps.clock.now()
    for source, text in shipped_definitions():
        workflow, new = app.deps.workflows.store(text, source, now)
        if new:
            stored.append(f"{workflow.key} v{workflow.version}")
    return revision, stored
