#!/usr/bin/env bash
# GPU check for the probe (issue: batch-size probe and GPU packing). Run on a GPU machine:
#   bash tests/gpu/probe_hex13.sh
# Generates the hex13 dataset (500k positions, all cores), probes resnet18 batch sizes to the
# limit, then packs k = 1, 2, 3 jobs on GPU 0, and runs the slot check of the sweep launcher.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-outputs}
python -m hexsweep.data.generate data=hex13 paths.outputs="$out"
python -m hexsweep.probe model=resnet data=hex13 device=cuda paths.outputs="$out" \
  'probe.batch_sizes=[128,256,512,1024,2048,4096,8192,16384]' probe.steps=30 probe.out="$out/probe_batches"
python -m hexsweep.probe model=resnet data=hex13 device=cuda paths.outputs="$out" \
  'probe.batch_sizes=[512]' 'probe.parallel=[1,2,3]' probe.steps=40 probe.out="$out/probe_packing"
python tests/gpu/check_gpu_sweep.py --slots-per-gpu 2 --jobs 4
