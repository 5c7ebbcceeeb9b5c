#!/usr/bin/env bash
# Builds every cargo-fuzz target in fuzz/ and runs each for SECONDS (default 60), one after
# the other, from its corpus in fuzz/corpus/<target> (git-ignored; it grows run after run)
# after copying in the committed seeds from fuzz/seeds/<target>. A crash or a failed
# assertion leaves its input in fuzz/artifacts/<target>/ and makes the script fail, after
# every target has run. cargo-fuzz wants a nightly compiler: stable is told to allow the
# nightly flags with RUSTC_BOOTSTRAP=1 (see fuzz/README.md).
#
#   scripts/fuzz.sh 20                      # CI: 20 s each
#   scripts/fuzz.sh 3600                    # an hour each
#   FUZZ_TARGETS="jwt registry" scripts/fuzz.sh 600
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
export RUSTC_BOOTSTRAP=1
# cargo-fuzz, when missing, goes into the repository's target/ (nothing installed outside
# the checkout).
tools="$PWD/../target/tools"
export PATH="$tools/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --root "$tools"
fi
targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"
cargo fuzz build
failed=()
for target in $targets; do
    mkdir -p "corpus/$target"
    if [ -d "seeds/$target" ]; then
        cp "seeds/$target"/* "corpus/$target/"
    fi
    echo "== $target: ${seconds} s"
    # -rss_limit_mb: a leak or a runaway allocation is a finding, not a stuck machine.
    if ! cargo fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1; then
        failed+=("$target")
    fi
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz targets that failed (inputs in fuzz/artifacts/): ${failed[*]}" >&2
    exit 1
fi
