"""goodsd: a supervised pool of worker processes draining a Redis list."""

__version__ = "0.1.0"
