"""Pure decision logic: no I/O, no clocks (``now`` is a parameter), unit-tested without mocks."""
