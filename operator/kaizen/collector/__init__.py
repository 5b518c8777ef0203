"""The Kaizen collector: traces and user feedback in, Prometheus counters and training exports out.

``service`` is the aiohttp application (``kaizen collector`` runs it), ``models`` its wire contract, ``store`` the
database (SQLite or PostgreSQL through SQLAlchemy), ``schema`` the tables and migrations, ``redact`` the PII
redaction applied at ingestion, ``auth`` the bearer tokens, and ``client`` the synchronous client the operator uses.
"""
