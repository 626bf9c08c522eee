#!/usr/bin/env bash
# Every GPU measurement in one command of about 9 minutes (more than fits: the last steps are skipped when the
# budget runs out), for a short lease on one CUDA GPU with more than 97 GiB (an H200: the 7B stock loop
# peaks at 97.3 GiB and would run out of memory on an 80 GB H100).
#
#   bash bench/gpu_check.sh OUTDIR [SECONDS]     # SECONDS: the whole run's budget (default 560)
#
# In order of what matters most, each step given what is left of the budget (seconds a step took
# on an H200 on 2026-11-27 in brackets, where it ran then; the first call on a fresh machine runs
# slower, caches cold):
#   1. 7b         Qwen2.5-7B shape, where the trainer is short of 2x: stock, trainer, the trainer with
#                 the chunked loss's earlier version and with LoRA dropout, compile_autocast (~30 each)
#   2. 7b_profile where the 7B trainer's and stock loop's step time goes (bench/step_profile.py)
#   3. 1.5b       Qwen2.5-1.5B shape: stock, trainer, its steps apart                 (55 for 3 variants)
#   4. gradients  first-step LoRA gradients of the fast variants against fp32: rounding or not (bench/grad_check.py)
#   5. 7b_autotune the trainer compiled with max-autotune (a long compile)
#   6. 1.5b_qlora the stock QLoRA recipe, the lean one and the trainer's                      (90)
#   7. 7b_qlora   the trainer's QLoRA and the lean one (quantizing 7B is slow)         (>200 with stock)
#   8. 1.5b_steps the single steps: compile, chunked loss, checkpointing, padding vs packing (67)
#   9. trainer    adapters.train on CUDA (bench/gpu_trainer.py): bf16 LoRA fast and plain, --qlora (51)
#
# torch, transformers, peft and accelerate come from the machine's image. bitsandbytes, where the
# image lacks it, comes from .whl/ (git-ignored, so name it in the device tool's `carry`), fetched
# here beforehand WITHOUT its dependencies, which would replace the image's CUDA torch:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_24_x86_64 -d .whl bitsandbytes==0.50.2          # one 41 MiB wheel
# Every variant's result is a JSON line in OUTDIR/*.jsonl as soon as it finishes, so a run cut
# short keeps what it measured; a step that fails is logged (OUTDIR/*.log) and the next one runs.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?output folder}
deadline=$((SECONDS + ${2:-560}))
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}

if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    $PY -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)"
    $PY -c "import bitsandbytes; print('bitsandbytes', bitsandbytes.__version__)"
    git log -1 --format='commit %h %cI' 2>/dev/null
} >"$out/gpu.txt" 2>&1

step() {  # step NAME SECONDS COMMAND...: stdout to NAME.jsonl, stderr to NAME.log, killed after
    local name=$1 limit=$2 left=$((deadline - SECONDS))   # SECONDS or at the deadline, if sooner
    shift 2
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 20 ]; then echo "== $name: skipped, no time left"; return; fi
    echo "== $name (at most ${limit}s)"
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.jsonl" 2>"$out/$name.log"
    echo "   exit $? after $((SECONDS - start))s"
}


step 7b 170 $PY -m bench train_gpu --jsonl --models 7b --variants stock trainer trainer_recompute trainer_dropout compile_autocast
step 7b_profile 90 $PY -m bench train_gpu --jsonl --models 7b --variants trainer stock --profile --steps 3
step 1.5b 150 $PY -m bench train_gpu --jsonl --models 1.5b --variants stock trainer trainer_recompute trainer_dropout autocast compile_autocast
step gradients 120 $PY -m bench grad_check --jsonl
step 7b_autotune 200 $PY -m bench train_gpu --jsonl --models 7b --variants trainer_autotune
step 1.5b_qlora 120 $PY -m bench train_gpu --jsonl --models 1.5b --variants qlora_stock qlora_lean qlora_trainer
step 7b_qlora 200 $PY -m bench train_gpu --jsonl --models 7b --variants qlora_trainer qlora_lean
step 1.5b_steps 200 $PY -m bench train_gpu --jsonl --models 1.5b --variants compile chunked_ce chunked_ce_recompute checkpointing padded packed qlora_chunked
step trainer 150 $PY -m bench.gpu_trainer
