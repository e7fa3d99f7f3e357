#!/usr/bin/env bash
# Asheville against restic, borg and rustic: same data, same machine, one run.
#
#   bash benches/peers/run.sh
#
# Installs the peers if missing (restic and borgbackup from Debian's packages,
# rustic with `cargo install rustic-rs --locked`, cached in ~/.cargo/bin),
# builds `asheville` (release), makes the dataset once (fixed seed, ~1 GiB:
# benches/peers/dataset.py), then for every tool, ROUNDS times, in turn:
# init, initial backup, unchanged backup, backup after changing 1% of the
# files, full restore. Each step runs under /usr/bin/time -v (wall, CPU, peak
# RSS); repository size and object count after the backups; each restore is
# compared byte for byte (and by mtime) with the source. Prints one markdown
# table of medians, each figure also as a ratio to restic's.
#
# Restored trees and repositories are not deleted until the end of the run:
# on ext4 without a journal (this VM's root filesystem) the inode allocator
# skips every inode freed in the last 1-6 minutes (fs/ext4/ialloc.c,
# recently_deleted), checking each one in the inode table, so creating
# 20,000 files right after deleting 20,000 costs seconds of kernel CPU
# whoever does it, and the tool restoring next would pay for the cleanup of
# the one before (a repository is a few hundred to a thousand inodes: its
# objects and its 256 prefix directories per backend). Start a run at least
# 6 minutes after deleting many files on that filesystem: the script waits
# that long after its own cleanups (a previous run's included) and after
# the repo bench's (`cargo bench --bench repo` touches
# ${TMPDIR:-/tmp}/asheville-mass-delete.stamp when it removes its runs), not
# after anyone else's.
#
# Environment: PEERS_DIR (work dir, default /tmp/asheville-peers; it needs
# ~2 GiB plus the dataset size for every restore and the repository size
# for every repository kept, ~40 GiB for the defaults), PEERS_MB (dataset size, default 1024), PEERS_ROUNDS (default 3),
# PEERS_TOOLS (default "restic borg rustic asheville asheville-rs42
# asheville-none").
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${PEERS_DIR:-/tmp/asheville-peers}
MB=${PEERS_MB:-1024}
ROUNDS=${PEERS_ROUNDS:-3}
TOOLS=${PEERS_TOOLS:-"restic borg rustic asheville asheville-rs42 asheville-none"}
PW=peers-bench
export RESTIC_PASSWORD=$PW BORG_PASSPHRASE=$PW RUSTIC_PASSWORD=$PW ASHEVILLE_PASSPHRASE=$PW
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes

need_apt() { command -v "$1" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2"; }; }
for t in $TOOLS; do
  case $t in
    restic) need_apt restic restic ;;
    borg) need_apt borg borgbackup ;;
    rustic) command -v rustic >/dev/null || cargo install rustic-rs --locked ;;
  esac
done
[ -x /usr/bin/time ] || need_apt /usr/bin/time time
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" --bin asheville
ASH="$ROOT/target/release/asheville"

mkdir -p "$WORK"
if [ -d "$WORK/restored" ]; then
  echo "removing the restores and repositories a stopped run left" >&2
  rm -rf "$WORK/restored"
  touch "$WORK/.cleaned"
fi
# A run stopped midway must not leave the dataset changed.
[ -d "$WORK/saved" ] && python3 "$ROOT/benches/peers/dataset.py" --revert "$WORK/data" "$WORK/saved"
trap '[ -d "$WORK/saved" ] && python3 "$ROOT/benches/peers/dataset.py" --revert "$WORK/data" "$WORK/saved"' EXIT
python3 "$ROOT/benches/peers/dataset.py" "$WORK/data" "$MB"
DATA_BYTES=$(du -sb --exclude=.done "$WORK/data" | cut -f1)
DATA_FILES=$(find "$WORK/data" -type f ! -name .done | wc -l)
# Every restore and repository stays until the run ends (see above): refuse
# to start without room for them all, rather than fail at the last restore.
# A restore is the dataset; a repository is taken as 0.75 of it (this
# dataset compresses and deduplicates to ~0.71), and as 1.55 for
# asheville's rs(2,1) and rs(4,2) (their parity on data that would not
# compress); 2 GiB to spare. The defaults ask for ~43 GiB and used ~37.
need=$((2 << 30))
for t in $TOOLS; do
  case $t in asheville|asheville-rs42) pct=255 ;; *) pct=175 ;; esac
  need=$(( need + ROUNDS * (DATA_BYTES / 100) * pct ))
