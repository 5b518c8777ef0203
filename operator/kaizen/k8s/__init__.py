"""The edge to the Kubernetes API: the only code besides kopf itself that talks to the API server.

Controllers call these functions (from kopf's sync handlers, which run in its thread pool) rather than the
``kubernetes`` client directly, so the client's quirks and error handling live in one place.
"""
