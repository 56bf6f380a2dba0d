#!/bin/bash
# sandbox.sh: boot the host's own systemd as PID 1 of private namespaces, on a throw-away
# overlay of /, so that goodsd's end-to-end test can drive real `systemctl` and `journalctl`
# on a machine whose PID 1 is not systemd (a CI runner, a container).
#
#   sandbox.sh up DIR             boot; return once the system is running (or degraded)
#   sandbox.sh exec DIR CMD...    run CMD inside with a clean environment; stdin, stdout,
#                                 stderr and the exit status pass through (125: no sandbox)
#   sandbox.sh cp DIR FILE PATH   copy a host file to PATH inside (parents created, mode
#                                 kept; a PATH ending in / is a directory)
#   sandbox.sh status DIR         print the recorded state; exit 0 only while it runs
#   sandbox.sh down DIR           power off, kill what is left, remove the cgroup and DIR;
#                                 idempotent and safe to call from a trap
#
# up:   SANDBOX_BIND="SRC[:DST[:ro|rw]] ..."   host paths to bind in (rw, DST=SRC by default)
#       SANDBOX_BOOT_TIMEOUT=30
# down: SANDBOX_STOP_TIMEOUT=10   SANDBOX_SAVE_JOURNAL=FILE (`journalctl -b`, saved first)
# Needs root, util-linux, overlayfs and cgroup2: see README.md beside this file.
set -uo pipefail

ME=sandbox.sh
SELF=$(readlink -f "${BASH_SOURCE[0]}")
CG_TAG=goodsd-sandbox.                  # every cgroup we create is named $CG_TAG<pid>
IN_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Host-wide powers nothing inside needs: loading modules, setting the clock, raw I/O,
# the kernel log, wake-ups, MAC and audit policy. Dropped from the bounding set.
DROP_CAPS=-sys_module,-sys_time,-sys_rawio,-syslog,-wake_alarm,-block_suspend,-mac_admin,-mac_override,-audit_control
DIR='' CG='' CG_REL='' UPID='' UPID_START='' CPID='' CPID_START='' BOOT=''
INSIDE=()

