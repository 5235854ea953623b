#!/usr/bin/env bash
# On the device, after the last piece: unpacks the pieces into /tmp/w (afm, the test binary,
# the shared data, the GGUF into ~/.cache/afm with its sha256 checked) and the committed
# synthetic data into /tmp/w/WORK, runs the CUDA tests (printed; the run starts whatever they
# say, so read them before trusting it), then starts scripts/afm-run6.sh detached
# (setsid nohup, from a copy of scripts/ that later calls' tree copies cannot touch).
# Usage: CONFIG=scripts/smollm2-afm-runN.toml scripts/device/start.sh TOKENS STEPS
#   GPU_EVAL=LIMIT  train, then evaluate on the GPU at LIMIT items per task
#                   (scripts/device/train-and-eval.sh; FP_EXTRA, EXPORT_SEEDS and CONFIG2 pass on)
#                   instead of afm-run6.sh
#   PAR_CONFIG=FILE with GPU_EVAL, a second train-and-eval of FILE at the same time on the same
#                   GPU, in WORK-par (same data, steps and evaluation; no CONFIG2 or FP_EXTRA)
#   FP_PAR=FLAGS    the FP model's rows (digital and five chips) with those `afm eval` flags at
#                   GPU_EVAL items, beside the run from its start, in WORK-fp (WORK-fp/done)
#   NO_RUN=1        unpack and test only (the caller runs what it wants next)
#   RATIO=1         first (before NO_RUN's exit), on the quiet GPU, the training tokens/s of
#                   the full recipe against
#                   every analog feature off (scripts/device/train-ratio.sh, into WORK/ratio)
#                   (with PROFILE=1 as well, each phase of the step timed: train-ratio.sh)
#   KPROF=1         on the quiet GPU, every kernel of one training step timed by ncu and summed
#                   by name (scripts/device/kernel-profile.sh, into WORK/kernels)
#   SCALE=1         on a two-GPU machine with a binary packed with FEATURES=nccl, the NCCL test
#                   and the data-parallel scaling (scripts/device/scale-2gpu.sh, into WORK/scale),
#                   before NO_RUN's exit (SCALE=1 NO_RUN=1: that alone)
set -u
tokens=$1 steps=$2 W=/tmp/w
[ -d /work/main ] || { mkdir -p /work; ln -s "$PWD" /work/main; }
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
# A binary packed with FEATURES=nccl needs libnccl.so.2 at start: the one PyTorch ships.
nccl=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' \
  2> /dev/null) && export LD_LIBRARY_PATH=$nccl:$LD_LIBRARY_PATH
cat $W/pieces/piece.* | tar -C $W -xf - || exit 1
M=~/.cache/afm/models/smollm2-135m-instruct; mkdir -p $M && mv $W/model.gguf $M/SmolLM2-135M-Instruct.Q4_1.gguf
xz -d $W/afm.xz $W/itest.xz && chmod +x $W/afm $W/itest
$W/afm model fetch smollm2-135m-instruct || exit 1   # checks the cached file's sha256
tar -C $W -xJf $W/shared-data.tar.xz && mkdir -p $W/WORK && cp -r scripts $W/
tar -C $W/WORK -xJf datasets/smollm2-135m-instruct-seed0-21m.tar.xz
$W/itest cuda:: 2>&1 | tail -4
[ -z "${SCALE:-}" ] || { $W/itest parallel::nccl 2>&1 | tail -4
  AFM_DATA=$W/data scripts/device/scale-2gpu.sh $W/afm $W/WORK/data $W/WORK/scale; }
[ -z "${RATIO:-}" ] || AFM_DATA=$W/data scripts/device/train-ratio.sh $W/afm $W/WORK/data $W/WORK/ratio
[ -z "${KPROF:-}" ] || PATH=$PATH:/usr/local/cuda-13.0/bin AFM_DATA=$W/data \
  scripts/device/kernel-profile.sh $W/afm $W/WORK/data $W/WORK/kernels
[ -z "${NO_RUN:-}" ] || exit 0
if [ -n "${GPU_EVAL:-}" ]; then
  cd $W && AFM_DATA=$W/data setsid nohup scripts/device/train-and-eval.sh $W/afm $W/WORK \
    "$steps" "$GPU_EVAL" > $W/run.log 2>&1 < /dev/null &
  if [ -n "${PAR_CONFIG:-}" ]; then
    mkdir -p $W/WORK-par && ln -sfn $W/WORK/data $W/WORK-par/data
    CONFIG=$PAR_CONFIG CONFIG2="" FP_EXTRA="" AFM_DATA=$W/data setsid nohup \
      scripts/device/train-and-eval.sh $W/afm $W/WORK-par "$steps" "$GPU_EVAL" \
      > $W/run-par.log 2>&1 < /dev/null &
  fi
  if [ -n "${FP_PAR:-}" ]; then
    mkdir -p $W/WORK-fp
    FP_EXTRA=$FP_PAR AFM_DATA=$W/data setsid nohup bash -c "scripts/device/gpu-eval.sh $W/afm - \
      $W/WORK-fp $GPU_EVAL && touch $W/WORK-fp/done" > $W/WORK-fp/eval.log 2>&1 < /dev/null &
  fi
else
  cd $W && AFM_DATA=$W/data AFM_ONLY=1 setsid nohup scripts/afm-run6.sh $W/afm $W/WORK \
    "$tokens" "$steps" 16 > $W/run.log 2>&1 < /dev/null &
fi
sleep 20; cat $W/run.log; tail -c 300 $W/WORK/gpu.log | tr '\r' '\n' | tail -2
