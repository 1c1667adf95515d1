#!/usr/bin/env bash
# Issue 5's GPU measurements as one prepared command, for a lent GPU machine (the `device` tool) or a Colab
# GPU, where the course's packages are already installed (a virtual environment is not needed there).
#
#   bash bench/gpu.sh [STAGE ...]      STAGE: denoiser, samplers, speedups (default: denoiser samplers)
#
#   denoiser  bench/train_denoiser.py --ddpm-n 0: trains the gpu-profile denoiser and the metrics classifier
#             (into $COURSE_HOME, default checkpoints/: a warm machine keeps them for a later call), then
#             measures N = 10,000 samples of every 50-step sampler and guidance.
#   samplers  bench/samplers.py: DDIM-50, DDPM-50 and DDPM-1000 at w = 1 and at the self-guidance scale
#             (the denoiser stage leaves DDPM-1000's quality to this one, so it is sampled once).
#   speedups  bench/speedups.py: each GPU lever (resident data, bf16, torch.compile) in turn.
#
# After every stage the JSONs it wrote (bench/results/*-gpu.json) are copied to $OUT when it is set, so a
# call that runs out of time still returns what it measured. Expected time on one H100, estimated from the
# 2026-11-26 run (before the denoiser's clusters): denoiser about 4-5 min (training 183 s, or 115 s with
# COURSE_COMPILE=1), samplers about 4-5 min (DDPM-1000 at 126 images/s, half that guided), speedups about
# 1 min. Under the device tool's 10-minute limit per call, run the stages as separate calls on the warm
# machine (`bash bench/gpu.sh denoiser`, then `bash bench/gpu.sh samplers`): the models stay in checkpoints/.
# Set PY to choose the python (default python3); COURSE_PROFILE=test runs the same plumbing on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export COURSE_PROFILE=${COURSE_PROFILE:-gpu}

started=$(mktemp)                      # only the JSONs this call wrote go to $OUT, not the committed ones
keep() {
    if [ -n "${OUT:-}" ]; then
        find bench/results -name "*-$COURSE_PROFILE.json" -newer "$started" -exec cp {} "$OUT"/ \;
    fi
}
trap 'keep; rm -f "$started"' EXIT
trap "exit 143" TERM INT                # a timeout's SIGTERM: copy what was measured, then stop

stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(denoiser samplers)
for stage in "${stages[@]}"; do
    case $stage in
        denoiser|samplers|speedups) ;;
        *) echo "unknown stage '$stage': choose from denoiser, samplers, speedups" >&2; exit 2 ;;
    esac
done

"$PY" -c "import os, torch
assert torch.cuda.is_available() or os.environ['COURSE_PROFILE'] != 'gpu', \
    'no CUDA GPU here: the gpu profile is measured on a GPU (COURSE_PROFILE=test checks the plumbing on a CPU)'
print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"

for stage in "${stages[@]}"; do
    echo "== $stage ($(date +%T))"
    case $stage in
        denoiser) "$PY" bench/train_denoiser.py --ddpm-n 0 ;;
        samplers) "$PY" bench/samplers.py ;;
        speedups) "$PY" bench/speedups.py ;;
    esac
    keep
done
echo "== done ($(date +%T))"
