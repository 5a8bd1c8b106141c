"""The admin API (master key only): virtual keys under ``/key/*`` and spend at ``/usage``.

Shapes follow LiteLLM's endpoints where they exist, so migration scripts keep working.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
from sanic import HTTPResponse, Request, Sanic

from proxy.api.openai import check_content_type, context_of, request_id
from proxy.errors import InvalidRequestError, NotFoundError
from proxy.keys import KeyService, token_hash_of
from proxy.store import GROUP_BY, KeyRecord
from proxy.wire.admin import DeleteKeysRequest, GenerateKeyRequest, KeyRef, UpdateKeyRequest

_T = TypeVar("_T")
_encoder = msgspec.json.Encoder()


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
    ctx = context_of(request)
    ctx.pipeline.authenticate_admin(request.headers)
    if ctx.keys is None:
        raise NotFoundError("Virtual keys are not enabled on this proxy.")
    return ctx.keys


def _view(record: KeyRecord) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(record)
    data["token"] = record.token_hash
    if record.max_budget is not None:
        data["remaining_budget"] = max(0.0, record.max_budget - record.spend)
    return data


async def generate(request: Request) -> HTTPResponse:
    keys = _keys(request)
    raw, record = await keys.generate(_decode(request, GenerateKeyRequest))
    return _json({**_view(record), "key": raw}, request)


async def info(request: Request) -> HTTPResponse:
    keys = _keys(request)
    key = request.args.get("key")
    if not key:
        raise InvalidRequestError("Query parameter 'key' is required.", param="key")
    record = await keys.info(key)
    return _json({"key": record.token_hash, "info": _view(record)}, request)


async def update(request: Request) -> HTTPResponse:
    keys = _keys(request)
    return _json(_view(await keys.update(_decode(request, UpdateKeyRequest))), request)


async def delete(request: Request) -> HTTPResponse:
    keys = _keys(request)
    req = _decode(request, DeleteKeysRequest)
    if not req.keys and not req.key_aliases:
        raise InvalidRequestError("Give 'keys' or 'key_aliases' to delete.", param="keys")
    deleted = await keys.delete(req.keys, req.key_aliases)
    return _json({"deleted_keys": deleted}, request)


async def block(request: Request) -> HTTPResponse:
    keys = _keys(request)
    return _json(_view(await keys.set_blocked(_decode(request, KeyRef).key, True)), request)


async def unblock(request: Request) -> HTTPResponse:
    keys = _keys(request)
    return _json(_view(await keys.set_blocked(_decode(request, KeyRef).key, False)), request)


async def regenerate(request: Request, key: str | None = None) -> HTTPResponse:
    keys = _keys(request)
    raw, record = await keys.regenerate(key or _decode(request, KeyRef).key)
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
    rows = await keys.store.usage_summary(
        key_hash=token_hash_of(key) if key else None,
        model=request.args.get("model"),
        start=_date_arg(request, "from"),
        end=_date_arg(request, "to"),
        group_by=group_by,
    )
    return _json({"group_by": group_by, "data": rows}, request)


def _int_arg(request: Request, name: str, default: int) -> int:
    value = request.args.get(name)
    if value is None:
        return default
    if not value.isdigit() or int(value) < 1:
        raise InvalidRequestError(f"'{name}' must be a positive integer.", param=name)
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
    )
    for handler, path, method in routes:
        name = "admin" + path.replace("/", "_").replace("<", "").replace(">", "").replace(":", "")
        app.add_route(handler, path, methods=[method], name=name)
