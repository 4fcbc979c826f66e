#!/usr/bin/env bash
# One prepared session of bench/gpu.py on the lent CUDA machine (H200, python3 = 3.12 with torch, no network), run
# from the repo root as `bash bench/gpu_session.sh` with `.whl` carried (`make gpu-wheels` fills it here). It installs
# the wheels into /tmp/site, records the versions, then runs three steps, each under its own time limit so the whole
# script ends inside about 540 s even when a step hangs; a failed step never stops the next one. Every step writes
# its figures to $OUT/<step>.json as it goes (bench/gpu.py saves after every row) and its log to $OUT/<step>.log:
#   compile  SDXL 1024x1024, 30 steps, CFG, the torch.compile variants of `--compile only`: regional compile, fp8 +
#            regional, the LoRA/IP-Adapter slot variants. The whole-UNet torch.compile (max-autotune) variant comes
#            first in that selection and alone can outlast the step, so it is left out unless FULL_COMPILE=1.
#   cold     process start -> first image through the runner's ModelHost (load, quantize, compile or load saved
#            artifacts, warm-up) in a fresh process per scenario, $COLD.
#   batches  SDXL throughput at batch 1 and 4 with the runner's own settings.
# Overrides (environment): STEPS="compile cold batches" (a subset, in that order), T_COMPILE / T_COLD / T_BATCHES
# (seconds), COLD (scenarios), FULL_COMPILE=1, PYTHON (python3), SITE (/tmp/site), OUT (where $OUT is unset).
set -u

PYTHON=${PYTHON:-python3}
SITE=${SITE:-/tmp/site}
OUT=${OUT:-/tmp/gpu-session-out}
STEPS=${STEPS:-compile cold batches}
T_COMPILE=${T_COMPILE:-190}
T_COLD=${T_COLD:-220}
T_BATCHES=${T_BATCHES:-60}
COLD=${COLD:-regional-fresh,regional-saved,fp8-regional-fresh,fp8-regional-saved}
FULL_COMPILE=${FULL_COMPILE:-0}
mkdir -p "$OUT"
started=$SECONDS

wheels=(.whl/*.whl)
echo "== installing ${#wheels[@]} wheels into $SITE"
if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}"
then
    echo "SUMMARY install=failed (is .whl carried? run make gpu-wheels here first)"
    exit 1
fi
export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

# Versions, the GPU, and whether the benchmark's whole import closure loads (a missing wheel shows here in seconds).
timeout -k 5 45 "$PYTHON" - >"$OUT/versions.txt" 2>&1 <<'EOF'
import importlib, importlib.metadata as md, platform, sys
print("python", platform.python_version(), sys.executable)
for dist, module in [("torch", "torch"), ("triton", "triton"), ("diffusers", "diffusers"), ("torchao", "torchao"),
                     ("transformers", "transformers"), ("peft", "peft"), ("accelerate", "accelerate"),
                     ("huggingface-hub", "huggingface_hub"), ("safetensors", "safetensors"), ("numpy", "numpy"),
                     ("protobuf", "google.protobuf"), ("grpcio", "grpc"), ("pydantic", "pydantic"),
                     ("structlog", "structlog"), ("typing-extensions", "typing_extensions")]:
    try:
        mod = importlib.import_module(module)
        print(f"{dist:18s} {md.version(dist):24s} {getattr(mod, '__file__', '')}")
    except Exception as exc:  # noqa: BLE001 - a report, not a check
        print(f"{dist:18s} NOT IMPORTABLE: {type(exc).__name__}: {exc}")
try:
    import torch
    print("cuda", torch.version.cuda, "available", torch.cuda.is_available())
    if torch.cuda.is_available():
        print("gpu", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
except Exception as exc:  # noqa: BLE001
    print("torch/cuda:", type(exc).__name__, exc)
for module in ["bench.gpu", "gpu_runner.pipelines.host", "gpu_runner.settings", "gpu_runner.pipelines.adapters",
               "gpu_runner.pipelines.startup", "gpu_runner.pipelines.acceleration", "torchao.quantization"]:
    try:
        importlib.import_module(module)
        print("import ok  ", module)
    except Exception as exc:  # noqa: BLE001
        print("IMPORT FAIL", module, f"{type(exc).__name__}: {exc}")
EOF
echo "versions rc=$?" >>"$OUT/versions.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader >>"$OUT/versions.txt" 2>&1
cat "$OUT/versions.txt"

summary=""
run_step() {  # name, limit in seconds, command...
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    echo "== step $name (limit $limit s, at $((SECONDS - started)) s)"
    timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    [ "$rc" = 124 ] || [ "$rc" = 137 ] && rc="$rc(timeout)"
    echo "== step $name: rc=$rc after $((SECONDS - t0)) s"
    grep -v -e 'it/s]' -e '^ *[0-9]*%|' "$OUT/$name.log" | tail -n 25
    summary="$summary $name=$rc"
}

for step in $STEPS; do
    case $step in
        compile)
            if [ "$FULL_COMPILE" = 1 ]; then
                run_step compile "$T_COMPILE" "$PYTHON" bench/gpu.py --pipelines sdxl --compile only \
                    --json "$OUT/compile.json"
            else  # bench/gpu.py's own main, with the whole-UNet torch.compile variant taken out of the table
                run_step compile "$T_COMPILE" "$PYTHON" -c 'import sys
from bench import gpu
gpu.SDXL_VARIANTS[:] = [v for v in gpu.SDXL_VARIANTS if v[1] is not gpu._compiled]
sys.exit(gpu.main(sys.argv[1:]))' --pipelines sdxl --compile only --json "$OUT/compile.json"
            fi ;;
        cold)
            run_step cold "$T_COLD" "$PYTHON" bench/gpu.py --cold-start "$COLD" --json "$OUT/cold.json" ;;
        batches)
            run_step batches "$T_BATCHES" "$PYTHON" bench/gpu.py --pipelines "" --batches 1,4 \
                --json "$OUT/batches.json" ;;
        *)
            echo "unknown step $step (known: compile cold batches)"
            summary="$summary $step=unknown" ;;
    esac
done
echo "SUMMARY install=0$summary total=$((SECONDS - started))s"
