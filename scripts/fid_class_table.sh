#!/usr/bin/env bash
# The sanity table of docs/REALISM.md ("Does the extractor see substructure?"): FID between two
# simulated sets of the same class (the floor) and of two different classes, with each shipped
# extractor. 1,000 vs 1,000 images of 150x150 per set by default, seeds 101 and 202.
#
#   scripts/fid_class_table.sh [COUNT] [WORKDIR]
#
# Needs the release binary (cargo build --release). Prints a markdown table: for each
# extractor, the within-class FID of each class and the between-class FID of each pair
# (A seed 101 vs B seed 202), and each between-class FID over the larger of the two classes'
# floors.
set -euo pipefail
count=${1:-1000}
work=${2:-target/fid-class-table}
bin=${BIN:-target/release/lensing-diffusion}
classes=(no_sub cdm axion)
mkdir -p "$work"
for c in "${classes[@]}"; do
  for s in 101 202; do
    [ -f "$work/data/$c-$s/manifest.json" ] || "$bin" make-dataset --classes "$c" --seed "$s" --count "$count" --layout samples --out "$work/data/$c-$s" >/dev/null 2>&1
  done
done
fid() { python3 -c "import json,sys; print(f\"{json.load(open(sys.argv[1]))['fid']:.3g}\")" "$1"; }
echo "| extractor | within no_sub | within cdm | within axion | no_sub vs cdm | no_sub vs axion | cdm vs axion |"
echo "|---|---|---|---|---|---|---|"
for size in 64 128; do
  out="$work/s$size"
  mkdir -p "$out"
  declare -A within=()
  for c in "${classes[@]}"; do
    [ -f "$out/$c.json" ] || "$bin" evaluate --image-size "$size" --real "$work/data/$c-101" --generated "$work/data/$c-202" \
      --save-features "$out/$c" --no-physics --no-noise-floor --bootstrap 0 --json "$out/$c.json" >/dev/null
    within[$c]=$(fid "$out/$c.json")
  done
  row="| ${size}x${size} | ${within[no_sub]} | ${within[cdm]} | ${within[axion]}"
  for pair in "no_sub cdm" "no_sub axion" "cdm axion"; do
    set -- $pair
    j="$out/$1-vs-$2.json"
    [ -f "$j" ] || "$bin" evaluate --real-features "$out/$1/real_features.npy" --generated-features "$out/$2/generated_features.npy" \
      --no-noise-floor --bootstrap 0 --json "$j" >/dev/null
    b=$(fid "$j")
    ratio=$(python3 -c "print(f'{$b / max(${within[$1]}, ${within[$2]}):.0f}')")
    row="$row | $b (${ratio}x floor)"
  done
  echo "$row |"
done
