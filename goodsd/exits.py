"""Exit codes of goodsd's processes and commands, and what each one means.

The master, its children and the CLI all speak these codes (sysexits.h's EX_CONFIG for a
config that cannot work). Their meanings are written here once: ``goodsd --help`` and every
command's ``--help`` (goodsd.cli), the EXIT STATUS of goodsd(1) (goodsd.docgen) are made from
MEANINGS and COMMANDS, and tests/unit/test_readme.py holds the README's "Exit codes" table to
MEANINGS.
"""

EXIT_OK = 0  # clean stop, or the command did its job; a child: a planned recycle (max_items)
EXIT_FAILURE = 1  # anything unexpected, or a command that could not do its job
EXIT_USAGE = 2  # bad command-line arguments, as argparse exits on them
EXIT_UNREPLICATED = 3  # goodsd push: items in, on the primary only (redis.wait_replicas)
EXIT_CONFIG = 78  # EX_CONFIG: the config, a handler that cannot load, Redis refusing access

# What makes the master exit 78 at start (and `run --detach` before it detaches), one phrase
# each; MEANINGS and the commands' lists below are made of them.
BAD_CONFIG = "a bad config (the message names the file, line and key)"
CANNOT_LOAD = "a handler, setup or source that cannot be loaded at start"
PASSWORD_FILE = "an unreadable password file"
REDIS_REFUSES = (
    "a Redis that refuses the login, a command goodsd needs (ACL), its unix socket (file "
    "permissions) or the TLS handshake at start"
)
WRONG_FORM = (
    "a redis.url of the wrong form (a redis:// URL at a Cluster node, a replica or a "
    "sentinel, a Cluster or Sentinel URL at something else)"
)
TOO_OLD = "a Redis older than 6.2 at start"
METRICS_ADDRESS = "a metrics address that cannot be served"
AT_START = (
    BAD_CONFIG,
    CANNOT_LOAD,
    PASSWORD_FILE,
    REDIS_REFUSES,
    WRONG_FORM,
    TOO_OLD,
    METRICS_ADDRESS,
)

# What `goodsd check --redis` finds wrong with Redis (goodsd.deployment.report's problems).
REDIS_PROBLEMS = (
    "any problem with Redis: unreachable, a refused login or TLS handshake, a redis.url of "
    "the wrong form, a command goodsd needs that its ACL user may not run, a server older "
    "than 6.2"
)
# What `goodsd push` exit 3 means.
UNREPLICATED = (
    "every item counted is in, but the last ones (the message says how many) are on the "
    "primary only; pushing them again would add them twice"
)
NO_RESTART = "systemd does not restart goodsd after it (RestartPreventExitStatus=78)"

# What each code means for goodsd as a whole: `goodsd --help`, goodsd(1) and the README.
MEANINGS: dict[int, str] = {
    EXIT_OK: "clean stop (run), or the command did its job",
    EXIT_FAILURE: "anything else: Redis unreachable or failing, an item not found (dead "
    "requeue), a purge refused or declined, a locked pidfile, an unexpected failure",
    EXIT_USAGE: "bad command-line arguments (with a usage line)",
    EXIT_UNREPLICATED: f"goodsd push with redis.wait_replicas: {UNREPLICATED}",
    EXIT_CONFIG: f"EX_CONFIG: {BAD_CONFIG}, {CANNOT_LOAD} (for goodsd check: that does not "
    f"import within --import-timeout), {PASSWORD_FILE}, {REDIS_REFUSES}, {WRONG_FORM}, "
    f"{TOO_OLD}, {METRICS_ADDRESS}; for goodsd check --redis, {REDIS_PROBLEMS}; {NO_RESTART}",
}

USAGE = "bad command-line arguments"
CONFIG_FILE = "bad config file (the message names its file, line and key)"
REDIS_FAILING = "Redis unreachable or failing"

# What each code means for each command (its words, "dead list"), in its --help and goodsd(1).
COMMANDS: dict[str, dict[int, str]] = {
    "run": {
        EXIT_OK: "clean stop",
        EXIT_FAILURE: "a pidfile another goodsd holds, a log file that cannot be opened, no "
        "/dev/log to detach to without --logfile, or an unexpected failure",
        EXIT_USAGE: USAGE,
        EXIT_CONFIG: ", ".join(AT_START),
    },
    "check": {
        EXIT_OK: "the config is valid and everything it names imports (with --redis: and "
        "Redis is as goodsd needs it)",
        EXIT_FAILURE: "interrupted, or an unexpected failure (one line on stderr says where)",
        EXIT_USAGE: f"{USAGE}, an unknown --as-user or --group, --as-user without root",
        EXIT_CONFIG: "the config is invalid; something it names does not import within "
        "--import-timeout; a command, setpriv, the metrics address or a Redis unix socket it "
        "names cannot be used; with --as-user, a file or the interpreter that user cannot "
        f"reach; with --redis, {REDIS_PROBLEMS}",
    },
    "push": {
        EXIT_OK: "every item was pushed",
        EXIT_FAILURE: f"{REDIS_FAILING} (the message says how many went in), an item over "
        "the limit, or interrupted",
        EXIT_USAGE: USAGE,
        EXIT_UNREPLICATED: f"with redis.wait_replicas: {UNREPLICATED}",
        EXIT_CONFIG: CONFIG_FILE,
    },
    "status": {
        EXIT_OK: "shown (with --watch: stopped with Ctrl-C)",
        EXIT_FAILURE: REDIS_FAILING,
        EXIT_USAGE: USAGE,
        EXIT_CONFIG: CONFIG_FILE,
    },
    "dead": {
        EXIT_OK: "done",
        EXIT_FAILURE: "see the action's --help",
        EXIT_USAGE: USAGE,
        EXIT_CONFIG: CONFIG_FILE,
    },
    "dead list": {
        EXIT_OK: "listed",
        EXIT_FAILURE: REDIS_FAILING,
        EXIT_USAGE: USAGE,
        EXIT_CONFIG: CONFIG_FILE,
    },
    "dead requeue": {
        EXIT_OK: "every item requeued",
        EXIT_FAILURE: "an item not found, an argument that is not valid base64, or "
        f"{REDIS_FAILING}",
        EXIT_USAGE: f"{USAGE} (neither or both of --all and ITEM)",
        EXIT_CONFIG: CONFIG_FILE,
    },
    "dead purge": {
        EXIT_OK: "deleted (or nothing to delete)",
        EXIT_FAILURE: f"refused or declined, or {REDIS_FAILING}",
        EXIT_USAGE: USAGE,
        EXIT_CONFIG: CONFIG_FILE,
    },
    "demo": {
        EXIT_OK: "stopped with Ctrl-C, nothing left running",
        EXIT_FAILURE: "no redis-server on PATH, or the master exited on its own",
        EXIT_USAGE: USAGE,
    },
}
