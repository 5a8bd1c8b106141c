"""Routing: alias -> deployments, and the choice of one.

Pure except ``shared_cooldowns`` (the Redis edge that carries cooldowns between replicas),
which is imported from its module so that routing alone never loads a Redis client.
"""

from proxy.routing.affinity import affinity_key, affinity_key_of
from proxy.routing.queue import FairQueue
from proxy.routing.router import Deployment, Router

__all__ = ["Deployment", "FairQueue", "Router", "affinity_key", "affinity_key_of"]