done
avail=$(df --output=avail -B1 "$WORK" | tail -1)
if [ "$avail" -lt "$need" ]; then
  echo "not enough room under $WORK for $ROUNDS rounds of: $TOOLS: about $(( need >> 30 )) GiB needed, $(( avail >> 30 )) GiB free (PEERS_DIR, PEERS_ROUNDS and PEERS_TOOLS change it)" >&2
  exit 1
fi
RESULTS="$WORK/results.csv"
echo "tool,round,step,wall_s,cpu_s,rss_kb,repo_bytes,repo_objects,bytes" > "$RESULTS"

# The run starts PEERS_SETTLE seconds (default 360) after the last
# cleanup here (the end of the run before, or the removal above) and after
# the repo bench last removed its runs (its stamp in the temp dir), so that
# no tool restores next to thousands of recently deleted inodes.
settle=${PEERS_SETTLE:-360}
for stamp in "$WORK/.cleaned" "${TMPDIR:-/tmp}/asheville-mass-delete.stamp"; do
  [ -f "$stamp" ] || continue
  left=$(( $(stat -c %Y "$stamp") + settle - $(date +%s) ))
  if [ "$left" -gt 0 ]; then
    echo "waiting ${left} s: files were deleted at $(date -r "$stamp" +%T) ($stamp; see the top of this script; PEERS_SETTLE=0 skips the wait)" >&2
    sleep "$left"
  fi
done

warm() { find "$WORK/data" -type f -exec cat {} + > /dev/null; sync; }

# measure TOOL ROUND STEP BYTES -- command...
measure() {
  local tool=$1 round=$2 step=$3 bytes=$4; shift 5
  local tf="$WORK/time.txt"
  if ! /usr/bin/time -v -o "$tf" "$@" > "$WORK/out.txt" 2>&1; then
    echo "FAILED: $tool $step: $*" >&2; tail -20 "$WORK/out.txt" >&2; exit 1
  fi
  local wall cpu rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$tf")
  cpu=$(awk -F': ' '/User time/ {u=$2} /System time/ {s=$2} END {print u+s}' "$tf")
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$tf")
  echo "$tool,$round,$step,$wall,$cpu,$rss,,,$bytes" >> "$RESULTS"
}

repo_stats() { # TOOL ROUND REPO
  local size objs
  size=$(du -sb "$3" | cut -f1)
  objs=$(find "$3" -type f | wc -l)
  echo "$1,$2,repo,,,,$size,$objs," >> "$RESULTS"
}

# The restore must equal the (changed) source: bytes and mtimes.
check_restore() { # DIR
  if ! diff -rq --exclude=.done "$WORK/data" "$1" > "$WORK/diff.txt"; then
    echo "RESTORE DIFFERS ($1):" >&2; head "$WORK/diff.txt" >&2; exit 1
  fi
  local a b
  a=$(cd "$WORK/data" && find . -type f ! -name .done -printf '%P %s %T@\n' | sort | md5sum)
  b=$(cd "$1" && find . -type f ! -name .done -printf '%P %s %T@\n' | sort | md5sum)
  [ "$a" = "$b" ] || { echo "RESTORE METADATA DIFFERS ($1)" >&2; exit 1; }
}

