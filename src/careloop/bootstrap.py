"""Wire the application once: settings -> engine -> unit of work -> use-case deps."""

from __future__ import annotations

import gc
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property, partial

import httpx
from sqlalchemy import Engine

from careloop.adapters.approval_definitions import load_approvals_text
from careloop.adapters.automation_definitions import (
    definition_kind,
    header,
    load_calendars_text,
    load_routing_text,
    load_rules_text,
)
from careloop.adapters.cel_conditions import compile_condition
from careloop.adapters.db.driver_sql import compile_all
from careloop.adapters.db.engine import is_sqlite, make_engine
from careloop.adapters.db.migrate import require_migrated, upgrade
from careloop.adapters.db.outbox_signal import outbox_listener
from careloop.adapters.db.uow import SqlUnitOfWork, register_sqlite_write_lock
from careloop.adapters.definitions import checksum, load_workflow_text, shipped_definitions
from careloop.adapters.field_crypto import FieldCipher, build_cipher
from careloop.adapters.oidc import OidcProvider, OidcSettings
from careloop.adapters.passwords import hash_password, verify_password
from careloop.adapters.patient_matching import FuzzyPatientMatcher
from careloop.adapters.totp import PyotpCodes
from careloop.adapters.webhooks import WebhookSender, signed_headers
from careloop.config import Settings
from careloop.engine.approval_timers import approval_timers
from careloop.engine.automation import Automation
from careloop.engine.outbox import log_event
from careloop.engine.pacing import Foreground
from careloop.engine.webhooks import Sender, WebhookFanOut
from careloop.engine.worker import IntegrationPort, Worker, call_integrations
from careloop.services.accounts import PasswordHashing
from careloop.services.approval_report import approval_step_rows
from careloop.services.automation_registry import AutomationRegistry, DefinitionLoaders
from careloop.services.credentials import Authentication, AuthPolicy
from careloop.services.deps import Deps
from careloop.services.governance_report import DEFAULT_STEP_SOURCES, StepSource
from careloop.services.ports import Clock, SystemClock
from careloop.services.workflows import WorkflowRegistry

DEFINITION_LOADERS = DefinitionLoaders(
    kind_of=definition_kind,
    header=header,
    calendars=load_calendars_text,
    routing=load_routing_text,
    rules=load_rules_text,
    checksum=checksum,
    approvals=load_approvals_text,
)
# Where the governance report finds the steps of active definitions; a new kind of
# definition adds its own source here.
STEP_SOURCES: tuple[StepSource, ...] = (*DEFAULT_STEP_SOURCES, approval_step_rows)


@dataclass(frozen=True)
class App:
    settings: Settings
    engine: Engine
    deps: Deps
    hashing: PasswordHashing
    automation: AutomationRegistry
    fan_out: WebhookFanOut
    cipher: FieldCipher | None = None  # field encryption at rest; None = off
    # Requests in flight in this process; an in-process worker gives way to them.
    foreground: Foreground = field(default_factory=Foreground)

    @cached_property
    def authentication(self) -> Authentication:
        return Authentication(self.hashing, PyotpCodes(), authentication_policy(self.settings))

    @cached_property
    def identity_provider(self) -> OidcProvider | None:
        """The single sign-on provider, when CARELOOP_OIDC_ISSUER is set."""
        settings = self.settings
        if not (settings.oidc_issuer and settings.oidc_client_id and settings.oidc_redirect_uri):
            return None
        secret = settings.oidc_client_secret
        return OidcProvider(
            OidcSettings(
                settings.oidc_issuer,
                settings.oidc_client_id,
                secret.get_secret_value() if secret else None,
                settings.oidc_redirect_uri,
                settings.oidc_scopes,
                settings.oidc_link_claim,
            ),
            self.deps.clock.now,
        )


def authentication_policy(settings: Settings) -> AuthPolicy:
    return AuthPolicy(
        max_failures=settings.login_max_failures,
        lockout=timedelta(minutes=settings.login_lockout_minutes),
        session_lifetime=timedelta(minutes=settings.session_lifetime_minutes),
        session_idle_timeout=timedelta(minutes=settings.session_idle_timeout_minutes),
        token_max_lifetime=timedelta(days=settings.token_max_lifetime_days),
        rotation_grace=timedelta(minutes=settings.token_rotation_grace_minutes),
        require_totp_for_staff=settings.totp_required_for_staff(),
    )