say()     { printf '%s: %s\n' "$ME" "$*" >&2; }
die()     { say "$*"; exit 1; }
usage()   { sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "$SELF" >&2; exit 2; }
clock()   { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(clock)" 'BEGIN { printf "%.2f", b - a }'; }
need_root() { [ "$(id -u)" = 0 ] || { say "$1: must run as root"; exit "${2:-1}"; }; }
set_dir() { [ -n "${1:-}" ] || usage; DIR=$(realpath -m -- "$1"); }

# ---- state: DIR/state holds key=value lines; the last line of a key wins
get()     { [ -f "$DIR/state" ] && sed -n "s/^$1=//p" "$DIR/state" | tail -n 1; }
get_all() { [ -f "$DIR/state" ] && sed -n "s/^$1=//p" "$DIR/state"; }
put()     { printf '%s=%s\n' "$1" "$2" >> "$DIR/state"; }

load() {
    CG=$(get cgroup) CG_REL=$(get cgroup_rel)
    UPID=$(get upid) UPID_START=$(get upid_start) CPID=$(get cpid) CPID_START=$(get cpid_start)
    # a damaged state file must never make us kill or remove a cgroup that is not ours
    case ${CG##*/} in "$CG_TAG"*) ;; *) CG='' CG_REL='' ;; esac
    set_inside
}
set_inside() {   # the command prefix that enters PID 1's namespaces and root
    INSIDE=(setpriv --bounding-set "$DROP_CAPS" nsenter -t "${CPID:-0}" -m -u -i -n -p -C -r -w
            env -i "PATH=$IN_PATH" HOME=/root LANG=C.UTF-8 TERM=dumb SYSTEMD_PAGER=cat SYSTEMD_COLORS=0)
}

# ---- identity: a PID is ours only if it is alive (not a zombie), started at the recorded
# time and sits in our cgroup, so a recycled PID is never signalled
start_time() {
    local rest f
    rest=$(sed 's/^.*) //' "/proc/$1/stat" 2> /dev/null) || return 1
    read -r -a f <<< "$rest"             # f[0] is field 3 (state), f[19] field 22 (start time)
    [ "${f[0]:-Z}" != Z ] && echo "${f[19]}"
}
in_our_cgroup() {
    local c
    c=$(sed -n 's/^0:://p' "/proc/$1/cgroup" 2> /dev/null) || return 1
    [ -n "$CG_REL" ] && case $c in "$CG_REL" | "$CG_REL"/*) true ;; *) false ;; esac
}
ours() {   # PID [START]
    local s
    [ -n "$1" ] && s=$(start_time "$1") && [ -n "$s" ] || return 1
    { [ -z "${2:-}" ] || [ "$s" = "$2" ]; } && in_our_cgroup "$1"
}
running()    { [ -f "$DIR/state" ] && load && ours "$CPID" "$CPID_START"; }
failed_units() { timeout 5 "${INSIDE[@]}" systemctl --failed --plain --no-legend 2> /dev/null | awk '{print $1}' | xargs; }
cg_pids()    { find "$CG" -name cgroup.procs -exec cat {} + 2> /dev/null; }
cg2_mount() {
    local m
    for m in /sys/fs/cgroup /sys/fs/cgroup/unified; do
        [ "$(stat -fc %T "$m" 2> /dev/null)" = cgroup2fs ] && { echo "$m"; return 0; }
    done
    return 1
}

# ---- teardown: usable at any stage of a half-done up; returns 0 only when nothing is left
teardown() {   # [now]: skip the clean power-off
    local i p left=0
    load
    if [ -z "$CPID" ] && ours "$UPID" "$UPID_START"; then   # up died before recording PID 1
        CPID=$(cut -d' ' -f1 "/proc/$UPID/task/$UPID/children" 2> /dev/null)
        CPID_START=$(start_time "$CPID" 2> /dev/null)
        set_inside
    fi
    if ours "$CPID" "$CPID_START"; then
        if [ -n "${SANDBOX_SAVE_JOURNAL:-}" ]; then
            timeout 15 "${INSIDE[@]}" journalctl -b --no-pager -o short-monotonic > "$SANDBOX_SAVE_JOURNAL" 2>&1 \
                || say "down: could not save the journal to $SANDBOX_SAVE_JOURNAL"
        fi
        if [ "${1:-}" != now ] && [ "$(cat "/proc/$CPID/comm" 2> /dev/null)" = systemd ]; then
            # SIGRTMIN+4 asks systemd to start poweroff.target, without D-Bus. Until its
            # handler is installed PID 1 ignores it, so it is sent again every 0.5 s.
            for ((i = 0; i < ${SANDBOX_STOP_TIMEOUT:-10} * 20; i++)); do
                ours "$CPID" "$CPID_START" || break
                ((i % 10)) || kill -s RTMIN+4 "$CPID" 2> /dev/null
                sleep 0.05
            done
            ours "$CPID" "$CPID_START" \
                && say "down: PID 1 (host pid $CPID) still up after ${SANDBOX_STOP_TIMEOUT:-10} s; SIGKILL"
        fi
        ours "$CPID" "$CPID_START" && kill -KILL "$CPID" 2> /dev/null   # takes the whole pid namespace with it
    fi
    for ((i = 0; i < 100; i++)); do   # unshare exits with its child
        ours "$UPID" "$UPID_START" || break
        sleep 0.05
    done
    if ours "$UPID" "$UPID_START"; then
        say "down: unshare (host pid $UPID) still up; SIGKILL"
        kill -KILL "$UPID" 2> /dev/null
    fi
    if [ -n "$CG" ] && [ -d "$CG" ]; then
        [ -n "$(cg_pids)" ] && say "down: processes left in $CG; killing them"
        # kill, then rmdir the tree bottom-up, until it is gone
        for ((i = 0; i < 100; i++)); do
            if [ -n "$(cg_pids)" ]; then
                if [ -e "$CG/cgroup.kill" ]; then
                    echo 1 > "$CG/cgroup.kill"
                else
                    for p in $(cg_pids); do kill -KILL "$p" 2> /dev/null; done   # all inside our cgroup
                fi
                sleep 0.05
            fi
            find "$CG" -depth -type d -exec rmdir {} + 2> /dev/null
            [ -d "$CG" ] || break
            sleep 0.05
        done
        [ -d "$CG" ] && { say "down: cannot remove $CG (holds: $(cg_pids | xargs))"; left=1; }
    fi
    for p in "$CPID" "$UPID"; do ours "$p" && { say "down: host pid $p still running"; left=1; }; done
    # all mounts were made in the sandbox's own mount namespace: the host must see none
    if grep -qF " $DIR/" /proc/self/mountinfo; then
        say "down: the host sees mounts under $DIR; leaving it in place"
        return 1
    fi
    rm -f "$DIR/state" "$DIR/boot.log"
    for p in root rw; do
        [ -d "$DIR/$p" ] && ! rmdir "$DIR/$p" 2> /dev/null && { say "down: $DIR/$p is not empty"; left=1; }
    done
    if [ -d "$DIR" ] && ! rmdir "$DIR" 2> /dev/null; then say "down: $DIR is not empty; left in place"; left=1; fi
    return "$left"
}

# ---- up
up_failed() {
    say "up failed: $*"
    if [ -s "$DIR/boot.log" ]; then
        say "last lines of $DIR/boot.log:"
        tail -n 15 "$DIR/boot.log" | sed 's/^/    /' >&2
    fi
    if [ "$*" != interrupted ] && running && [ "$(cat "/proc/$CPID/comm" 2> /dev/null)" = systemd ]; then
        say "failed units: $(failed_units)"
        say "last lines of the journal:"
        timeout 5 "${INSIDE[@]}" journalctl -b --no-pager -o short-monotonic -n 15 2>&1 | sed 's/^/    /' >&2
    fi
    teardown now > /dev/null || say "cleaning up after the failed up left something behind (see above)"
    exit 1
}

cmd_up() {
    [ $# = 1 ] || usage
    set_dir "$1"
    need_root up
    local t0 cg2 self_cg b src dst mode extra i
    local -a binds=()
    t0=$(clock)
    for i in unshare nsenter setpriv setsid flock timeout realpath awk; do
        command -v "$i" > /dev/null || die "up: $i is missing (util-linux, coreutils)"
    done
    [ -x /lib/systemd/systemd ] || die "up: /lib/systemd/systemd is missing (apt-get install systemd)"
    grep -qw overlay /proc/filesystems || modprobe overlay 2> /dev/null || die "up: the kernel has no overlayfs"
    [ "$(stat -c %d /)" = "$(stat -c %d /usr)" ] || die "up: /usr is a separate mount; an overlay of / would miss it"
    cg2=$(cg2_mount) || die "up: no cgroup2 at /sys/fs/cgroup or /sys/fs/cgroup/unified"
    for b in ${SANDBOX_BIND:-}; do
        IFS=: read -r src dst mode extra <<< "$b"
        [ -n "$src" ] && [ -z "$extra" ] || die "up: bind '$b': want SRC[:DST[:ro|rw]]"
        src=$(realpath -e -- "$src" 2> /dev/null) || die "up: bind source '${b%%:*}' does not exist"
        dst=$(realpath -m -s -- "${dst:-${b%%:*}}")
        case ${dst} in
            / | /proc | /proc/* | /sys | /sys/* | /dev | /dev/* | /run | /run/* | /var/run | /var/run/* | /tmp | /tmp/*)
                die "up: bind target $dst: /, /proc, /sys, /dev, /run and /tmp are the sandbox's own;" \
                    "use /opt, /srv or /var/lib" ;;
        esac
        case ${mode:-rw} in rw | ro) ;; *) die "up: bind '$b': the mode must be ro or rw" ;; esac
        binds+=("$src:$dst:${mode:-rw}")
    done
    if [ -e "$DIR" ]; then
        [ -d "$DIR" ] && [ -z "$(ls -A "$DIR")" ] || die "up: $DIR is not empty (an old sandbox? $ME down $DIR)"
    fi
    self_cg=$(sed -n 's/^0:://p' /proc/self/cgroup)
    CG_REL=${self_cg%/}/$CG_TAG$$
    [ -e "$cg2$CG_REL" ] && CG_REL=${self_cg%/}/$CG_TAG$$.$RANDOM
    mkdir -p "$DIR" || die "up: cannot create $DIR"
    exec 9< "$DIR"
    flock -n 9 || die "up: $DIR is in use"
    # The boot runs in a child bash while this shell only waits. So INT, TERM or HUP
    # always lands here at a safe point, and always ends in a full cleanup. (bash 5.2 can
    # fail to parse a trap that fires between two command substitutions, and go on.)
    trap 'trap "" INT TERM HUP; stop_boot; up_failed interrupted' INT TERM HUP
    put cgroup "$cg2$CG_REL"
    put cgroup_rel "$CG_REL"
    for b in "${binds[@]}"; do put bind "$b"; done
    bash "$SELF" _boot "$DIR" "$t0" &
    BOOT=$!
    wait "$BOOT"
}

stop_boot() { [ -n "$BOOT" ] && kill "$BOOT" 2> /dev/null && wait "$BOOT"; }

# The child of up that creates the cgroup, starts the sandbox and waits for its boot.
cmd_boot() {
    local t0=$2 i state
    set_dir "$1"
    load
    mkdir "$DIR/root" "$DIR/rw" || up_failed "cannot create $DIR/root and $DIR/rw"
    mkdir "$CG" || up_failed "cannot create the cgroup $CG"
    # The launcher closes every fd above 2 (the lock on DIR, a caller's pipes), moves itself
    # into the new cgroup, then becomes unshare by exec. setsid gives it a new session, so a
    # terminal's ^C (which systemd would take as ctrl-alt-del) never reaches the sandbox.
    # Nothing forks on the way, so $! is the host PID of unshare; its child is PID 1 inside.
    # shellcheck disable=SC2016   # the script expands its own $$, $1...
    setsid bash -c '
        for f in /proc/$$/fd/*; do f=${f##*/}; [ "$f" -gt 2 ] 2> /dev/null && eval "exec $f>&-"; done
        echo $$ > "$1/cgroup.procs" || exit 1
        exec setpriv --bounding-set "$2" unshare --pid --fork --kill-child=SIGKILL \
            --mount --uts --ipc --net --cgroup "$3" _init "$4"
    ' sandbox-launcher "$CG" "$DROP_CAPS" "$SELF" "$DIR" < /dev/null > "$DIR/boot.log" 2>&1 &
    UPID=$!
    put upid "$UPID"
    put upid_start "$(start_time "$UPID")"
    load
    for ((i = 0; i < 400; i++)); do
        CPID=$(cut -d' ' -f1 "/proc/$UPID/task/$UPID/children" 2> /dev/null)
        [ -n "$CPID" ] && break
        start_time "$UPID" > /dev/null || up_failed "unshare exited before starting PID 1"
        sleep 0.01
    done
    [ -n "$CPID" ] || up_failed "unshare started no PID 1 within 4 s"
    put cpid "$CPID"
    put cpid_start "$(start_time "$CPID")"
    load
    for ((i = 0; i < 400; i++)); do   # _init mounts, pivots, then execs systemd
        [ "$(cat "/proc/$CPID/comm" 2> /dev/null)" = systemd ] && break
        ours "$CPID" "$CPID_START" || up_failed "the init stage failed before systemd started"
        sleep 0.025
    done
    [ "$(cat "/proc/$CPID/comm" 2> /dev/null)" = systemd ] || up_failed "systemd did not start within 10 s"
    for ((i = 0; i < 400; i++)); do
        "${INSIDE[@]}" test -S /run/systemd/private 2> /dev/null && break
        ours "$CPID" "$CPID_START" || up_failed "systemd exited during boot"
        sleep 0.025
    done
    state=$(timeout "${SANDBOX_BOOT_TIMEOUT:-30}" "${INSIDE[@]}" systemctl is-system-running --wait 2> /dev/null)
    case $state in
        running | degraded) ;;
        *) up_failed "not booted within ${SANDBOX_BOOT_TIMEOUT:-30} s (state '${state:-none}')" ;;
    esac
    put state "$state"
    put boot_s "$(elapsed "$t0")"
    printf 'sandbox up: %s; systemd is PID 1 (host pid %s), %s, in %s s\n' "$DIR" "$CPID" "$state" "$(get boot_s)"
    [ "$state" = degraded ] && say "failed units: $(failed_units)"
    return 0
}

