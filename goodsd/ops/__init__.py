"""The operator's commands (push, status, dead, demo): one module each. They talk to Redis
only, through goodsd.store, so they work whether or not a daemon runs."""
