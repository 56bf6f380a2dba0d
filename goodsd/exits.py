"""Exit codes of goodsd's processes and commands: the master, its children and the CLI all
speak these (sysexits.h's EX_CONFIG for a config that cannot work)."""

EXIT_OK = 0  # clean stop, or the command did its job; a child: a planned recycle (max_items)
EXIT_FAILURE = 1  # anything unexpected, or a command that could not do its job
EXIT_USAGE = 2  # bad command-line arguments, as argparse exits on them
EXIT_UNREPLICATED = 3  # goodsd push: items in, on the primary only (redis.wait_replicas)
EXIT_CONFIG = 78  # EX_CONFIG: the config, a handler that cannot load, Redis refusing access