# PID 1 of the new namespaces until it execs systemd. Every mount here lives in the private
# mount namespace only. Files are written after pivot_root, so a symlink in the host's tree
# can never redirect a write to the host.
cmd_init() {
    set -euo pipefail
    DIR=$1
    local R=$1/root src dst mode n u
    local -a binds
    mapfile -t binds < <(get_all bind)
    mount --make-rprivate /
    mount -t tmpfs -o mode=755 sandbox-rw "$DIR/rw"             # every write lands here
    mkdir "$DIR/rw/upper" "$DIR/rw/work"
    mount -t overlay sandbox-root -o "lowerdir=/,upperdir=$DIR/rw/upper,workdir=$DIR/rw/work" "$R"
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/tmp"
    # journald would otherwise append to the host's journal files, copying each one up whole
    [ -d "$R/var/log/journal" ] && [ ! -L "$R/var/log/journal" ] \
        && mount -t tmpfs -o mode=2755,nosuid,nodev tmpfs "$R/var/log/journal"
    mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
    for n in sys sysrq-trigger; do                              # host-wide knobs: read-only
        [ -e "$R/proc/$n" ] || continue
        mount --bind "$R/proc/$n" "$R/proc/$n"
        mount -o remount,bind,ro "$R/proc/$n"
    done
    mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
    mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"   # shows our subtree only
    mount -t tmpfs -o mode=755,nosuid,size=4m tmpfs "$R/dev"
    for n in null zero full random urandom tty; do : > "$R/dev/$n"; mount --bind "/dev/$n" "$R/dev/$n"; done
    : > "$R/dev/console"
    mount --bind /dev/null "$R/dev/console"
    mkdir "$R/dev/pts" "$R/dev/shm"
    mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts "$R/dev/pts"
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/dev/shm"
    ln -s pts/ptmx "$R/dev/ptmx"
    ln -s /proc/self/fd "$R/dev/fd"
    for n in 0:stdin 1:stdout 2:stderr; do ln -s "/proc/self/fd/${n%%:*}" "$R/dev/${n#*:}"; done
    mkdir "$R/.host"
    cd "$R"
    pivot_root . .host
    cd /
    for n in "${binds[@]}"; do                                  # the host is under /.host until detached
        IFS=: read -r src dst mode <<< "$n"
        if [ -d "/.host$src" ]; then
            mkdir -p "$dst"
        else
            mkdir -p "$(dirname "$dst")"
            [ -e "$dst" ] || : > "$dst"
        fi
        mount --bind "/.host$src" "$dst"
        [ "$mode" = rw ] || mount -o remount,bind,ro "$dst"
    done
    umount -l /.host
    rmdir /.host
    rm -f /etc/machine-id /etc/hostname
    tr -d - < /proc/sys/kernel/random/uuid > /etc/machine-id
    echo sandbox > /etc/hostname
    mkdir -p /etc/systemd/system
    cat > /etc/systemd/system/sandbox.target << 'EOF'
[Unit]
Description=Sandbox boot target: basic.target, nothing more
Requires=basic.target
After=basic.target
AllowIsolate=yes
EOF
    # no timer (apt, man-db, fstrim, ...) may fire during a test, and no pstore reaping
    for u in /etc/systemd/system/*.wants/*.timer /lib/systemd/system/timers.target.wants/*.timer \
             systemd-pstore.service; do
        case $u in /*) [ -e "$u" ] || [ -L "$u" ] || continue ;; esac
        ln -sfn /dev/null "/etc/systemd/system/${u##*/}"
    done
    # A booted host has / shared, but systemd skips that step when $container is set. Without
    # it, the mounts systemd makes for a service (/run/credentials/UNIT for LoadCredential=)
    # never reach PID 1's view, and the service finds its credentials directory empty. The
    # peer groups are new ones of this namespace: nothing propagates to or from the host.
    mount --make-rshared /
    exec env -i container=goodsd-sandbox TERM=dumb /lib/systemd/systemd --system --unit=sandbox.target
}