# The disk under WORK, once per round (its speed drifts on a shared VM):
# 1 GiB written and read back with O_DIRECT, 4 MiB at a time. Every tool
# here syncs what it backs up, so a backup cannot end before its
# repository is on the disk: the table compares each backup with that floor.
disk_probe() { # ROUND
  local f="$WORK/disk-probe" w r
  w=$(dd_secs if=/dev/zero of="$f" bs=4M count=256 oflag=direct conv=fsync) || w=""
  r=""
  [ -n "$w" ] && { r=$(dd_secs if="$f" of=/dev/null bs=4M iflag=direct) || r=""; }
  rm -f "$f"
  # A filesystem without O_DIRECT (tmpfs) has no figure.
  [ -n "$w" ] && echo "disk,$1,write,$w,,,,,1073741824" >> "$RESULTS"
  [ -n "$r" ] && echo "disk,$1,read,$r,,,,,1073741824" >> "$RESULTS"
  return 0
}
# Seconds dd took, from its summary line; fails (no output) if dd did.
dd_secs() { local out; out=$(dd "$@" 2>&1) && awk '/copied/ {print $(NF-3)}' <<<"$out"; }

for round in $(seq 1 "$ROUNDS"); do
  disk_probe "$round"
  for tool in $TOOLS; do
    R="$WORK/repo-$tool"; OUT="$WORK/restore-$tool"
    rm -rf "$R" "$OUT"; mkdir -p "$OUT"
    warm
    cd "$WORK"
    # b.sh backs up ./data, r.sh restores the latest backup into $OUT/data.
    case $tool in
      restic)
        measure $tool $round init 0 -- restic -r "$R" init
        echo "restic -r '$R' backup data" > b.sh
        echo "restic -r '$R' restore latest --target '$OUT'" > r.sh ;;
      borg)
        measure $tool $round init 0 -- borg init --encryption=repokey-blake2 "$R"
        echo "borg create '$R::{now:%Y-%m-%dT%H:%M:%S.%f}' data" > b.sh
        echo "cd '$OUT' && borg extract \"$R::\$LAST\"" > r.sh ;;
      rustic)
        measure $tool $round init 0 -- rustic -r "$R" init
        echo "rustic -r '$R' backup data" > b.sh
        echo "rustic -r '$R' restore latest '$OUT'" > r.sh ;;
      asheville|asheville-rs42|asheville-none)
        case $tool in
          asheville) init_args="" ;;
          asheville-rs42) init_args="--redundancy rs(4,2) --backends 6" ;;
          asheville-none) init_args="--redundancy none --backends 1" ;;
        esac
        # shellcheck disable=SC2086
        measure $tool $round init 0 -- "$ASH" --data-dir "$R" init $init_args
        echo "'$ASH' --data-dir '$R' put data /data" > b.sh
        echo "'$ASH' --data-dir '$R' get /data '$OUT/data'" > r.sh ;;
      *) echo "unknown tool $tool" >&2; exit 2 ;;
    esac
    measure $tool $round backup "$DATA_BYTES" -- bash b.sh
    repo_stats $tool $round "$R"
    measure $tool $round unchanged "$DATA_BYTES" -- bash b.sh
    python3 "$ROOT/benches/peers/dataset.py" --change "$WORK/data" "$WORK/saved"
    measure $tool $round changed "$DATA_BYTES" -- bash b.sh
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    LAST=""
    [ "$tool" = borg ] && LAST=$(borg list --last 1 --short "$R")
    export LAST
    measure $tool $round restore "$DATA_BYTES" -- bash r.sh
    restored="$OUT/data"
    check_restore "$restored"
    python3 "$ROOT/benches/peers/dataset.py" --revert "$WORK/data" "$WORK/saved"
    mkdir -p "$WORK/restored"
    mv "$OUT" "$WORK/restored/$tool-$round"
    mv "$R" "$WORK/restored/repo-$tool-$round"
    echo "round $round: $tool done" >&2
  done
done

python3 "$ROOT/benches/peers/table.py" "$RESULTS" "$DATA_BYTES" "$DATA_FILES"
rm -rf "$WORK/restored"
touch "$WORK/.cleaned"
