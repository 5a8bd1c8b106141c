"""Load tests: realistic traffic (locustfile.py), a realistic fake provider, the runner."""