# ---- exec / cp / status / down
cmd_exec() {
    [ $# -ge 2 ] || usage
    set_dir "$1"; shift
    need_root exec 125
    running || { say "exec: no sandbox runs in $DIR"; exit 125; }
    exec "${INSIDE[@]}" "$@"
}

cmd_cp() {
    [ $# = 3 ] || usage
    set_dir "$1"
    local src=$2 dst=$3
    [ -f "$src" ] || die "cp: $src is not a regular file (a tree: tar -C SRC -cf - . | $ME exec DIR tar -C DST -xf -)"
    case $dst in /*) ;; *) die "cp: $dst: the path inside must be absolute" ;; esac
    case $dst in */) dst=$dst${src##*/} ;; esac
    need_root cp
    running || die "cp: no sandbox runs in $DIR"
    # shellcheck disable=SC2016,SC2094   # $1 and $2 are the inner sh's; stat only reads metadata
    "${INSIDE[@]}" sh -c 'mkdir -p -- "$(dirname -- "$1")" && cat > "$1" && chmod "$2" "$1"' \
        sh "$dst" "$(stat -c %a "$src")" < "$src"
}

cmd_status() {
    [ $# = 1 ] || usage
    set_dir "$1"
    [ -f "$DIR/state" ] || { echo "no sandbox in $DIR"; return 3; }
    cat "$DIR/state"
    if running; then echo "running=yes"; else echo "running=no"; return 3; fi
}

cmd_down() {
    [ $# = 1 ] || usage
    set_dir "$1"
    local t0 was
    [ -d "$DIR" ] || { echo "sandbox down: nothing at $DIR"; return 0; }
    need_root down
    t0=$(clock)
    exec 9< "$DIR"
    flock -w 120 9 || die "down: $DIR stayed locked for 120 s"   # lets an up in progress finish
    if [ ! -f "$DIR/state" ] \
        && find "$DIR" -mindepth 1 -maxdepth 1 ! -name boot.log ! -name root ! -name rw | grep -q .; then
        die "down: $DIR holds other files and no sandbox state; left alone"
    fi
    was="not running"
    if running; then was="running (host pid $CPID)"; elif ours "$UPID" "$UPID_START"; then was="half booted"; fi
    teardown || { say "down: something was left behind (see above)"; return 1; }
    echo "sandbox down: $DIR was $was; nothing left ($(elapsed "$t0") s)"
}

CMD=${1:-}
[ $# -gt 0 ] && shift
case $CMD in
    up) cmd_up "$@" ;;
    exec) cmd_exec "$@" ;;
    cp) cmd_cp "$@" ;;
    status) cmd_status "$@" ;;
    down) cmd_down "$@" ;;
    _boot) cmd_boot "$@" ;;
    _init) cmd_init "$@" ;;
    -h | --help | help | "") usage ;;
    *) say "unknown command '$CMD'"; usage ;;
esac
