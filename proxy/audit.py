"""The admin audit trail: who did what to which key, when and from where.

``KeyService`` builds an ``AuditEntry`` for each admin action with ``entry()``, hands it to
the store with the change (one transaction), and once that committed calls ``emit()``,
which writes the same facts as one structured log line on the ``llm_proxy.audit`` logger
(at INFO whatever the general level: an audit trail is not optional)::

    {"logger": "llm_proxy.audit", "action": "key.updated", "actor": "master-key:3f2a9c1b7d4e",
     "target_hash": "9f86...", "target_alias": "team-a", "changes": {"rpm_limit": 60}, ...}

What is recorded is decided here, once: changed fields by name with their new values,
except the secrets (a caller-chosen raw key is never among them) and ``metadata``, whose
free-form values are reduced to their names.
"""

from __future__ import annotations

import getpass
import logging
import os
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any, Final

import msgspec

from proxy.logs import AccessLine
from proxy.store.audit import AuditEntry

AUDIT_LOGGER: Final = "llm_proxy.audit"
_MAX_HEADER = 1000  # x-forwarded-for is the client's to choose: cut, never refused
_SECRET_FIELDS: Final = frozenset({"key", "token", "api_key", "master_key"})

log = logging.getLogger(AUDIT_LOGGER)
log.setLevel(logging.INFO)


class Actor(msgspec.Struct, frozen=True, kw_only=True):
    """Who acts and from where: the master key's actor string or "cli:<user>"."""

    name: str
    client_ip: str | None = None
    forwarded_for: str | None = None
    request_id: str | None = None


def cli_actor() -> Actor:
    """The actor for ``llm-proxy keys ...``: the operating-system user running it."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name in the environment or the password database
        user = f"uid-{os.getuid()}"
    return Actor(name=f"cli:{user}")


def entry(
    by: Actor,
    action: str,
    *,
    target_hash: str | None,
    target_alias: str | None,
    changes: Mapping[str, Any] | None = None,
) -> AuditEntry:
    """The audit entry for ``action`` done by ``by`` now; ``changes`` are made safe here."""
    forwarded = by.forwarded_for
    return AuditEntry(
        at=datetime.now(UTC),
        actor=by.name,
        action=action,
        target_hash=target_hash,
        target_alias=target_alias,
        changes=safe_changes(changes or {}),
        client_ip=by.client_ip or None,
        forwarded_for=forwarded[:_MAX_HEADER] if forwarded else None,
        request_id=by.request_id,
    )


def safe_changes(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Field names and new values fit for the audit log: no secrets, JSON-plain values."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if name in _SECRET_FIELDS:
            continue
        if name == "metadata" and isinstance(value, Mapping):
            out[name] = sorted(str(k) for k in value)  # names only: values are free-form
        elif isinstance(value, datetime | date):
            out[name] = value.isoformat()
        elif isinstance(value, tuple | list):
            out[name] = list(value)
        else:
            out[name] = value
    return out


def emit(done: AuditEntry) -> None:
    """One structured log line for an action the store has committed."""
    fields = {"event": "audit", **msgspec.to_builtins(done)}
    fields.pop("id", None)
    log.info(AccessLine(fields))
