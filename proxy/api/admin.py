"""The admin API (master key only): virtual keys under ``/key/*``, spend at ``/usage`` and
the audit trail of admin actions at ``/audit``.

Shapes follow LiteLLM's endpoints where they exist, so migration scripts keep working.
Every key change is audited with the actor ``authenticate_admin`` names, the client's
address (and ``x-forwarded-for`` as given) and the request id.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import msgspec
from sanic import HTTPResponse, Request, Sanic

from proxy.api.openai import check_content_type, context_of, request_id
from proxy.audit import Actor
from proxy.errors import InvalidRequestError, NotFoundError
from proxy.keys import KeyService, token_hash_of
from proxy.store import GROUP_BY, KeyRecord
from proxy.store.audit import AUDIT_ACTIONS, AUDIT_LIMIT_MAX, AuditQuery
from proxy.wire.admin import DeleteKeysRequest, GenerateKeyRequest, KeyRef, UpdateKeyRequest

_T = TypeVar("_T")
_encoder = msgspec.json.Encoder()

DEFAULT_USAGE_WINDOW = timedelta(days=30)  # GET /usage without 'from'


def _json(data: Any, request: Request, status: int = 200) -> HTTPResponse:
    body = _encoder.encode(msgspec.to_builtins(data))
    headers = {"x-request-id": request_id(request)}
    return HTTPResponse(body, status=status, headers=headers, content_type="application/json")


def _decode(request: Request, kind: type[_T]) -> _T:
    check_content_type(request)
    try:
        return msgspec.json.decode(request.body or b"{}", type=kind)
    except msgspec.ValidationError as exc:
        raise InvalidRequestError(f"Invalid request: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequestError(f"The request body is not valid JSON: {exc}") from exc


def _keys(request: Request) -> KeyService:
    return _admin(request)[0]


def _admin(request: Request) -> tuple[KeyService, Actor]:
    """The key service and who is calling, once the master key checked out."""
    ctx = context_of(request)
    actor = ctx.pipeline.authenticate_admin(request.headers)
    if ctx.keys is None:
        raise NotFoundError("Virtual keys are not enabled on this proxy.")
    by = Actor(
        name=actor,
        client_ip=request.remote_addr or request.ip or None,
        forwarded_for=request.headers.get("x-forwarded-for"),
        request_id=request_id(request),
    )
    return ctx.keys, by


def _view(record: KeyRecord) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(record)
    data["token"] = record.token_hash
    if record.max_budget is not None:
        data["remaining_budget"] = max(0.0, record.max_budget - record.spend)
    return data


async def generate(request: Request) -> HTTPResponse:
    keys, by = _admin(request)
    raw, record = await keys.generate(_decode(request, GenerateKeyRequest), by=by)
    return _json({**_view(record), "key": raw}, request)


async def info(request: Request) -> HTTPResponse:
    keys = _keys(request)
    key = request.args.get("key")
    if not key:
        raise InvalidRequestError("Query parameter 'key' is required.", param="key")
    record = await keys.info(key)
    return _json({"key": record.token_hash, "info": _view(record)}, request)


async def update(request: Request) -> HTTPResponse:
    keys, by = _admin(request)
    return _json(_view(await keys.update(_decode(request, UpdateKeyRequest), by=by)), request)


async def delete(request: Request) -> HTTPResponse:
    keys, by = _admin(request)
    req = _decode(request, DeleteKeysRequest)
    if not req.keys and not req.key_aliases:
        raise InvalidRequestError("Give 'keys' or 'key_aliases' to delete.", param="keys")
    deleted = await keys.delete(req.keys, req.key_aliases, by=by)
    return _json({"deleted_keys": deleted}, request)


async def block(request: Request) -> HTTPResponse:
    keys, by = _admin(request)
    key = _decode(request, KeyRef).key
    return _json(_view(await keys.set_blocked(key, True, by=by)), request)


async def unblock(request: Request) -> HTTPResponse:
    keys, by = _admin(request)
    key = _decode(request, KeyRef).key
    return _json(_view(await keys.set_blocked(key, False, by=by)), request)


async def regenerate(request: Request, key: str | None = None) -> HTTPResponse:
    keys, by = _admin(request)
    raw, record = await keys.regenerate(key or _decode(request, KeyRef).key, by=by)
    return _json({**_view(record), "key": raw}, request)


async def list_keys(request: Request) -> HTTPResponse:
    keys = _keys(request)
    page = _int_arg(request, "page", 1)
    size = min(_int_arg(request, "size", 100), 1000)
    records = await keys.list_keys(
        user_id=request.args.get("user_id"),
        team_id=request.args.get("team_id"),
        limit=size,
        offset=(page - 1) * size,
    )
    full = request.args.get("return_full_object", "false").lower() == "true"
    items: list[Any] = [_view(r) for r in records] if full else [r.token_hash for r in records]
    return _json({"keys": items, "current_page": page, "size": size}, request)


async def usage(request: Request) -> HTTPResponse:
    keys = _keys(request)
    group_by = request.args.get("group_by", "day")
    if group_by not in GROUP_BY:
        raise InvalidRequestError(
            f"'group_by' must be one of {', '.join(GROUP_BY)}.", param="group_by"
        )
    key = request.args.get("key")
    end = _date_arg(request, "to")
    # Without 'from', the last 30 days: an unbounded scan of a table with 100M usage records
    # takes minutes (bench/README.md, "/usage at scale"); 'from' reaches further back.
    start = _date_arg(request, "from") or (end or datetime.now(UTC)) - DEFAULT_USAGE_WINDOW
    rows = await keys.store.usage_summary(
        key_hash=token_hash_of(key) if key else None,
        model=request.args.get("model"),
        start=start,
        end=end,
        group_by=group_by,
    )
    window = {"from": start.isoformat(), "to": end.isoformat() if end else None}
    return _json({"group_by": group_by, **window, "data": rows}, request)


async def audit_log(request: Request) -> HTTPResponse:
    """Admin actions, newest first; ``next_cursor`` fetches the page after this one."""
    keys = _keys(request)
    action = request.args.get("action")
    if action is not None and action not in AUDIT_ACTIONS:
        raise InvalidRequestError(
            f"'action' must be one of {', '.join(AUDIT_ACTIONS)}.", param="action"
        )
    limit = _int_arg(request, "limit", 100)
    if limit > AUDIT_LIMIT_MAX:
        raise InvalidRequestError(f"'limit' must be at most {AUDIT_LIMIT_MAX}.", param="limit")
    key = request.args.get("key")
    cursor = request.args.get("cursor")
    query = AuditQuery(
        action=action,
        actor=request.args.get("actor"),
        key_hash=token_hash_of(key) if key else None,
        key_alias=key or None,
        start=_date_arg(request, "from"),
        end=_date_arg(request, "to"),
        before_id=None if cursor is None else _int_arg(request, "cursor", 0),
        limit=limit + 1,  # one more than asked: tells whether another page follows
        offset=_int_arg(request, "offset", 0, minimum=0),
    )
    rows = await keys.store.list_audit(query)
    page = rows[:limit]
    more = len(rows) > limit
    return _json(
        {
            "object": "list",
            "data": page,
            "has_more": more,
            "next_cursor": str(page[-1].id) if more and page[-1].id is not None else None,
        },
        request,
    )


def _int_arg(request: Request, name: str, default: int, *, minimum: int = 1) -> int:
    value = request.args.get(name)
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()) or len(value) > 18 or int(value) < minimum:
        kind = "a positive" if minimum >= 1 else "a non-negative"
        raise InvalidRequestError(f"'{name}' must be {kind} integer.", param=name)
    return int(value)


def _date_arg(request: Request, name: str) -> datetime | None:
    value = request.args.get(name)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidRequestError(
            f"'{name}' must be an ISO date or date-time, e.g. 2026-11-01.", param=name
        ) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def register(app: Sanic[Any, Any]) -> None:
    routes = (
        (generate, "/key/generate", "POST"),
        (info, "/key/info", "GET"),
        (update, "/key/update", "POST"),
        (delete, "/key/delete", "POST"),
        (block, "/key/block", "POST"),
        (unblock, "/key/unblock", "POST"),
        (regenerate, "/key/regenerate", "POST"),
        (regenerate, "/key/<key:str>/regenerate", "POST"),
        (list_keys, "/key/list", "GET"),
        (usage, "/usage", "GET"),
        (audit_log, "/audit", "GET"),
    )
    for handler, path, method in routes:
        name = "admin" + path.replace("/", "_").replace("<", "").replace(">", "").replace(":", "")
        app.add_route(handler, path, methods=[method], name=name)
