"""The Kaizen reference model server (``python -m kaizen_server``, image ghcr.io/kaizen-dev/kaizen-server): serves a
model as the trainer saves it over OpenAI-compatible routes, with Prometheus metrics labelled by model version and
track, and a trace in the Kaizen collector for every answer. :mod:`.engine` answers in-process, :mod:`.app` over
HTTP, :mod:`.__main__` runs it from the environment."""
