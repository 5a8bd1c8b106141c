"""The TLS servers' fixtures (fixtures.py): a test CA, TLS-only Redis and PostgreSQL."""

from tests.integration.tls.fixtures import pki, tls_postgres, tls_redis, tls_redis_mutual

__all__ = ["pki", "tls_postgres", "tls_redis", "tls_redis_mutual"]
