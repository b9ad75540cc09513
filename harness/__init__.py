"""The test harness, shared by the tests (tests/) and the benchmark (bench/).

- `qemu`: one `boot(BootOptions(...))` for every guest, `qmp` to change its hardware;
- `token`: the proof a boot worked (the real root reports the test's token, QEMU exits 0);
- `rootdisk`, `stackdisks`, `ukisysroot`: the cached disks and trees guests boot or
  images are built from, made once per recipe under `/var/cache/bookend-tests`;
- `mirror`: which Debian mirror they are made from (this machine's apt configuration);
- `guestjob`: jobs run inside a booted guest, results read back on the host;
- `network`: guests linked to each other, or to 127.0.0.1 only, never further;
- `images`: images built through the `bookend` command line, as a user builds them;
- `foreign`: the other generators (dracut unpacked from its packages);
- `timings` and `suite`: where a test run's time went.

Nothing here imports tests/ or bench/.
"""
