#!/usr/bin/env bash
# The GPU measurements in two commands of under 6 minutes each, for a short lease on one CUDA GPU.
#
#   bash bench/gpu_check.sh 1 OUTDIR   # Qwen2.5-1.5B shape, every train_gpu variant              (~5 min)
#   bash bench/gpu_check.sh 2 OUTDIR   # adapters.train --qlora end to end on a tiny model, then the
#                                      # Qwen2.5-7B shape: stock, compile + chunked CE, two QLoRAs (~5 min)
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
part=${1:?part 1 or 2}
out=${2:?output folder}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}

if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    $PY -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
    $PY -c "import bitsandbytes; print('bitsandbytes', bitsandbytes.__version__)"
    git log -1 --format='commit %h %cI' 2>/dev/null
} >"$out/gpu.txt" 2>&1

step() {  # step NAME SECONDS COMMAND...: stdout to NAME.jsonl, stderr to NAME.log, killed after SECONDS
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit}s)"
    timeout "$limit" "$@" >"$out/$name.jsonl" 2>"$out/$name.log"
    echo "   exit $?"
}

if [ "$part" = 1 ]; then
    # The goals' variants first, so that a run cut short has measured them.
    step train_gpu_1.5b 320 $PY -m bench train_gpu --models 1.5b --jsonl --variants stock compile_chunked_ce \
        qlora_stock qlora_lean chunked_ce compile checkpointing padded packed qlora_chunked
else
    # The trainer's --qlora path on CUDA, bf16: a tiny model and data like the tests', 20 steps.
    step qlora_cli 80 $PY - <<'EOF'
import json, subprocess, sys, tempfile
from pathlib import Path
sys.path.insert(0, "tests")
from tiny import tiny_model, tiny_tokenizer
work = Path(tempfile.mkdtemp())
tokenizer = tiny_tokenizer()
tiny_model(tokenizer, hidden=64).save_pretrained(work / "base")
tokenizer.save_pretrained(work / "base")
(work / "data.jsonl").write_text("".join(json.dumps({"input": f"question {i}", "output": "zebra quokka " * 3}) + "\n"
                                         for i in range(16)))
command = [sys.executable, "-m", "adapters.train", "--data", str(work / "data.jsonl"), "--out", str(work / "adapter"),
           "--model", str(work / "base"), "--qlora", "--max-steps", "20", "--rank", "4", "--learning-rate", "3e-2",
           "--max-length", "64", "--no-progress"]
try:
    done = subprocess.run(command, capture_output=True, text=True, timeout=70)
    code, stderr = done.returncode, done.stderr
except subprocess.TimeoutExpired as error:
    code, stderr = "timeout", str(error.stderr or "")
result = {"returncode": code, "stderr": stderr[-3000:]}
if code == 0:
    meta = json.loads((work / "adapter" / "adapter_metadata.json").read_text())
    log = (work / "adapter" / "train_log.jsonl").read_text().splitlines()
    result.update(steps=meta["steps"], first=json.loads(log[0]), last=json.loads(log[-1]))
print(json.dumps(result))
EOF
    step train_gpu_7b 240 $PY -m bench train_gpu --models 7b --variants stock compile_chunked_ce qlora_stock qlora_lean --jsonl
fi
