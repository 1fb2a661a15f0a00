#!/usr/bin/env bash
# Runs every fuzz target for SECONDS, one after another, and fails if any of them crashed.
#
#   fuzz/run-all.sh SECONDS [TARGET...]
#
# - Targets default to all of them (`cargo fuzz list`). With FUZZ_NO_AUTH=1, the hodei-auth
#   and hodei-transport targets (auth_*, join_cert) are skipped and neither crate is built.
# - The committed seeds (fuzz/corpus/<target>) are only read: what the fuzzer finds goes to
#   fuzz/target/live-corpus/<target> (kept between runs, not committed), so the committed
#   corpus stays small. Crashes go to fuzz/artifacts/<target>/.
# - One summary line per target (execs, execs/s, coverage, result); full logs in
#   fuzz/target/fuzz-logs/<target>.log. Reproduce a crash with
#   `cargo +nightly fuzz run <target> artifacts/<target>/<file>`.
# - Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
set -uo pipefail

secs=${1:?usage: fuzz/run-all.sh SECONDS [TARGET...]}
shift
cd "$(dirname "$0")" || exit 2

features=()
if [[ ${FUZZ_NO_AUTH:-} == 1 ]]; then
    features=(--no-default-features)
fi

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
    if [[ ${FUZZ_NO_AUTH:-} == 1 ]]; then
        mapfile -t targets < <(printf '%s\n' "${targets[@]}" | grep -v -e '^auth_' -e '^join_cert$')
    fi
fi

# One build of everything up front; the runs then use those binaries directly, so every
# target fuzzes the same snapshot of the code even if the tree changes during the run.
cargo +nightly fuzz build "${features[@]}" || exit 2
triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
bin=target/$triple/release
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_odr_violation=0}

mkdir -p target/fuzz-logs
failed=()
printf '%-16s %12s %10s %8s %8s  %s\n' target execs execs/s cov ft result
for t in "${targets[@]}"; do
    live=target/live-corpus/$t
    mkdir -p "$live" "corpus/$t"
    log=target/fuzz-logs/$t.log
    mkdir -p "artifacts/$t"
    "$bin/$t" -artifact_prefix="artifacts/$t/" -max_total_time="$secs" -timeout=30 \
        -print_final_stats=1 "$live" "corpus/$t" >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    if [[ $rc -eq 0 ]]; then
        result=ok
    else
        result="CRASH (exit $rc): see $log and artifacts/$t/"
        failed+=("$t")
    fi
    printf '%-16s %12s %10s %8s %8s  %s\n' "$t" "${execs:-?}" "${speed:-?}" "${cov:-?}" "${ft:-?}" "$result"
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "crashed: ${failed[*]}" >&2
    exit 1
fi
echo "all ${#targets[@]} targets ran ${secs}s without a crash"
