#!/usr/bin/env bash
# benchmarks/gpu_e2e.py on a GPU machine that has Python and a CUDA torch but no Ray, reached by
# transfers of at most 64 MiB each (the device tool: one `carry` per call, files left on a warm
# machine stay between calls).
#
#   benchmarks/gpu_e2e.sh pack [DIR]       # here, with PyPI: wheels for the device, in chunks
#   benchmarks/gpu_e2e.sh run [DIR] [ARGS] # there: reassemble, install offline, run the benchmark
#
# pack: downloads the wheels of Ray (data, tune) and of the project's dependencies, the versions
# installed here (benchmarks/wheel_closure.py), except torch and torchvision (the device keeps
# its own CUDA build), builds the project's own wheel, cuts every file over CHUNK bytes with
# `split` (NAME.part-aa, NAME.part-ab, ...) and sorts the files into folders DIR/01, DIR/02, ...
# of at most CHUNK bytes each (default DIR: wheels, ignored by git). A device call carries at
# most 64 MiB *including the working tree* (tracked and untracked-not-ignored files), so CHUNK
# is 64 MiB less the tree's size less 2 MiB of slack (about 60 MiB for a 2 MiB tree); pack
# prints each folder's size plus the tree's and fails if one would not fit. Carry one folder per
# call (carry=["wheels/01"], then ["wheels/02"], ...: a folder left there by an earlier call
# stays while the machine is warm); the last call carries the last folder and runs
# `benchmarks/gpu_e2e.sh run`.
#
# run: `cat`s every NAME.part-* back into NAME, makes a venv that sees the system's packages
# (torch), installs the wheels offline (`pip install --no-index --no-deps`), checks that torch
# sees a GPU, and runs benchmarks/gpu_e2e.py ARGS (default: the full-size run on cuda).
#
# Environment: PY (python of the device, default python3), PY_VERSION (pack: the device's
# Python, default 3.12: the device image's python3, /work/.library/device/KINDS.md), VENV
# (default /tmp/wm-e2e-venv).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cmd="${1:-}"
shift || true
dir="${1:-wheels}"
[ $# -gt 0 ] && shift
PY="${PY:-python3}"
VENV="${VENV:-/tmp/wm-e2e-venv}"
LIMIT=$((64 * 1024 * 1024))  # what one device call carries, the working tree included

tree_bytes() {  # the working tree a device call sends: tracked and untracked-not-ignored files
    (cd "$here" && git ls-files -z --cached --others --exclude-standard \
        | xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
}

pack() {
    local flat="$dir/.flat" tree
    tree=$(tree_bytes)
    local CHUNK=$((LIMIT - tree - 2 * 1024 * 1024))
    rm -rf "$flat" && mkdir -p "$flat"
    # the project's and Ray's requirements as installed here, minus torch and the CUDA libraries
    # (TORCHVISION=X.Y.Z adds a torchvision wheel for a device that lacks one)
    "$here/.venv/bin/python" "$here/benchmarks/wheel_closure.py" > "$flat/requirements.txt"
    if [ -n "${TORCHVISION:-}" ]; then echo "torchvision==$TORCHVISION" >> "$flat/requirements.txt"; fi
    "$here/.venv/bin/python" -m pip download --no-deps --only-binary=:all: --dest "$flat" \
        --python-version "${PY_VERSION:-3.12}" --platform manylinux2014_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any \
        -r "$flat/requirements.txt"
    "$here/.venv/bin/python" -m pip wheel --no-deps --wheel-dir "$flat" "$here"
    # cut big files, then fill numbered folders up to CHUNK bytes each
    for f in "$flat"/*.whl; do
        if [ "$(stat -c %s "$f")" -gt "$CHUNK" ]; then
            split -b "$CHUNK" "$f" "$f.part-" && rm "$f"
        fi
    done
    local n=1 used=0 size
    mkdir -p "$dir/01"
    for f in "$flat"/*.whl "$flat"/*.part-*; do
        [ -e "$f" ] || continue
        size=$(stat -c %s "$f")
        if [ $((used + size)) -gt "$CHUNK" ] && [ "$used" -gt 0 ]; then
            n=$((n + 1)); used=0; mkdir -p "$dir/$(printf %02d $n)"
        fi
        mv "$f" "$dir/$(printf %02d $n)/"
        used=$((used + size))
    done
    rm -rf "$flat"
    echo "packed into $n folder(s) under $dir (carry one per call; the tree is $tree bytes):"
    local folder bytes bad=0
    for folder in "$dir"/[0-9]*; do
        bytes=$(du -sb "$folder" | cut -f1)
        echo "$folder: $bytes bytes, $((bytes + tree)) with the tree (limit $LIMIT)"
        [ $((bytes + tree)) -lt "$LIMIT" ] || bad=1
    done
    [ "$bad" = 0 ] || { echo "a folder and the tree exceed one call's 64 MiB" >&2; exit 1; }
}

run() {
    local all="$dir/.all"
    rm -rf "$all" && mkdir -p "$all"
    cp "$dir"/[0-9]*/*.whl "$all"/ 2>/dev/null || true
    for first in "$dir"/[0-9]*/*.part-aa; do
        [ -e "$first" ] || continue
        local base name
        base="${first%.part-aa}"
        name="$(basename "$base")"
        # parts of one file may lie in several folders: cat them in name order
        ls "$dir"/[0-9]*/"$name".part-* | awk -F'.part-' '{print $NF "\t" $0}' | sort \
            | cut -f2- | xargs cat > "$all/$name"
    done
    [ -d "$VENV" ] || "$PY" -m venv --system-site-packages "$VENV"
    # every carried wheel, without resolving: pack carried the whole closure except torch
    "$VENV/bin/python" -m pip install --quiet --no-index --no-deps "$all"/*.whl
    "$VENV/bin/python" -m pip check || echo "(pip check: torch and torchvision come from the system)"
    "$VENV/bin/python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
    cd "$here"
    "$VENV/bin/python" benchmarks/gpu_e2e.py "$@"
}

case "$cmd" in
    pack) pack ;;
    run) run "$@" ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 2 ;;
esac
