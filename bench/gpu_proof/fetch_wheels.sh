#!/usr/bin/env bash
# Download, on a machine WITH network, the wheels the GPU machine lacks (bench/gpu_proof/wheels.txt)
# for Python 3.12 / manylinux x86_64, build this project's own wheel, and print the set's size.
# They land in bench/gpu_proof/wheels/ (git-ignored); name that folder in the device tool's `carry`.
#
#   bench/gpu_proof/fetch_wheels.sh            # into bench/gpu_proof/wheels
#   WHEELS_DIR=/elsewhere bench/gpu_proof/fetch_wheels.sh
#
# The device tool carries at most 64 MiB (working tree included); the script fails above CARRY_LIMIT_MIB.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
dest=${WHEELS_DIR:-$here/wheels}
list=$here/wheels.txt
limit_mib=${CARRY_LIMIT_MIB:-48}   # leaves room for the working tree inside the 64 MiB carry limit
pip=(${PIP:-python3 -m pip})

rm -rf "$dest"
mkdir -p "$dest"

# Only pinned name==version lines; comments and blanks are skipped.
mapfile -t pins < <(grep -Ev '^\s*(#|$)' "$list" | sed 's/\s*#.*//')
echo "fetch_wheels: ${#pins[@]} pinned wheels for cp312 manylinux x86_64 -> $dest"

# pip matches manylinux_2_N exactly: offer the common N so both old-style and new-style tags match.
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
           manylinux2014_x86_64 manylinux1_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64; do
  platforms+=(--platform "$tag")
done

"${pip[@]}" download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  "${platforms[@]}" -d "$dest" "${pins[@]}"

# This project, from the working tree (pure Python: py3-none-any).
if command -v uv >/dev/null 2>&1; then
  uv build --quiet --wheel --out-dir "$dest" "$root"
else
  "${pip[@]}" wheel --quiet --disable-pip-version-check --no-deps -w "$dest" "$root"
fi

# One file per pinned name, plus ours: two versions of one package would stop the offline install.
count=$(find "$dest" -maxdepth 1 -name '*.whl' | wc -l)
expected=$(( ${#pins[@]} + 1 ))
if [ "$count" -ne "$expected" ]; then
  echo "fetch_wheels: expected $expected wheels, found $count:" >&2
  ls -1 "$dest" >&2
  exit 1
fi

ls -l "$dest" | awk 'NR > 1 { printf "  %9.1f KiB  %s\n", $5 / 1024, $9 }'
total_bytes=$(du -cb "$dest"/*.whl | tail -1 | cut -f1)
total_mib=$(awk -v b="$total_bytes" 'BEGIN { printf "%.2f", b / 1048576 }')
echo "fetch_wheels: $count wheels, $total_mib MiB total (limit ${limit_mib} MiB for the wheels; 64 MiB carry in all)"
if awk -v t="$total_mib" -v l="$limit_mib" 'BEGIN { exit !(t > l) }'; then
  echo "fetch_wheels: over the limit; see docs/gpu-proof.md for what to drop" >&2
  exit 1
fi
