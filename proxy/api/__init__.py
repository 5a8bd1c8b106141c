"""Sanic handlers only: HTTP in, pipeline calls, HTTP out."""
