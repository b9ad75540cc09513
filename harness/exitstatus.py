"""The exit-status proof that the exitrd's /shutdown ran, as systemd's TEST-08-INITRD
proves it: the running root ends with a status N, a hook in the exitrd turns it into
N+1 and writes that to QEMU's isa-debug-exit port, and QEMU exits with ((N+1) << 1) | 1.
Only the exitrd's systemd-shutdown, running its own hooks, can have made that status.

How N reaches the exitrd:
- systemd >= 254: `systemctl exit N` in the root; PID 1 passes --exit-code=N to
  systemd-shutdown, which hands its whole argv on to the exitrd's /shutdown, so the
  hook finds it in /proc/1/cmdline.
- systemd 252 (Debian 12) refuses ExitCode= outside containers, so the root powers off
  and a hook of its own systemd-shutdown (pass_status_job) leaves N in
  /run/initramfs/exit-status, which is the exitrd's /exit-status after the pivot.

systemd 262's systemd-shutdown runs its hooks with an empty verb (argv[1] is "": seen
with Debian testing's systemd-standalone-shutdown 262-1 run as PID 1 of a PID namespace
with container= set): the hook then takes the verb from PID 1's own command line, where
/shutdown still has it. systemd-shutdown runs its hooks side by side, and QEMU ends the
moment the port is written, so the hook first waits (bounded) until the other hooks,
its parent's other children, are done (exited: a zombie waiting to be reaped is done, as
systemd reaps them one by one): bookend-holders' line still reaches the console.

Use: `--exitrd-sysext exit_hook_extension(dir)` in the build (tests/vm/conftest.py's
shared images have it), DEBUG_EXIT among BootOptions.plain_devices (it adds no ACPI
table, so the PVH fast boot stays), the job's shell lines from pass_status_job(N) or
EXIT_INSTEAD, and qemu_status(N) as the status shutdown_through waits for.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from harness.cc import compile_c
from harness.treecopy import put_file

HOOK_DIR = "usr/lib/systemd/system-shutdown"
EXTENSION = "bookend-exit-status"
# QEMU's device: a byte written to port 0x501 ends QEMU with status (byte << 1) | 1.
DEBUG_EXIT = ("-device", "isa-debug-exit,iobase=0x501,iosize=1")
# What the hook prints on the console before QEMU ends.
LINE = "BOOKEND-EXIT-STATUS {status} becomes {changed} in the exitrd"

# The exitrd's hook. Only on poweroff and exit: a reboot or kexec goes on.
EXIT_HOOK = r"""
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Where the hook reads and writes; a unit test compiles it with files instead. */
#ifndef PID1_CMDLINE
#define PID1_CMDLINE "/proc/1/cmdline"
#endif
#ifndef LEFT_BY_THE_ROOT
#define LEFT_BY_THE_ROOT "/exit-status"
#endif
#ifndef KMSG
#define KMSG "/dev/kmsg"
#endif
#ifndef PORT
#define PORT "/dev/port"
#endif
#ifndef SETTLE_SECONDS
#define SETTLE_SECONDS 1
#endif
#ifndef PROC
#define PROC "/proc"
#endif
/* At most this long for the other hooks, which systemd-shutdown runs beside this one
   (bookend-holders waits up to 10 s): QEMU ends the moment the port is written. */
#ifndef SIBLINGS_SECONDS
#define SIBLINGS_SECONDS 30
#endif

static char pid1[4096];
static ssize_t pid1_size = -1;

/* PID 1's argv (the exitrd's /shutdown), NUL-separated. */
static void read_pid1(void) {
    int fd = open(PID1_CMDLINE, O_RDONLY);
    pid1_size = fd < 0 ? -1 : read(fd, pid1, sizeof(pid1) - 1);
    if (fd >= 0)
        close(fd);
    if (pid1_size > 0)
        pid1[pid1_size] = '\0';
}

/* The first argument of PID 1 that is no option: its verb. */
static const char *pid1_verb(void) {
    if (pid1_size <= 0)
        return "";
    for (char *arg = pid1 + strlen(pid1) + 1; arg < pid1 + pid1_size; arg += strlen(arg) + 1)
        if (arg[0] != '-')
            return arg;
    return "";
}

/* --exit-code=N among PID 1's arguments (systemd >= 254 passes it on). */
static int passed_on(void) {
    for (char *arg = pid1; pid1_size > 0 && arg < pid1 + pid1_size; arg += strlen(arg) + 1)
        if (strncmp(arg, "--exit-code=", 12) == 0 && atoi(arg + 12) > 0)
            return atoi(arg + 12);
    return -1;
}

/* What the running root left in /run/initramfs/exit-status. */
static int left_by_the_root(void) {
    int code = -1;
    FILE *file = fopen(LEFT_BY_THE_ROOT, "r");
    if (file == NULL)
        return -1;
    if (fscanf(file, "%d", &code) != 1)
        code = -1;
    fclose(file);
    return code;
}

