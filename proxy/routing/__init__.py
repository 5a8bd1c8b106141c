"""Routing: alias -> deployments, and the choice of one. Pure: no I/O."""

from proxy.routing.router import Deployment, Router

__all__ = ["Deployment", "Router"]
