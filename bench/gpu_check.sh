#!/usr/bin/env bash
# The GPU measurements in one script, for a machine with one CUDA GPU and a short lease.
#
#   bash bench/gpu_check.sh 1 OUTDIR   # Qwen2.5-1.5B shape: every train_gpu variant       (~6 min)
#   bash bench/gpu_check.sh 2 OUTDIR   # Qwen2.5-7B shape: stock, compile+chunked CE, QLoRA;
#                                      # then adapters.train --qlora end to end on a tiny model (~4 min)
#
# torch, transformers, peft and accelerate come from the machine's image; bitsandbytes, where the
# image lacks it, from wheels in .whl/ (pip download bitsandbytes==0.50.2 into it beforehand).
# Each step writes its JSON or log into OUTDIR; a step that fails is logged and the next one runs.
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
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.txt" 2>&1
$PY -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__)" \
    >>"$out/gpu.txt" 2>&1

step() {  # step NAME TIMEOUT COMMAND...: run with a time limit, keep stdout as NAME.json, stderr as NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    timeout "$limit" "$@" >"$out/$name.json" 2>"$out/$name.log"
    echo "   exit $? ($name)"
}

if [ "$part" = 1 ]; then
    step train_gpu_1.5b 420 $PY -m bench train_gpu --models 1.5b --json
else
    step train_gpu_7b 300 $PY -m bench train_gpu --models 7b --variants stock compile_chunked_ce qlora_stock qlora_lean --json
    # The trainer's --qlora path on CUDA: a tiny model and the tiny data of the tests, 20 steps.
    step qlora_cli 120 $PY - <<'EOF'
import json, subprocess, sys, tempfile
from pathlib import Path
sys.path.insert(0, "tests")
from tiny import tiny_model, tiny_tokenizer
out = Path(tempfile.mkdtemp())
tokenizer = tiny_tokenizer()
tiny_model(tokenizer, hidden=64).save_pretrained(out / "base")
tokenizer.save_pretrained(out / "base")
(out / "data.jsonl").write_text("".join(json.dumps({"input": f"question {i}", "output": "zebra quokka " * 3}) + "\n"
                                        for i in range(16)))
done = subprocess.run([sys.executable, "-m", "adapters.train", "--data", str(out / "data.jsonl"), "--out",
                       str(out / "adapter"), "--model", str(out / "base"), "--qlora", "--max-steps", "20",
                       "--rank", "4", "--learning-rate", "3e-2", "--max-length", "64", "--no-progress"],
                      capture_output=True, text=True)
meta = json.loads((out / "adapter" / "adapter_metadata.json").read_text()) if done.returncode == 0 else {}
print(json.dumps({"returncode": done.returncode, "stderr": done.stderr[-3000:], "steps": meta.get("steps"),
                  "final_loss": meta.get("final_loss"), "first_log": (out / "adapter" / "train_log.jsonl").read_text()
                  .splitlines()[:1] if done.returncode == 0 else None}))
EOF
fi
