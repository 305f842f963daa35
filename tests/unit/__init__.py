"""Fast unit tests, one file per pbu module (``pytest tests/unit``, about a minute)."""
