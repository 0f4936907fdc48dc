#!/usr/bin/env bash
# Runs on the GPU machine: Nsight Compute on the attention benchmark's MMA
# and wgmma kernels (every version, b2 × s4096 by default), so tuning
# starts from the profiler's bottleneck rather than a guess. Clocks are left
# as the driver sets them (--clock-control none), as the timings are.
# Usage: scripts/gpu-profile.sh BIN_DIR OUT_DIR [SHAPES]
# (BIN_DIR from scripts/gpu-build.sh; SHAPES as attn-gpu's ATTN_GPU_SHAPES;
# PROFILE_KERNELS, a regex, picks the kernels: all MMA and wgmma versions by default.)
# Writes OUT_DIR/ncu-attention.txt (details page per kernel launch).
set -uo pipefail
bin=${1:?usage: gpu-profile.sh BIN_DIR OUT_DIR [SHAPES]}
out=${2:?usage: gpu-profile.sh BIN_DIR OUT_DIR [SHAPES]}
shapes=${3:-2x4096}
mkdir -p "$out"
ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
if [ -z "$ncu" ]; then
    echo "no ncu on this machine: FAILED"
    exit 1
fi
echo "ncu: $ncu ($("$ncu" --version | tail -1))"
# One warm-up and one timed call per kernel and mode: the filter keeps the
# forward and backward MMA kernels (delta and the dq cast are small).
ATTN_GPU_SHAPES=$shapes ATTN_GPU_ITERS=1 timeout "${PROFILE_TIMEOUT:-240}" "$ncu" \
    --kernel-name regex:"${PROFILE_KERNELS:-attention_(fwd|bwd)_(mma|wgmma)}" --clock-control none \
    --launch-count "${PROFILE_LAUNCHES:-30}" \
    --section SpeedOfLight --section Occupancy --section LaunchStats \
    --section WarpStateStats --section SchedulerStats \
    --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
    --section InstructionStats \
    "$bin/attn-gpu" >"$out/ncu-attention.txt" 2>&1
echo "ncu exit $?"
grep -E "attention_(fwd|bwd)_(mma|wgmma)|Duration|Compute \(SM\) Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Block Limit|Stall|Issue Slots Busy|L1/TEX Hit|Warp Cycles Per Issued" \
    "$out/ncu-attention.txt" | head -400
