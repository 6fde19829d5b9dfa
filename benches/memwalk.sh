#!/bin/sh
# Memory of a daemon after a walk of a million entries (issue 4, "bounded memory").
#
# Builds once, and reuses, a lower of 1,000 directories x 1,000 empty files under
# $UNIONMOUNT_MEMWALK_DIR (default /var/tmp/unionmount-memwalk); mounts it with an empty
# upper through the release unionmount (default 60 s entry/attr timeout, so the kernel keeps
# every inode and the daemon one node per entry) and through fuse-overlayfs; runs
# `find MNT -ls >/dev/null` (a lookup and a getattr of every entry) and prints the daemon's
# VmRSS and VmHWM from /proc/PID/status. Run as root after `cargo build --release`:
#   sh benches/memwalk.sh [unionmount|fuse-overlayfs ...]   (default: both)
# Environment: UNIONMOUNT_MEMWALK_DIR as above; UNIONMOUNT_BIN, the binary
# (default target/release/unionmount).
set -eu
base=${UNIONMOUNT_MEMWALK_DIR:-/var/tmp/unionmount-memwalk}
bin=${UNIONMOUNT_BIN:-$(dirname "$0")/../target/release/unionmount}
lower=$base/lower
if [ ! -e "$lower/.complete" ]; then
    rm -rf "$lower"
    mkdir -p "$lower"
    i=0
    while [ $i -lt 1000 ]; do
        d=$(printf '%s/d%04d' "$lower" $i)
        mkdir "$d"
        (cd "$d" && seq -f 'f%04g' 0 999 | xargs touch)
        i=$((i + 1))
    done
    touch "$lower/.complete"
fi

status() { grep -E "^$2:" "/proc/$1/status" | tr -s ' \t' ' '; }

measure() {
    scratch=$(mktemp -d "$base/run.XXXXXX")
    mkdir "$scratch/upper" "$scratch/work" "$scratch/mnt"
    case $1 in
    unionmount)
        "$bin" -f --workdir "$scratch/work" "$lower" "$scratch/upper" "$scratch/mnt" &
        ;;
    fuse-overlayfs)
        fuse-overlayfs -f -o "lowerdir=$lower,upperdir=$scratch/upper,workdir=$scratch/work" \
            "$scratch/mnt" 2>/dev/null &
        ;;
    *) echo "unknown implementation $1" >&2; exit 2 ;;
    esac
    pid=$!
    n=0
    until mountpoint -q "$scratch/mnt"; do
        n=$((n + 1)); [ $n -lt 300 ] || { echo "$1 did not mount" >&2; kill $pid; exit 1; }
        sleep 0.1
    done
    echo "$1: mounted; $(status $pid VmRSS)"
    start=$(date +%s.%N)
    find "$scratch/mnt" -ls >/dev/null
    end=$(date +%s.%N)
    echo "$1: walk $(echo "$end - $start" | bc) s; $(status $pid VmRSS); $(status $pid VmHWM)"
    umount "$scratch/mnt"
    wait $pid || true
    rm -rf "$scratch"
}

[ $# -gt 0 ] || set -- unionmount fuse-overlayfs
for imp in "$@"; do measure "$imp"; done
