#!/usr/bin/env bash
# Make sure this machine can run the image smoke build: a Docker engine and debootstrap.
# Installs docker.io and debootstrap from Debian's packages when missing (needs root), and starts
# dockerd with no bridge network and no iptables rules when no engine answers. Prints the PID of
# the dockerd it started (nothing if one was already running), so the caller can stop just that one.
set -euo pipefail
need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if ((${#need[@]})); then
  echo "installing ${need[*]} (Debian packages)" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
fi
if docker info >/dev/null 2>&1; then
  exit 0
fi
mkdir -p out
dockerd --bridge=none --iptables=false >out/dockerd.log 2>&1 &
pid=$!
for _ in $(seq 60); do
  if docker info >/dev/null 2>&1; then
    echo "$pid"
    exit 0
  fi
  sleep 1
done
echo "dockerd did not answer within 60 s; its log: out/dockerd.log" >&2
kill "$pid" 2>/dev/null || true
exit 1
