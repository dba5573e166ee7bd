#!/usr/bin/env bash
# Benchmark: `vmkeep start` -> ready for the test cloud image (Debian bookworm
# built by scripts/build-test-cloud-image), against raw QEMU booting the same
# image with the same command line until ssh answers.
#
# Both sides boot a fresh qcow2 overlay (a first boot: cloud-init creates the
# user, host keys, runs provisioning) with the same cloud-init seed. vmkeep's
# "ready" waits for the guest agent, which reports only once cloud-init has
# finished; raw QEMU is timed to the first successful `ssh true`, which can
# happen before cloud-init's last stage ends.
#
# Usage: bench/cloud-start.sh [RUNS]   (needs root the first time: debootstrap)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
cargo build -q --locked -p vmkeep
vmkeep=$PWD/target/debug/vmkeep
key=$(sha256sum scripts/build-test-cloud-image | cut -c1-16)
image=$PWD/target/tmp/cloud-image-$key
[ -f "$image/SHA256SUMS" ] || scripts/build-test-cloud-image "$image"
digest=sha256:$(awk '/ disk.qcow2$/ {print $1}' "$image/SHA256SUMS")

work=$(mktemp -d /tmp/vkbench.XXXX)
qemu_pid=
cleanup() {
  [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null || true
  VMKEEP_HOME=$work/h "$vmkeep" stop --force bench >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
export VMKEEP_HOME=$work/h VMKEEP_CACHE_DIR=$work/cache
cat >"$work/t.yaml" <<YAML
cpus: 2
memory: 1GiB
disk: 3GiB
bootTimeout: 900s
images:
- location: $image/disk.qcow2
  digest: $digest
  kernel:
    location: $image/vmlinuz
    cmdline: root=/dev/vda console=ttyS0
  initrd:
    location: $image/initrd.img
YAML

now() { date +%s.%N; }
vm_times=() raw_times=()
for run in $(seq "$runs"); do
  "$vmkeep" create bench --template "$work/t.yaml" >/dev/null 2>&1
  t0=$(now)
  "$vmkeep" start bench >/dev/null
  t1=$(now)
  vm_times+=("$(echo "$t1 - $t0" | bc)")
  inst=$VMKEEP_HOME/bench
  qpid=$(cat "$inst/qemu.pid")
  mapfile -t args < <(tr '\0' '\n' <"/proc/$qpid/cmdline" | tail -n +2)
  old_port=$(cat "$inst/ssh.port")
  "$vmkeep" ssh-config bench >"$work/vm.ssh"
  "$vmkeep" stop bench >/dev/null

  # Raw QEMU: a fresh overlay on the same base, the same seed and flags.
  raw=$work/raw
  rm -rf "$raw" && mkdir -p "$raw"
  base=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["base"])' "$inst/image.json")
  qemu-img create -q -f qcow2 -F qcow2 -b "$base" "$raw/disk.qcow2" 3G
  cp "$inst/cidata.img" "$raw/cidata.img"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  raw_args=()
  for a in "${args[@]}"; do
    a=${a//$inst/$raw}
    a=${a//127.0.0.1:$old_port-/127.0.0.1:$port-}
    raw_args+=("$a")
  done
  sed "s/Port $old_port/Port $port/; s/vmkeep-bench/raw/" "$work/vm.ssh" >"$raw/ssh.config"
  t0=$(now)
  qemu-system-x86_64 "${raw_args[@]}" >"$raw/qemu.log" 2>&1 &
  qemu_pid=$!
  until ssh -F "$raw/ssh.config" -o ConnectTimeout=3 -o BatchMode=yes raw true 2>/dev/null; do sleep 0.5; done
  t1=$(now)
  raw_times+=("$(echo "$t1 - $t0" | bc)")
  kill "$qemu_pid"; wait "$qemu_pid" 2>/dev/null || true; qemu_pid=
  "$vmkeep" delete bench >/dev/null
  echo "run $run: vmkeep ${vm_times[-1]}s, raw QEMU to ssh ${raw_times[-1]}s" >&2
done

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
vm=$(median "${vm_times[@]}")
rq=$(median "${raw_times[@]}")
printf '| measure (median of %d, TCG, 2 vCPU, 1 GiB) | seconds |\n|---|---|\n' "$runs"
printf '| vmkeep start -> ready (cloud-init finished) | %.1f |\n' "$vm"
printf '| raw QEMU, same flags -> ssh answers | %.1f |\n' "$rq"
printf '| ratio vmkeep / raw | %.2f |\n' "$(echo "$vm / $rq" | bc -l)"
