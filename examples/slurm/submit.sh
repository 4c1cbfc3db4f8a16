#!/usr/bin/env bash
# Submit a udaseg pipeline to SLURM: one job per stage, each waiting (--dependency=afterok) for the
# stages whose artifacts it reads.
#
#   examples/slurm/submit.sh PIPELINE [udaseg run options]
#   WORK=/scratch/me/w RAW=~/data/MMWHS examples/slurm/submit.sh sifa-mmwhs --var src=ct --var tgt=mr
#   GPUS=2 DRY=1 RAW=~/data/abdominal examples/slurm/submit.sh darunet-abdominal  # print only
#
# The commands are exactly those `udaseg run PIPELINE --work W --dry-run` prints (one stage's:
# `--only NAME`); each becomes the job of its kind, with the scripts beside this one:
#   preprocess            array of SHARDS tasks (--shard i/n), then a --merge-shards job
#   translate train       one GPU (a translator trains in one process)
#   cluster-styles        one GPU
#   translate apply       array of SHARDS tasks when only segment-train reads the store (each
#                         shard is a complete store: passed as several --translated), else one job
#   segment-train, adapt  torchrun on GPUS GPUs of one node; --set batch_size is per process,
#                         so the pipeline's batch (or the model's default) is divided by GPUS to
#                         keep the paper's batch per step (refused when it does not divide;
#                         PER_GPU_BATCH=1 keeps the batch per GPU instead, GPUS times larger)
#   predict               array of PRED_SHARDS tasks, then a --merge-shards job
#   pseudo-label          one GPU
#   evaluate              CPU job
# Independent branches (the bounds, each method) run side by side. Every stage skips an artifact
# that is complete and current, so after a failure, fix it and submit again: only what is
# missing or stale runs. A training job that hit its time limit continues by itself when
# submitted again with the same settings (GPUS and PER_GPU_BATCH included): it picks up its
# <run>.partial/ folder at its last checkpoint_latest.pt (at most --checkpoint-every steps are
# redone, and the result is the same as an uninterrupted run); a run started with other options
# or inputs starts over. Logs: $WORK/slurm/<kind>:<name>-<job>[_<task>].out.
set -euo pipefail

# ---- settings (edit, or set in the environment) -----------------------------------------------
WORK=${WORK:-/scratch/$USER/udaseg}      # workspace on a filesystem that every node sees
RAW=${RAW:-$HOME/data/MMWHS}             # the downloaded dataset: the pipeline's `raw` variable
GPUS=${GPUS:-4}                          # GPUs (torchrun processes) per segment-train / adapt job
PER_GPU_BATCH=${PER_GPU_BATCH:-0}        # 1: each GPU takes the pipeline's whole batch (GPUS x)
SHARDS=${SHARDS:-8}                      # array tasks of preprocess and translate apply
PRED_SHARDS=${PRED_SHARDS:-4}            # array tasks of predict: at most the cases predicted
read -r -a EXTRA <<<"${SBATCH_EXTRA:-}"  # more sbatch options, e.g. "--account=x --partition=gpu"
export UDASEG_VENV=${UDASEG_VENV:-$PWD/.venv}  # the environment every job activates
DRY=${DRY:-0}                            # 1: print what would be submitted
# -------------------------------------------------------------------------------------------------

PIPELINE=${1:?usage: submit.sh PIPELINE [udaseg run options, e.g. --preset cpu-small --var src=ct]}
shift
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ ! -d $RAW || ! -r $RAW || ! -x $RAW ]]; then
  echo "RAW=$RAW is not a readable folder: set RAW to the downloaded dataset" >&2
  exit 2
fi
if ! [[ $GPUS =~ ^[1-9][0-9]*$ ]]; then
  echo "GPUS=$GPUS must be a whole number of at least 1" >&2
  exit 2
fi
if [[ -f "$UDASEG_VENV/bin/activate" ]]; then source "$UDASEG_VENV/bin/activate"; fi
plan=$(udaseg run "$PIPELINE" --work "$WORK" --var "raw=$RAW" "$@" --dry-run)
mapfile -t lines <<<"$plan"
[[ $DRY == 1 ]] || mkdir -p "$WORK/slurm"