/* How many other children my parent has that still run (the other shutdown hooks): a
   zombie does not count, as systemd reaps the hooks one by one, maybe this one first. */
static int siblings(void) {
    int count = 0;
    DIR *proc = opendir(PROC);
    struct dirent *entry;
    while (proc != NULL && (entry = readdir(proc)) != NULL) {
        char path[512], stat[512];
        if (entry->d_name[0] < '1' || entry->d_name[0] > '9' || atoi(entry->d_name) == getpid())
            continue;
        snprintf(path, sizeof(path), "%s/%s/stat", PROC, entry->d_name);
        FILE *file = fopen(path, "r");
        if (file == NULL)
            continue;
        size_t size = fread(stat, 1, sizeof(stat) - 1, file);
        fclose(file);
        stat[size] = '\0';
        char *end = strrchr(stat, ')'); /* "pid (comm) state ppid ..." */
        char state = '?';
        int ppid = -1;
        if (end != NULL && sscanf(end + 1, " %c %d", &state, &ppid) == 2 && ppid == getppid()
            && state != 'Z' && state != 'X')
            count++;
    }
    if (proc != NULL)
        closedir(proc);
    return count;
}

int main(int argc, char **argv) {
    read_pid1();
    /* systemd 262 runs the hooks with an empty verb. */
    const char *verb = argc > 1 && argv[1][0] != '\0' ? argv[1] : pid1_verb();
    if (strcmp(verb, "poweroff") != 0 && strcmp(verb, "exit") != 0)
        return 0;
    int code = passed_on();
    if (code < 0)
        code = left_by_the_root();
    if (code < 0 || code > 254)
        return 0;
    unsigned char value = (unsigned char)(code + 1);
    for (int tenths = 0; tenths < SIBLINGS_SECONDS * 10 && siblings() > 0; tenths++)
        usleep(100000);
    FILE *kmsg = fopen(KMSG, "w");
    if (kmsg != NULL) {
        fprintf(kmsg, "BOOKEND-EXIT-STATUS %d becomes %d in the exitrd\n", code, value);
        fclose(kmsg);
        sleep(SETTLE_SECONDS); /* for the console to show it before QEMU ends */
    }
    int port = open(PORT, O_WRONLY);
    if (port < 0 || pwrite(port, &value, 1, 0x501) != 1)
        return 1;
    return 0;
}
"""

# The running root's hook (systemd 252), at the end of its own systemd-shutdown, just
# before the pivot: /run/initramfs is the exitrd's tree by then.
_PASS_STATUS = """\
mkdir -p /{dir}
cat > /{dir}/bookend-pass-status <<'EOF'
#!/bin/sh
[ -d /run/initramfs ] && echo {status} > /run/initramfs/exit-status
exit 0
EOF
chmod 755 /{dir}/bookend-pass-status
"""

# The root's report ends with `systemctl exit N` instead of its power-off (systemd >= 254).
EXIT_INSTEAD = """
sed -i 's/^systemctl --no-block poweroff$/systemctl --no-block exit {status}/' \\
    /usr/local/sbin/bookend-test-report
grep -q 'systemctl --no-block exit {status}' /usr/local/sbin/bookend-test-report
"""


def compile_hook(output: Path, *defines: str) -> Path:
    """The hook compiled to output; defines (NAME=VALUE) replace its paths."""
    flags = [f"-D{define}" for define in defines]
    return compile_c(EXIT_HOOK, output, "-O2", "-Wall", "-Werror", *flags)


def exit_hook_extension(directory: Path) -> Path:
    """A directory system extension for the exitrd holding the exit-status hook."""
    tree = directory / EXTENSION
    release = f"usr/lib/extension-release.d/extension-release.{EXTENSION}"
    put_file(tree, release, "ID=_any\nSYSEXT_SCOPE=initrd\n")
    compile_hook(tree / HOOK_DIR / EXTENSION)
    return tree


def new_status() -> int:
    """A random status for one boot: 1..100, so N+1 fits QEMU's byte."""
    return secrets.randbelow(100) + 1


def qemu_status(status: int) -> int:
    """QEMU's exit status once the exitrd's hook wrote status+1 to isa-debug-exit."""
    if not 0 <= status <= 254:
        raise ValueError(f"exit status {status}: the hook passes 0..254 on")
    return ((status + 1) << 1) | 1


def console_line(status: int) -> str:
    """The hook's console line for status."""
    return LINE.format(status=status, changed=status + 1)


def pass_status_job(status: int) -> str:
    """Shell lines for a guest job: the root's own shutdown hook that leaves status
    for the exitrd (systemd 252, where `systemctl exit N` cannot carry it)."""
    return _PASS_STATUS.format(dir=HOOK_DIR, status=int(status))
