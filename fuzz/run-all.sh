#!/usr/bin/env bash
# Runs every fuzz target (or those named) one after another, each for MINUTES (fractions
# allowed: 0.1 is 6 s), on one core, and prints per target the executions, the coverage AFL++
# saw (edges found, bitmap coverage), the corpus size, and the crashes and hangs it saved.
#
#   fuzz/run-all.sh MINUTES [TARGET...]
#
# Needs cargo-afl (`cargo install cargo-afl --locked`, which also builds AFL++). Exits non-zero
# if any target crashed; crash inputs stay in the output directory (STARDUST_FUZZ_OUT, or a new
# temporary one, printed) under <target>/default/crashes/. To keep what a campaign found, copy
# <target>/default/queue/* into fuzz/corpus/<target>/ (after `cargo afl cmin`, preferably).
set -euo pipefail
cd "$(dirname "$0")"

if [ $# -lt 1 ] || ! [[ $1 =~ ^[0-9]+([.][0-9]+)?$ ]]; then
  echo "usage: $0 MINUTES [TARGET...]" >&2
  exit 2
fi
seconds=$(awk -v m="$1" 'BEGIN { s = int(m * 60 + 0.5); print (s < 1 ? 1 : s) }')
shift

# AFL++ on a VM or a shared machine: no CPU frequency governor to check, no core to bind to
# (another process may own every core: AFL++ would refuse to start), no UI, and no waiting for
# a core_pattern that pipes core dumps to a helper (AFL++ disables core dumps in its children
# anyway, so crashes are still seen).
export AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_NO_UI=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
# Calibrate each seed briefly: short runs spend their time fuzzing.
export AFL_FAST_CAL=1
if [[ $(cat /proc/sys/kernel/core_pattern 2>/dev/null || true) == '|'* ]]; then
  echo "note: core_pattern pipes core dumps to a helper; fine for AFL++ (it disables them)"
fi

cargo afl build --release --features afl --locked
bin="${CARGO_TARGET_DIR:-target}/release/stardust-fuzz"
if [ $# -eq 0 ]; then
  mapfile -t targets < <("$bin" --list)
else
  targets=("$@")
fi
out="${STARDUST_FUZZ_OUT:-$(mktemp -d -t stardust-fuzz.XXXXXX)}"
mkdir -p "$out"
echo "fuzzing ${#targets[@]} targets for ${seconds}s each; output in $out"

stat() { sed -n "s/^$2 *: *//p" "$1" | head -n 1; }
printf '%-14s %12s %10s %12s %9s %8s %6s\n' target execs execs/s edges bitmap corpus crash/hang
failed=()
for t in "${targets[@]}"; do
  log="$out/$t.log"
  # -V: stop after this many seconds; -t: a per-input time limit well above the slowest
  # target's normal inputs; -m none: decoders may allocate what a frame limit allows.
  # Without its UI, AFL++ logs a line per test case (tens of MB per half hour): keep the end.
  if ! cargo afl fuzz -i "corpus/$t" -o "$out/$t" -V "$seconds" -t 2000 -m none \
    -- "$bin" "$t" 2>&1 | tail -n 200 >"$log"; then
    echo "afl-fuzz failed for $t; the end of its log:" >&2
    tail -n 20 "$log" >&2
    failed+=("$t")
    continue
  fi
  stats="$out/$t/default/fuzzer_stats"
  crashes=$(find "$out/$t/default/crashes" -name 'id:*' 2>/dev/null | wc -l)
  hangs=$(find "$out/$t/default/hangs" -name 'id:*' 2>/dev/null | wc -l)
  printf '%-14s %12s %10s %12s %9s %8s %6s\n' "$t" "$(stat "$stats" execs_done)" \
    "$(stat "$stats" execs_per_sec)" \
    "$(stat "$stats" edges_found)/$(stat "$stats" total_edges)" \
    "$(stat "$stats" bitmap_cvg)" "$(stat "$stats" corpus_count)" "$crashes/$hangs"
  if [ "$crashes" -ne 0 ]; then
    failed+=("$t")
  fi
done

if [ "${#failed[@]}" -ne 0 ]; then
  echo "FAILED: ${failed[*]}: crash inputs under $out/<target>/default/crashes/" >&2
  echo "reproduce one with: $bin TARGET < INPUT (or add it to fuzz/regressions/TARGET/)" >&2
  exit 1
fi
echo "no crashes"
