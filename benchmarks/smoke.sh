#!/usr/bin/env bash
# Tiny runs of every benchmark script in benchmarks/README.md: each must still start, train and
# write its tables. Seconds per script (parallel_finetune.py: minutes); outputs go to a temporary
# folder, never to benchmarks/results/. The figures are meaningless; only "ok" counts.
#
#   bash benchmarks/smoke.sh            # python from .venv/ when there is one
set -u
cd "$(dirname "$0")/.."
P=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
D=${CAMELS_GB_DIR:-../shared/camels_gb}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
export OMP_NUM_THREADS=1 MPLBACKEND=Agg
T="--epochs 1 --samples_per_epoch 64 --hidden 8 --embedding_dim 4"
ok=0
bad=0
run() {
  local name=$1
  shift
  local s
  s=$(date +%s)
  if "$@" >"$W/$name.log" 2>&1; then
    ok=$((ok + 1))
    echo "$name: ok ($(($(date +%s) - s)) s)"
  else
    bad=$((bad + 1))
    echo "$name: FAILED ($(($(date +%s) - s)) s); last lines:"
    tail -n 5 "$W/$name.log"
  fi
}
run pretrain_forecast $P benchmarks/pretrain_quality.py --scenario forecast --seeds 1 $T \
  --data_dir "$D" --output "$W/pq.csv"
run pretrain_zeroshot_ensemble $P benchmarks/pretrain_quality.py --scenario zeroshot --seeds 1 2 \
  --ensemble $T --seq_len 30 --predict_last_n 10 --data_dir "$D" --output "$W/pqe.csv"
run forecast_future $P benchmarks/forecast_quality.py --scenario future --seeds 1 $T --seq_len 20 \
  --pred_len 3 --data_dir "$D" --output "$W/fq"
run forecast_future_ensemble $P benchmarks/forecast_quality.py --scenario future --seeds 1 2 $T \
  --seq_len 20 --pred_len 3 --ensemble --data_dir "$D" --output "$W/fqe"
run forecast_horizon $P benchmarks/forecast_quality.py --scenario horizon --seeds 1 $T \
  --seq_len 20 --pred_len 3 --horizon_weights 1.5,1,0.5 --uniform_table "$W/fq_uniform.csv" \
  --data_dir "$D" --output "$W/fq"
run forecast_baseline $P benchmarks/forecast_quality.py --scenario baseline --seeds 1 $T \
  --data_dir "$D" --output "$W/fqb"
run fine_tune $P benchmarks/fine_tune_quality.py --demo --seeds 1 --seq_len 30 \
  --test_basins 22001,39025 --pretrain_epochs 1 --fine_tune_epochs 2 --set PREDICT_LAST_N=10 \
  --set BATCH_SIZE=256 --fine_tune_set BATCH_SIZE=256 --work_dir "$W/ft" --output "$W/ft.csv"
run fine_tune_ensemble $P benchmarks/fine_tune_quality.py --demo --seeds 1,2 --ensemble \
  --seq_len 30 --test_basins 22001 --pretrain_epochs 1 --fine_tune_epochs 1 \
  --set PREDICT_LAST_N=10 --set BATCH_SIZE=256 --fine_tune_set BATCH_SIZE=256 \
  --work_dir "$W/fte" --output "$W/fte.csv"
run pso $P benchmarks/pso_quality.py --demo --basins 22001 --n_particles 2 --iters 1 \
  --pso_epochs 1 --final_epochs 1 --set TRAIN_START=1985-01-01 --output_dir "$W/pso"
run hyperopt $P benchmarks/hyperopt_quality.py --dry_run --output "$W/hq.csv"
run parallel_finetune $P benchmarks/parallel_finetune.py --demo --epochs 1 --threads 1 \
  --work_dir "$W/par" --output "$W/par.csv"
run memory $P benchmarks/memory.py --seq_len 30 --batch_size 16 --output "$W/memory.csv"
run train_throughput $P benchmarks/train_throughput.py --shape 64,30,32,2,3 \
  --data_path resident stream --device cpu --data_dir "$D" --output "$W/tp.csv"
run scale $P benchmarks/scale.py --n_basins 4 --workers 1 --samples_per_epoch 256 \
  --output "$W/scale.csv"
run gpu_check env OUT="$W/gpu" $P benchmarks/gpu_check.py --dry-run --deadline 240
echo "smoke: $ok ok, $bad failed"
[ "$bad" -eq 0 ]