value() {  # value OPTION ARG...: the value given to OPTION (empty if absent)
  local option=$1 found=
  shift
  while (($# > 1)); do
    [[ $1 == "$option" ]] && found=$2
    shift
  done
  printf '%s' "$found"
}

only_translated() {  # only_translated STORE FIRST: do stages FIRST.. read STORE only via --translated?
  local store=$1 k previous arg
  for ((k = $2; k < ${#lines[@]}; k++)); do
    eval "local -a later=(${lines[k]})"
    previous=
    for arg in "${later[@]}"; do
      [[ $arg == "$store" && $previous != --translated ]] && return 1
      previous=$arg
    done
  done
  return 0
}

gpu_batch() {  # gpu_batch LABEL KIND ARG...: prints the batch per GPU (nothing: keep the line's)
  local label=$1 kind=$2
  shift 2
  ((GPUS > 1)) && [[ $PER_GPU_BATCH != 1 ]] || return 0
  local batch= previous= arg
  for arg in "$@"; do
    [[ $previous == --set && $arg == batch_size=* ]] && batch=${arg#batch_size=}
    previous=$arg
  done
  if [[ -z $batch ]]; then  # the model's or method's default, as the stage resolves it
    batch=$(udaseg $kind "$@" --show-defaults --json |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["hparams"]["batch_size"])') || {
      echo "$label: cannot read its default batch size; add --set batch_size=N to it" >&2
      return 2
    }
  fi
  if ! [[ $batch =~ ^[0-9]+$ ]] || ((batch % GPUS)); then
    echo "$label: its batch of $batch does not divide over GPUS=$GPUS: choose GPUS dividing" \
      "it, or set PER_GPU_BATCH=1 to give each GPU the whole batch ($GPUS times larger)" >&2
    return 2
  fi
  echo $((batch / GPUS))
}

set_batch() {  # set_batch N: the job's args with --set batch_size=N (none given: unchanged)
  [[ -n $1 ]] || return 0
  local a found=0
  for ((a = 1; a < ${#args[@]}; a++)); do
    if [[ ${args[a - 1]} == --set && ${args[a]} == batch_size=* ]]; then
      args[a]="batch_size=$1" found=1
    fi
  done
  ((found)) || args+=(--set "batch_size=$1")
}

# every torchrun job's batch is settled before anything is submitted
declare -a per_batch=()
for i in "${!lines[@]}"; do
  eval "cmd=(${lines[i]})"
  if [[ ${cmd[1]} == segment-train || ${cmd[1]} == adapt ]]; then
    label="${cmd[1]}:$(value --name "${cmd[@]:2}")"
    per_batch[i]=$(gpu_batch "$label" "${cmd[1]}" "${cmd[@]:2}") || exit 2
  fi
done

fake=0
submit() {  # submit AFTER SBATCH-OPTION... SCRIPT ARG...: sets JOB to the new job's id
  local after=$1
  shift
  local log="$WORK/slurm/%x-%j.out"
  [[ " $* " == *" --array="* ]] && log="$WORK/slurm/%x-%A_%a.out"
  local -a options=(--parsable --output="$log" ${EXTRA[@]+"${EXTRA[@]}"})
  [[ -n $after ]] && options+=(--dependency="afterok:$after")
  if [[ $DRY == 1 ]]; then
    JOB=dry$((++fake))
    printf '%s=$(' "$JOB"
    printf '%q ' sbatch "${options[@]}" "$@"
    printf ')\n'
  else
    JOB=$(sbatch "${options[@]}" "$@")
    local arg
    for arg in "$@"; do [[ $arg == --job-name=* ]] && echo "$JOB ${arg#--job-name=}"; done
    [[ -n $after ]] && echo "    after $after"
  fi
  return 0
}

declare -a writes=() waits=()   # per stage: the artifact it writes, the job that finishes it
declare -A shard_count=()       # translated store -> number of shard stores
for i in "${!lines[@]}"; do
  eval "cmd=(${lines[i]})"      # the commands are shell-quoted
  if [[ ${cmd[1]} == translate ]]; then
    kind="translate ${cmd[2]}" args=("${cmd[@]:3}")
  else
    kind=${cmd[1]} args=("${cmd[@]:2}")
  fi
  name=$(value --name "${args[@]}")
  case $kind in
    preprocess) writes[i]=$WORK/preprocessed/ ;;
    "translate train") writes[i]=$WORK/translate/$name ;;
    cluster-styles) writes[i]=$WORK/styles/$name ;;
    "translate apply") writes[i]=$WORK/translated/$name ;;
    segment-train) writes[i]=$WORK/segment/$name ;;
    adapt) writes[i]=$WORK/adapt/$name ;;
    predict) writes[i]=$WORK/predict/$name ;;
    pseudo-label) writes[i]=$WORK/pseudo/$name ;;
    evaluate) writes[i]=$WORK/evaluate/$name ;;
    *) echo "stage $((i + 1)): no SLURM job for 'udaseg $kind'; run it before submitting" >&2
       exit 2 ;;
  esac
  if [[ $kind != preprocess && -z $name ]]; then
    echo "stage $((i + 1)) ($kind) has no --name, so its artifact cannot be found" >&2
    exit 2
  fi

  # wait for every earlier stage whose artifact this one reads
  after=
  for ((j = 0; j < i; j++)); do
    for arg in "${args[@]}"; do
      if [[ $arg == "${writes[j]}" || $arg == "${writes[j]%/}"/* ]]; then
        after+=${after:+:}${waits[j]}
        break
      fi
    done
  done
  # a sharded translated store is read as all of its shard stores
  expanded=()
  for ((a = 0; a < ${#args[@]}; a++)); do
    store=${args[a + 1]:-}
    if [[ ${args[a]} == --translated && -n ${shard_count[$store]:-} ]]; then
      for ((s = 0; s < shard_count[$store]; s++)); do
        expanded+=(--translated "${store}__shard-$s-of-${shard_count[$store]}")
      done
      ((a += 1))
    else
      expanded+=("${args[a]}")
    fi
  done
  args=("${expanded[@]}")

  label="${kind/ /-}:${name:-${args[0]}}"
  case $kind in
    preprocess)
      submit "$after" --job-name="$label" --array="0-$((SHARDS - 1))" \
        "$here/preprocess.sbatch" "${args[@]}"
      submit "$JOB" --job-name="$label-merge" "$here/merge.sbatch" preprocess "${args[@]}" ;;
    "translate train")
      submit "$after" --job-name="$label" "$here/translate-train.sbatch" "${args[@]}" ;;
    cluster-styles)
      submit "$after" --job-name="$label" "$here/cluster-styles.sbatch" "${args[@]}" ;;
    "translate apply")
      if only_translated "${writes[i]}" $((i + 1)); then
        submit "$after" --job-name="$label" --array="0-$((SHARDS - 1))" \
          "$here/translate-apply.sbatch" "${args[@]}"
        shard_count[${writes[i]}]=$SHARDS
      else
        submit "$after" --job-name="$label" "$here/translate-apply.sbatch" "${args[@]}"
      fi ;;
    segment-train | adapt)
      set_batch "${per_batch[i]:-}"
      submit "$after" --job-name="$label" --gres="gpu:$GPUS" "$here/$kind.sbatch" "${args[@]}" ;;
    predict)
      submit "$after" --job-name="$label" --array="0-$((PRED_SHARDS - 1))" \
        "$here/predict.sbatch" "${args[@]}"
      submit "$JOB" --job-name="$label-merge" "$here/merge.sbatch" predict "${args[@]}" ;;
    pseudo-label)
      submit "$after" --job-name="$label" "$here/pseudo-label.sbatch" "${args[@]}" ;;
    evaluate)
      submit "$after" --job-name="$label" "$here/evaluate.sbatch" "${args[@]}" ;;
  esac
  waits[i]=$JOB
done
echo "$([[ $DRY == 1 ]] && echo would submit || echo submitted) the ${#lines[@]} stages of $PIPELINE." \
  "Each score is in $WORK/evaluate/<name>/table.md;" >&2
echo "the comparison table, once the evaluate jobs are done (they are then up to date and only" >&2
echo "report): udaseg run $PIPELINE --work $WORK --var raw=$RAW $* --only <its evaluate stages>" >&2
