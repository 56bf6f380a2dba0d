"""The code of a Redis error reply ("READONLY", "NOREPLICAS", "OOM"), however redis-py or Lua
wrapped it: one reading for goodsd.redisconn.classify (what the error means) and for the
connections that follow a Sentinel-managed primary (when to ask the sentinels again).

redis-py raises many replies as a plain ResponseError and keeps the code only in the message;
a pipeline puts a note in front of it; a script wraps it: Redis 7 keeps the code first,
Redis 6.2 sends "ERR Error running script (call to f_...): @user_script:3: @user_script: 3:
-READONLY You can't write against a read only replica." (the code after a dash); an EXEC
refused itself comes as "EXECABORT Transaction discarded because of: NOPERM ...".
"""

from __future__ import annotations

import re

import redis

# How Redis words an ACL refusal of a command called from a Lua script: an ERR reply (Redis 7)
# or part of the script's error (6.2), never a NOPERM reply.
SCRIPT_ACL_REFUSAL = "can't run this command or subcommand"
# Redis 6.2 wraps an error raised inside a script: "... @user_script: 3: -OOM command not ..."
SCRIPT_ERROR_CODE = re.compile(r"@user_script:\s*\d+:\s*-([A-Z]+) ")
# Redis 7 wraps a refusal of EXEC itself: "EXECABORT Transaction discarded because of: NOPERM ..."
EXEC_ABORT_CODE = re.compile(r"Transaction discarded because of: ([A-Z]+) ")
# redis-py puts this in front of the reply of a failed command in a pipeline.
PIPELINE_NOTE = re.compile(r"^Command # \d+ \(.*?\) of pipeline caused error: ", re.DOTALL)


def reply_code(exc: redis.ResponseError) -> str:
    """The code of an error reply ("OOM", "NOREPLICAS"), found where redis-py left it: in its
    ``status_code``, at the start of the message, after a pipeline's note, inside a script's
    error or an aborted EXEC's; "NOPERM" for a script's call its ACL user may not make; ""
    when the reply has none (a plain ERR)."""
    message = str(exc)
    if SCRIPT_ACL_REFUSAL in message:
        return "NOPERM"
    if match := SCRIPT_ERROR_CODE.search(message) or EXEC_ABORT_CODE.search(message):
        return match.group(1)
    status = getattr(exc, "status_code", None)
    if status and status != "ERR":
        return str(status)
    first = PIPELINE_NOTE.sub("", message).split(" ", 1)[0]
    return first if first.isalpha() and first.isupper() else ""
