#!/usr/bin/env bash
# Issue 8's GPU measurements in one place, a stage per call (each fits a 10-minute command):
#   bench/gpu_suite.sh env | peak | gpt2 | llama | 350m | chunked | regional | head | profile | telemetry | sweep | rope | all
#   bash bench/gpu_suite.sh lease  # the one call to make on a short GPU lease (see stage_lease)
# Prints tables; copy them into docs/benchmarks.md with the date, device and command.
# The model sizes are real (GPT-2 124M / 350M widths, vocab 50304, block 1024); the tokens come from
# the embedded stdlib_char data (ids < 100): the FLOPs and memory are those of any text.
# SMOKE=1 checks the plumbing on a CPU instead: tiny sizes, one step each, float32, no compile
# (DATA_DIR and OUT_DIR, if set, replace data/ and out/bench).
set -euo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"  # the lease re-runs this script per stage
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
GPT2=(--preset gpt2 --n_layer 12 --n_embd 768 --n_head 12 --block_size 1024 --vocab_size 50304)
LLAMA=(--preset llama --n_layer 12 --n_embd 768 --n_head 12 --block_size 1024 --vocab_size 50304)
M350=(--preset gpt2 --n_layer 24 --n_embd 1024 --n_head 16 --block_size 1024 --vocab_size 50304)
GPU=(--device cuda --dtype bfloat16 --compile --iters 20 --rounds 2)
DEVICE=cuda
TINY=()       # appended last, so they override the sizes above (argparse keeps the last value)
HEAD_TINY=()
if [[ -n "${SMOKE:-}" ]]; then
  DEVICE=cpu
  GPU=(--device cpu --dtype float32 --iters 1 --rounds 1 --warmup 0)
  TINY=(--n_layer 1 --n_embd 32 --n_head 2 --block_size 32 --vocab_size 512 --batch_size 2
        --data_dir "${DATA_DIR:-data}" --out_dir "${OUT_DIR:-out/bench}")
  HEAD_TINY=(--device cpu --dtype float32 --tokens 64 --n_embd 16 --vocab 256 --chunks 0,16 --iters 1)
fi
# GPU_EXTRA: more flags for every train_step.py and telemetry_overhead.py run, e.g. GPU_EXTRA="--compile_mode
# reduce-overhead" (CUDA graphs); LEASE_JSON (set by the lease, one file per stage): train_step.py's record
read -r -a EXTRA <<<"${GPU_EXTRA:-}"
step() {
  local record=()
  if [[ -n "${LEASE_JSON:-}" ]]; then record=(--json "$LEASE_JSON"); fi
  echo; echo "\$ bench/train_step.py $* ${EXTRA[*]}"
  "$PY" bench/train_step.py "$@" "${EXTRA[@]}" "${record[@]}" "${TINY[@]}"
}

