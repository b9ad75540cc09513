"""A server that goes away for a while as the root runs on it, and the guest job that
proves the root survived (tests/vm/test_nics.py, tests/vm/test_iscsi.py).

The job says on the console when it is ready; the host then takes the server away
(tgtd stopped, a cable out) for OUTAGE_S and brings it back. The job watches the outage
itself (shell functions the test gives: outage_begun, during_outage, outage_over, e.g.
the iSCSI sessions' state), so slow emulation changes no outcome: a write begun in the
outage must be synced only after it, and a second one after that.
"""

from __future__ import annotations

from collections.abc import Callable

from harness.netroot import expect_initrd_then_root
from harness.qemu import Boot

# Long enough that a write waiting for the server stands out from one that is only slow
# on a loaded machine (BLOCKED_AT_LEAST_S), and that the NBD job sees the address kept
# a few seconds into it.
OUTAGE_S = 12
# A write blocked by the outage takes at least this long (the outage less the guest's
# half-second polls and the host's reaction).
BLOCKED_AT_LEAST_S = OUTAGE_S - 5
READY = r"bookend-test-job\[\d+\]: BOOKEND-OUTAGE-READY"

# The job's side of an outage: say it is ready, see the outage begin (the watch's shell
# function outage_begun), start a write to the root that must wait for the server (and
# run the watch's during_outage meanwhile), see the outage end (outage_over), write
# again. Each step goes to /job/out/outage with the guest's uptime; /outage-proof in the
# root holds the token twice once both writes are synced. Only shell builtins and
# programs already run (in the page cache) are used while the root's server is away.
OUTAGE_JOB = """
set +x
log() { read -r up _ < /proc/uptime; echo "$up $*" >> /job/out/outage; }
poll() {  # $1: seconds at most; $2: a command to wait for
    tries=$(($1 * 2))
    until $2; do
        tries=$((tries - 1))
        [ "$tries" -gt 0 ] || { log "gave up waiting for $2"; return 1; }
        sleep 0.5
    done
}
@WATCH@
sleep 0; sync
echo BOOKEND-OUTAGE-READY
poll 300 outage_begun
log "outage seen"
( echo "@TOKEN@ during" > /outage-proof && sync /outage-proof && log "write synced" ) &
writer=$!
during_outage
poll 300 outage_over
log "server back"
wait "$writer"
echo "@TOKEN@ after" >> /outage-proof && sync /outage-proof
log "second write synced"
"""

# Every iSCSI session is FAILED from its connection's loss to its new login (tgtd serves
# them all: they go and come back together). The first state other than LOGGED_IN seen
# goes to /job/out/session-state.
ISCSI_WATCH = """
outage_begun() {
    for file in /sys/class/iscsi_session/session*/state; do
        read -r now < "$file"
        [ "$now" = LOGGED_IN ] || { echo "$now" > /job/out/session-state; return 0; }
    done
    return 1
}
outage_over() {
    polls=$((${polls:-0} + 1))
    [ $((polls % 20)) -ne 0 ] || iscsi_states
    for file in /sys/class/iscsi_session/session*/state; do
        read -r now < "$file"
        [ "$now" = LOGGED_IN ] || return 1
    done
}
during_outage() { :; }
# Every 10 s until the sessions are back, on the console: each session's and
# connection's state, iscsid's wait channel ($pid: set by the test's checks that run
# before this job), and the guest's TCP connections to port 3260 (0CBC), with
# builtins only (the root may not answer).
iscsi_states() {
    for file in /sys/class/iscsi_session/session*/state \
            /sys/class/iscsi_connection/connection*/state /proc/$pid/wchan; do
        read -r now < "$file"
        echo "BOOKEND-OUTAGE-STATE $file $now"
    done
    while read -r _ here there state _; do
        case "$there" in *:0CBC) echo "BOOKEND-OUTAGE-TCP $here $there $state" ;; esac
    done < /proc/net/tcp
}
"""


def outage_job(watch: str, token: str) -> str:
    return OUTAGE_JOB.replace("@WATCH@", watch).replace("@TOKEN@", token)


def outage_log(text: str) -> dict[str, float]:
    """/job/out/outage as step -> the guest's uptime when it was logged."""
    steps = {}
    for line in text.splitlines():
        uptime, _, step = line.partition(" ")
        steps[step] = float(uptime)
    return steps


def assert_write_waited_for_the_server(steps: dict[str, float]) -> None:
    """The write begun in the outage was synced only after it, and the next one too."""
    assert set(steps) == {"outage seen", "server back", "write synced", "second write synced"}
    assert steps["write synced"] - steps["outage seen"] >= BLOCKED_AT_LEAST_S, steps
    assert steps["second write synced"] >= steps["server back"], steps


def expect_root_then(outage: Callable[[], None]) -> Callable[[Boot], None]:
    """Follow the boot into the root, wait for the job's word, then cause the outage."""

    def follow(vm: Boot) -> None:
        expect_initrd_then_root(vm)
        vm.expect(READY, timeout=600)
        outage()

    return follow