def build(
    settings: Settings,
    clock: Clock | None = None,
    *,
    check_migrated: bool = True,
    integration_ports: Mapping[str, IntegrationPort] | None = None,
) -> App:
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
    # The write path's SQL for this database, now rather than by the first requests.
    compile_all(engine.dialect)
    cipher = field_cipher(settings)
    uow = partial(SqlUnitOfWork, engine, settings.audit_chains, cipher=cipher)
    read_uow = partial(SqlUnitOfWork, engine, settings.audit_chains, read_only=True, cipher=cipher)
    deps = Deps(
        uow=uow,
        read_uow=read_uow,
        clock=clock or SystemClock(),
        workflows=WorkflowRegistry(uow, read_uow, load_workflow_text, checksum),
        max_upload_bytes=settings.max_upload_bytes,
        allowed_upload_types=settings.allowed_upload_types,
    )
    registry = AutomationRegistry(
        uow, read_uow, DEFINITION_LOADERS, deps.workflows, frozenset(integration_ports or {})
    )
    return App(
        settings,
        engine,
        deps,
        PasswordHashing(hash_password, verify_password),
        registry,
        WebhookFanOut(compile_condition),
        cipher,
    )


def field_cipher(settings: Settings) -> FieldCipher | None:
    keys, index_key = settings.field_keys, settings.field_index_key
    return build_cipher(
        keys.get_secret_value() if keys else None,
        index_key.get_secret_value() if index_key else None,
    )


def build_worker(
    app: App,
    integration_ports: Mapping[str, IntegrationPort] | None = None,
    sender: Sender | None = None,
) -> Worker:
    """The automation worker: relay (event log, rules, integrations), timers, webhook
    deliveries and periodic jobs."""
    # The active definitions are parsed and their conditions compiled now, with the rest
    # of start-up (and frozen with it by settle_heap), not by the first batch it relays:
    # that took a fresh worker's first batch half as long again as the next ones.
    app.automation.current()
    automation = Automation(
        app.deps,
        app.automation,
        app.fan_out,
        FuzzyPatientMatcher(index=app.cipher.blind_index if app.cipher else None),
        app.settings.duplicate_window_days,
    )
    timeout = app.settings.webhook_timeout_seconds
    return Worker(
        uow=app.deps.uow,
        clock=app.deps.clock,
        handlers=[
            log_event,
            automation.handle,
            approval_timers(app.deps),
            call_integrations(integration_ports or {}),
        ],
        prepare=automation.prepare,
        sender=sender
        or WebhookSender(
            allow_private=app.settings.webhooks_allow_private,
            timeout=httpx.Timeout(timeout),
            total_timeout=timeout,
        ),
        sign=signed_headers,
        jobs=[],
        poll_seconds=app.settings.worker_poll_seconds,
        foreground=app.foreground,
        max_yield_seconds=app.settings.worker_yield_seconds,
        # A batch's writes are deferred to its end, so on PostgreSQL a longer batch holds
        # no lock for longer. SQLite's one writer lock is held from the batch's first
        # statement: short batches there, so intake never waits long behind the relay.
        relay_batch=20 if app.engine.dialect.name == "sqlite" else 100,
        listen=outbox_listener(app.engine),
    )


# The collector's youngest generation, in container objects allocated and not yet freed.
# A relay batch or a bulk move holds tens of thousands of rows and dicts until its
# commit, almost all freed by reference counting afterwards; at Python's default of 700
# the collector walked them about 250 times per 11,000 relayed events (5% of the relay's
# time) to find next to nothing. Cyclic garbage now waits for 50,000 such objects, a few
# megabytes at most.
YOUNG_GENERATION = 50_000


def settle_heap() -> None:
    """After start-up, before serving: what start-up built (definitions, compiled rules and
    conditions, SQL, the web app) lives as long as the process. Frozen, the garbage
    collector's full passes stop walking it on every pass, which cost the relay about a
    tenth of its time. Objects made later are collected as before, in a young generation
    sized for a batch (YOUNG_GENERATION)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION, middle, old)


def migrate(app: App) -> tuple[str, list[str]]:
    """Upgrade the schema and store any shipped definition version not stored yet.

    Shipped versions are the installation's baseline: each is activated, by "system",
    only where no version of its key is active yet. Every later activation is a change
    request a second administrator approves (services/governance.py)."""
    revision = upgrade(app.engine)
    stored = []
    now = app.deps.clock.now()
    for source, text in shipped_definitions():
        workflow, new = app.deps.workflows.store(text, source, now, baseline=True)
        if new:
            stored.append(f"workflow {workflow.key} v{workflow.version}")
    # Calendars and routing first: rule sets are validated against them.
    for kind in ("calendars", "routing", "rules", "approvals"):
        for source, text in shipped_definitions(kind):
            key, _, _ = header(text, source)
            # A shipped version becomes active only where nothing is active yet, so an
            # upgrade never replaces a version an administrator chose.
            activate = not app.automation.has_active(kind, key)
            _, key, version, new = app.automation.store(text, source, "system", now, activate)
            if new:
                stored.append(f"{kind} {key} v{version}" + (" (active)" if activate else ""))
    return revision, stored