stage_env() {
  if [[ -n "${SMOKE:-}" ]]; then echo "SMOKE: no GPU to describe"; return; fi
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  "$PY" -c "import torch; print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
}
stage_peak() {
  local cmd=("$PY" -m gptlab.cli peak --device "$DEVICE" --dtype "$([[ $DEVICE == cuda ]] && echo bfloat16 || echo float32)")
  echo "\$ ${cmd[*]}"; "${cmd[@]}"
}
stage_gpt2() { step "${GPT2[@]}" "${GPU[@]}" --batch_size 16; step "${GPT2[@]}" "${GPU[@]}" --batch_size 32; }
stage_llama() { step "${LLAMA[@]}" "${GPU[@]}" --batch_size 16; }
stage_350m() { step "${M350[@]}" "${GPU[@]}" --batch_size 16; }
# the micro-batch a run asks for, or the largest multiple of 16 below it whose peak fits this GPU (92% of its
# memory): $2 is the run's peak in GB at the batch asked for, as measured on the H200 (141 GB), scaled by the
# batch; an H100 (80 GB) runs the 350M model at 48, not 64 (83.4 GB there). The record names the batch that ran.
fit_batch() {
  local want=$1 peak_gb=$2 total_mib
  local gpu=()  # the first visible GPU's memory (CUDA_VISIBLE_DEVICES by index), not GPU 0's
  if [[ "${CUDA_VISIBLE_DEVICES:-}" =~ ^[0-9]+ ]]; then gpu=(-i "${BASH_REMATCH[0]}"); fi
  total_mib=$(nvidia-smi ${gpu[@]+"${gpu[@]}"} --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -n 1) ||
    total_mib=""
  if [[ -n "${SMOKE:-}" || ! "$total_mib" =~ ^[0-9]+$ ]]; then echo "$want"; return; fi
  awk -v want="$want" -v peak="$peak_gb" -v mib="$total_mib" 'BEGIN {
    b = want; while (b > 16 && peak * 1e9 * b / want > 0.92 * mib * 1048576) b -= 16
    if (b != want) printf "(micro-batch %d for %d: %.1f GB at %d does not fit %d MiB)\n", b, want, peak, want, mib > "/dev/stderr"
    print b }'
}
# compile options go with --compile, which SMOKE runs leave out (a compile option without it is refused)
compiled() { if [[ -z "${SMOKE:-}" ]]; then echo "$@"; fi; }
# the bf16 residual stream (TrainConfig.residual_dtype) goes with the bf16 runs; SMOKE runs these stages in bf16
# autocast on the CPU (the later --dtype wins), so that the stream's cast runs there as on the GPU
bf16_stream() { echo "$([[ -n "${SMOKE:-}" ]] && echo "--dtype bfloat16 ")--set residual_dtype=bfloat16"; }
stage_chunked() {
  step "${GPT2[@]}" "${GPU[@]}" --batch_size 16 --loss_chunk_size 4096
  # shellcheck disable=SC2046  # word splitting of the option pair is the point
  step "${GPT2[@]}" "${GPU[@]}" --batch_size 16 $(compiled --compile_mode max-autotune-no-cudagraphs)
}
stage_regional() {  # torchtitan's per-block compile against the whole-model graph: step time and compile time
  # shellcheck disable=SC2046
  step "${GPT2[@]}" "${GPU[@]}" --batch_size 16 $(compiled --compile_scope blocks)
}
stage_head() {
  "$PY" bench/lm_head.py --device cuda --dtype bfloat16 --tokens 16384 --chunks 0,1024,2048,4096,8192 --iters 10 \
    "${HEAD_TINY[@]}"
}
stage_head_c() {  # compiled as in the step: the loss's one-pass online softmax (inductor's default), then two passes
  local run=(--device cuda --dtype bfloat16 --tokens 16384 --chunks 0,4096 --compile --iters 20)
  "$PY" bench/lm_head.py "${run[@]}" "${HEAD_TINY[@]}"
  echo "TORCHINDUCTOR_ONLINE_SOFTMAX=0:"
  TORCHINDUCTOR_ONLINE_SOFTMAX=0 "$PY" bench/lm_head.py "${run[@]}" "${HEAD_TINY[@]}"
}
stage_profile() { step "${GPT2[@]}" "${GPU[@]}" --batch_size 16 --rounds 1 --profile 5; }
stage_telemetry() {
  local run=(--device cuda --dtype bfloat16 --compile --iters 30 --rounds 3)
  if [[ -n "${SMOKE:-}" ]]; then run=(--device cpu --dtype float32 --iters 1 --rounds 1); fi
  echo "\$ bench/telemetry_overhead.py ${GPT2[*]} ${run[*]} --batch_size 16 ${EXTRA[*]}"
  "$PY" bench/telemetry_overhead.py "${GPT2[@]}" "${run[@]}" --batch_size 16 "${EXTRA[@]}" "${TINY[@]}"
}
stage_sweep() {
  local sizes=(--n_layer 12 --n_embd 768 --n_head 12 --block_size 1024 --vocab_size 50304 --batch_size 8)
  local run=(--device cuda --dtype bfloat16 --iters 10 --rounds 1)
  if [[ -n "${SMOKE:-}" ]]; then run=("${GPU[@]}"); fi
  "$PY" bench/sweep.py --grid preset=gpt2,llama --grid compile=off,on --grid attention_backend=sdpa,manual \
    "${sizes[@]}" "${run[@]}" "${TINY[@]}"
}

