#!/bin/bash
# One test node: fake GPU files, munge, slurmctld (on n1), slurmd; then wait.
set -e
for i in 0 1 2 3 4 5 6 7; do mknod -m 666 "/dev/fakegpu$i" c 1 3 2>/dev/null || touch "/dev/fakegpu$i"; done
mkdir -p /var/spool/slurmctld /var/spool/slurmd /run/munge /shared/pyxis-record
chown munge:munge /run/munge && chmod 755 /run/munge
runuser -u munge -- munged
if [ "$(hostname)" = n1 ]; then slurmctld; fi
slurmd
exec sleep infinity
