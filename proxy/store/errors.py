"""What the store raises; asyncpg and sqlite3 errors never leave ``proxy.store``.

::

    ServiceUnavailableError 503
    └── DatabaseUnavailableError    unreachable, refused, timed out, busy, out of resources:
                                    retrying later helps
    ServerError 500
    └── DatabaseError               anything else the database refused: a bug or bad data
    ClientError
    └── KeyExistsError 409          a key with this hash or alias already exists
"""

from __future__ import annotations

from proxy.errors import ClientError, ServerError, ServiceUnavailableError


class DatabaseUnavailableError(ServiceUnavailableError):
    code = "database_unavailable"


class DatabaseError(ServerError):
    code = "database_error"
    retryable = False


class KeyExistsError(ClientError):
    status = 409
    code = "key_exists"