stage_cuda_tests() {  # tests/train/test_cuda.py and the loader's CUDA test (skipped on a CPU); CUDA_TESTS_K: pytest -k
  # -v -rA: each test's verdict as it ends, so a stage stopped at its limit still says which passed
  local cmd=("$PY" -m pytest -v --tb=short -rA -p no:cacheprovider -m cuda tests/train/test_cuda.py tests/data/test_loader.py)
  if [[ -n "${CUDA_TESTS_K:-}" ]]; then cmd+=(-k "$CUDA_TESTS_K"); fi
  if "$PY" -c "import pytest_timeout" 2>/dev/null; then cmd+=(--timeout=60); fi
  echo "\$ ${cmd[*]}"; "${cmd[@]}"
}

# One call for a short GPU lease, in order of what matters most: GPT-2 124M at batch 16 (with a kernel
# profile: comparable with every earlier lease), the CUDA tests (the GPU paths' correctness), the three
# targets at micro-batch 64 (their best configuration so far: llama 124M, GPT-2 at the same size, 350M),
# the telemetry cost (gptlab's step, measured against the plain loop in every run, already bounds it).
# Each stage runs under its own time limit inside LEASE_BUDGET seconds
# (default 530), so the call ends inside a 10-minute command; a stage is started only when at least
# its minimum is left (a compiled run cut off mid-compile measures nothing), else skipped, and said so,
# and the next, shorter one is tried. Everything
# goes to LEASE_DIR (default $OUT, the device tool's folder, else out/lease): lease.log, a JSON
# record per train_step run, the profile's Chrome trace (gzipped).
# On the device tool: run(command="bash bench/gpu_suite.sh lease", timeout_s=590).
stage_lease() {
  local dest=${LEASE_DIR:-${OUT:-out/lease}} budget=${LEASE_BUDGET:-530} start=$SECONDS
  mkdir -p "$dest"
  export PYTHONUNBUFFERED=1
  # name:limit:minimum (seconds); compiles of these shapes took 21-53 s on an H200 (2026-12-04); LEASE_PLAN,
  # the same words space-separated, replaces the plan (a follow-up lease measures what the first left open)
  local plan=(env:20:5 peak:45:20 gpt2_16:180:120 cuda_tests:150:90 llama_64:120:70 gpt2_64:120:70
              350m_64:180:110 telemetry:120:80)
  if [[ -n "${LEASE_PLAN:-}" ]]; then read -r -a plan <<<"$LEASE_PLAN"; fi
  export LEASE_DEST="$dest"  # where ship_trace puts the profiles' traces
  rm -f "${OUT_DIR:-out/bench}/train_step_trace.json" "$dest"/*_trace.json.gz  # never an earlier call's trace
  {
    echo "lease: $(date -u +%FT%TZ), budget ${budget}s, to $dest${GPU_EXTRA:+, every run with $GPU_EXTRA}"
    # which code ran: always a hash of gptlab/ and bench/ that a checkout recomputes (in a clean checkout:
    # find gptlab bench -name '*.py' -o -name '*.sh' | LC_ALL=C sort | xargs cat | sha256sum), and the commit where
    # .git travelled -- only a lead: on 2026-12-04 the device's .git said the session's first commit while the
    # tree that ran held three later ones
    echo "code: sha256 of gptlab+bench $(find gptlab bench -name '*.py' -o -name '*.sh' | LC_ALL=C sort | xargs cat | sha256sum | cut -c1-16), .git HEAD $(git rev-parse --short HEAD 2>/dev/null || echo none)"
    "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__)"
    for item in "${plan[@]}"; do
      local name limit minimum left=$((budget - (SECONDS - start)))
      IFS=: read -r name limit minimum <<<"$item"
      if ((left < minimum)); then echo "=== $name: skipped (${left}s of the budget left, needs ${minimum}s)"; continue; fi
      if [[ -n "${SMOKE:-}" ]]; then limit=$((limit * 10)); fi  # a loaded CI machine, not a GPU's minutes
      ((limit > left)) && limit=$left
      echo; echo "=== $name (limit ${limit}s, at $((SECONDS - start))s)"
      local rc=0
      LEASE_JSON="$dest/$name.json" timeout -k 5 "$limit" bash "$SELF" "$name" || rc=$?
      if ((rc == 124 || rc == 137)); then echo "=== $name: stopped at its ${limit}s limit"
      elif ((rc != 0)); then echo "=== $name: failed (exit $rc)"; fi
    done
    echo; echo "lease: done in $((SECONDS - start))s"
  } 2>&1 | tee "$dest/lease.log"
}
# the lease's runs, one train_step.py run each
ship_trace() {  # the profile's trace, gzipped into the lease's folder as $1 at once: back even if a later stage overruns
  local trace="${OUT_DIR:-out/bench}/train_step_trace.json"
  if [[ -n "${LEASE_DEST:-}" && -f "$trace" ]]; then gzip -c "$trace" >"$LEASE_DEST/$1" && rm "$trace"; fi
}
stage_gpt2_16() { step "${GPT2[@]}" "${GPU[@]}" --batch_size 16 --profile 5; ship_trace gpt2_trace.json.gz; }
stage_gpt2_32() { step "${GPT2[@]}" "${GPU[@]}" --batch_size 32; }
stage_llama_16() { stage_llama; }
stage_350m_16() { stage_350m; }
# the levers on the non-matmul third, one run each (a follow-up lease's LEASE_PLAN names them): a larger
# micro-batch (llm.c's 64), accumulation (the optimizer, clipping and statistics once per 4 micro-steps, as
# nanoGPT's 40 micro-steps do), inductor's coordinate-descent tuning of its own kernels (norms, GELU, the
# loss; modded-nanogpt sets it), the chunked loss, max-autotune (Triton matmul templates with fused epilogues)
stage_gpt2_64() { step "${GPT2[@]}" "${GPU[@]}" --batch_size 64; }
stage_gpt2_64p() {  # the first target's kernels at its best batch
  step "${GPT2[@]}" "${GPU[@]}" --batch_size 64 --rounds 1 --profile 3; ship_trace gpt2_64_trace.json.gz
}
# the elementwise third at batch 64, one lever a run: the loss's softmax in two passes (its one-pass online form ran
# at a third of the memory's speed), a bf16 residual stream (no fp32 activations between the blocks), both, and
# GPT-2 without biases (nanoGPT train.py's default; not the target's model: what its biases' gradients cost)
# shellcheck disable=SC2046
stage_gpt2_64os() { step "${GPT2[@]}" "${GPU[@]}" --batch_size 64 $(compiled --inductor_config online_softmax=False); }
# shellcheck disable=SC2046
stage_gpt2_64r() { step "${GPT2[@]}" "${GPU[@]}" --batch_size 64 $(bf16_stream); }
stage_gpt2_64or() {
  # shellcheck disable=SC2046
  step "${GPT2[@]}" "${GPU[@]}" --batch_size 64 $(bf16_stream) $(compiled --inductor_config online_softmax=False)
}
# shellcheck disable=SC2046
stage_llama_64r() { step "${LLAMA[@]}" "${GPU[@]}" --batch_size 64 $(bf16_stream); }
# shellcheck disable=SC2046
stage_350m_64r() { step "${M350[@]}" "${GPU[@]}" --batch_size "$(fit_batch 64 84)" $(bf16_stream); }
# the chunked loss by its Triton kernel (gptlab.model.loss_kernel): the head + loss alone, kernel against torch
# ops and the plain head, at batch 64's 65536 tokens; then the step with it (chunks of 16384) and the bf16 stream
stage_head_k() {
  # (the chunk of the step's runs only: each chunk size is two compiles more, and rows print as they finish)
  local run=(--device cuda --dtype bfloat16 --tokens 65536 --chunks 0,16384 --compile --iters 10 --loss_kernel both)
  if [[ -n "${SMOKE:-}" ]]; then run=(--loss_kernel both "${HEAD_TINY[@]}"); fi
  echo "\$ bench/lm_head.py ${run[*]}"; "$PY" bench/lm_head.py "${run[@]}"
}
# shellcheck disable=SC2046
stage_gpt2_64k() { step "${GPT2[@]}" "${GPU[@]}" --batch_size 64 $(bf16_stream) --loss_chunk_size 16384; }
# shellcheck disable=SC2046
stage_llama_64k() { step "${LLAMA[@]}" "${GPU[@]}" --batch_size 64 $(bf16_stream) --loss_chunk_size 16384; }
stage_gpt2_64nb() { step "${GPT2[@]}" "${GPU[@]}" --batch_size 64 --set bias=False; }
# SDPA's kernel (TrainConfig.sdpa_backend): FlashAttention-2 first instead of PyTorch's default order (cuDNN's on
# an H200: 17.7 ms of attention at batch 64, about 245 TFLOPS of causal work at head size 64)
stage_gpt2_64f() { step "${GPT2[@]}" "${GPU[@]}" --batch_size 64 --set sdpa_backend=flash; }
# max-autotune at batch 64 with the bf16 stream: Triton matmul templates that can take GELU and the bias into
# their epilogues (GELU's 8.5 ms); its first step compiles for minutes
# shellcheck disable=SC2046
stage_gpt2_64ra() { step "${GPT2[@]}" "${GPU[@]}" --batch_size 64 $(bf16_stream) $(compiled --compile_mode max-autotune-no-cudagraphs); }
stage_gpt2_128() { step "${GPT2[@]}" "${GPU[@]}" --batch_size "$(fit_batch 128 87)"; }  # ~87 GB: the fixed per-step costs halved again
stage_gpt2_16x4() { step "${GPT2[@]}" "${GPU[@]}" --batch_size 16 --grad_accum 4; }
stage_cdt_16() { TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1 step "${GPT2[@]}" "${GPU[@]}" --batch_size 16; }
stage_chunked_16() { step "${GPT2[@]}" "${GPU[@]}" --batch_size 16 --loss_chunk_size 4096; }
# shellcheck disable=SC2046
stage_autotune_16() { step "${GPT2[@]}" "${GPU[@]}" --batch_size 16 $(compiled --compile_mode max-autotune-no-cudagraphs); }
stage_llama_64() { step "${LLAMA[@]}" "${GPU[@]}" --batch_size 64; }
stage_350m_64() { step "${M350[@]}" "${GPU[@]}" --batch_size "$(fit_batch 64 84)"; }
stage_rope() {  # RoPE's layouts in one attention sublayer (bench/rope_layout.py)
  local run=(--device cuda --dtype bfloat16 --compile --batch_size 16 --block_size 1024 --iters 20 --profile)
  if [[ -n "${SMOKE:-}" ]]; then run=(--device cpu --dtype float32 --batch_size 1 --block_size 32 --n_embd 32 --n_head 2 --iters 1); fi
  echo "\$ bench/rope_layout.py ${run[*]}"; "$PY" bench/rope_layout.py "${run[@]}"
}
stage_llama_16p() {  # llama's kernels, to set against GPT-2's
  step "${LLAMA[@]}" "${GPU[@]}" --batch_size 16 --profile 5; ship_trace llama_trace.json.gz
}

STAGES=(env peak gpt2 llama 350m chunked regional head profile telemetry sweep rope cuda_tests)
RUNS=(gpt2_16 gpt2_32 llama_16 350m_16 gpt2_64 gpt2_64p gpt2_64os gpt2_64r gpt2_64or llama_64r 350m_64r gpt2_64k llama_64k gpt2_64nb gpt2_64f gpt2_64ra gpt2_128 gpt2_16x4 cdt_16 chunked_16 autotune_16 llama_16p llama_64
      350m_64 head_c head_k)
case "${1:-}" in
  all) for s in "${STAGES[@]}"; do "stage_$s"; done ;;
  lease) stage_lease ;;
  env|peak|gpt2|llama|350m|chunked|regional|head|profile|telemetry|sweep|cuda_tests) "stage_$1" ;;
  gpt2_16|gpt2_32|llama_16|350m_16|gpt2_64|gpt2_64p|gpt2_64os|gpt2_64r|gpt2_64or|llama_64r|350m_64r|gpt2_64k|llama_64k|gpt2_64nb|gpt2_64f|gpt2_64ra|gpt2_128|gpt2_16x4|cdt_16|chunked_16|autotune_16|llama_16p|llama_64|350m_64|rope|head_c|head_k)
    "stage_$1" ;;
  *) echo "usage: $0 [$(IFS='|'; echo "${STAGES[*]}")|lease|all] (lease runs: ${RUNS[*]})" >&2; exit 2 ;;
esac
