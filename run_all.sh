#!/usr/bin/env bash
# discnb: run the numbered notebooks headlessly, or the tests.
#
#   ./run_all.sh [--from NN] [--only NN]                                  the demo notebooks on the shipped models
#                                                                         (weights/demo): no notebook 01/02 training, 00 and 03-07 as
#                                                                         the demo profile runs them (--profile demo --shipped)
#   ./run_all.sh --train                                                  the demo from scratch: trains every model (--profile demo)
#   ./run_all.sh --profile smoke|demo|paper [--shipped] [--from NN] [--only NN]   one profile's notebooks in order
#   ./run_all.sh --profile paper --dry-run [--from NN] [--only NN]      the paper's model sizes and settings, counts
#                                                                         capped (params/dryrun/), stand-in data, CPU
#   ./run_all.sh test [PYTEST ARGS...]                                    unit tests + nbval over notebooks/,
#                                                                         then notebook vs python -m discnb.pipelines.<stage> files
#
# Uses the active virtualenv/conda env when it already has discnb from this checkout; otherwise
# creates .venv here (torch==2.14.1 torchvision==0.29.1, then `pip install -e .[dev]`).
set -euo pipefail
cd "$(dirname "$0")"
REPO=$(pwd)

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

ensure_env() {
    if [ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] && python - "$REPO" <<'PY' 2>/dev/null
import sys, pathlib, discnb, torch, papermill, nbval  # noqa: F401
sys.exit(0 if pathlib.Path(discnb.__file__).resolve().parent.parent == pathlib.Path(sys.argv[1]).resolve() else 1)
PY
    then
        PY=python
        return
    fi
    if [ ! -x .venv/bin/python ]; then
        echo "[run_all] creating .venv (first run: installing torch and the rest takes a few minutes)"
        python3 -m venv .venv
    fi
    PY="$REPO/.venv/bin/python"
    local want have
    want=$(cat pyproject.toml | sha1sum | cut -c1-16)
    have=$(cat .venv/.discnb-installed 2>/dev/null || true)
    if [ "$want" != "$have" ]; then
        echo "[run_all] installing dependencies into .venv (log: .venv/install.log)"
        {
            "$PY" -m pip install --upgrade pip
            "$PY" -m pip install torch==2.14.1 torchvision==0.29.1
            "$PY" -m pip install -e ".[dev]"
        } > .venv/install.log 2>&1 || { echo "[run_all] pip install failed; see .venv/install.log" >&2; tail -20 .venv/install.log >&2; exit 1; }
        echo "$want" > .venv/.discnb-installed
    fi
    export PATH="$REPO/.venv/bin:$PATH"
}

if [ "${1:-}" = "test" ]; then
    shift
    ensure_env
    export MPLBACKEND=Agg PYTHONHASHSEED=0 OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
    # tests/test_stage_files.py runs last (conftest.py): it compares the notebooks' outputs with the modules'
    exec "$PY" -m pytest tests notebooks --nbval-lax --nbval-current-env --nbval-cell-timeout=1800 --durations=15 "$@"
fi

PROFILE="" FROM="" ONLY="" DRY=0 SHIPPED=0 TRAIN=0
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) PROFILE=${2:?--profile needs smoke, demo or paper}; shift 2 ;;
        --from) FROM=${2:?--from needs a notebook number, e.g. 01}; shift 2 ;;
        --only) ONLY=${2:?--only needs a notebook number, e.g. 00}; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        --shipped) SHIPPED=1; shift ;;
        --train) TRAIN=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "unknown option $1" >&2; usage 2 ;;
    esac
done
if [ "$TRAIN" = 1 ] && [ "$SHIPPED" = 1 ]; then echo "--train and --shipped exclude each other" >&2; exit 2; fi
if [ -z "$PROFILE" ]; then
    # the default: the demo on the shipped models; --train makes them again
    PROFILE=demo
    [ "$TRAIN" = 1 ] || [ "$DRY" = 1 ] || SHIPPED=1
fi
case "$PROFILE" in smoke|demo|paper) ;; *) echo "--profile must be smoke, demo or paper, got '$PROFILE'" >&2; exit 2 ;; esac

ensure_env
export MPLBACKEND=Agg PYTHONHASHSEED=0 OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
if [ "$DRY" = 1 ]; then
    [ "$PROFILE" = paper ] || { echo "--dry-run is the paper profile's: use --profile paper --dry-run" >&2; exit 2; }
    exec "$PY" -m discnb.pipelines.dryrun --only "$ONLY" --from "$FROM"
fi
EXEC="outputs/executed/$PROFILE"
mkdir -p "$EXEC"
if [ "$SHIPPED" = 1 ]; then
    # before notebook 00's minutes: are the shipped models there, intact and of this code? (the data is checked
    # again at restore, once notebook 00 has made it)
    "$PY" -m discnb.grading.shipped check --profile "$PROFILE" --no-data || exit 1
fi

ran=0 restored=0
for nb in notebooks/[0-9][0-9]_*.ipynb; do
    name=$(basename "$nb" .ipynb)
    num=${name:0:2}
    if [ -n "$ONLY" ] && [ "$num" != "$ONLY" ]; then continue; fi
    if [ -n "$FROM" ] && [ "$num" \< "$FROM" ]; then continue; fi
    args=(-p profile "$PROFILE")
    pfile="params/$PROFILE/$name.yaml"
    if [ "$PROFILE" != smoke ]; then
        [ -f "$pfile" ] || { echo "[run_all] missing $pfile for profile $PROFILE" >&2; exit 2; }
        "$PY" -m discnb.core.params check "$name" "$pfile"
        args=(-f "$pfile" "${args[@]}")
    fi
    if [ "$SHIPPED" = 1 ]; then
        case "$num" in 01|02) echo "[run_all] $name: skipped (--shipped: its models come from weights/$PROFILE)"; continue ;; esac
        if [ "$num" != 00 ] && [ "$restored" = 0 ]; then
            echo "[run_all] $(date +%H:%M:%S) restoring the shipped models (python -m discnb.grading.shipped restore)"
            "$PY" -m discnb.grading.shipped restore --profile "$PROFILE" || exit 1
            restored=1
        fi
        [ "$num" = 07 ] && args+=(-p export False)
    fi
    out="$EXEC/$name.ipynb"
    echo "[run_all] $(date +%H:%M:%S) $name (profile $PROFILE) -> $out, log $EXEC/$name.log"
    start=$(date +%s)
    if ! "$PY" -m papermill -k python3 --cwd . --log-output --no-progress-bar "$nb" "$out" "${args[@]}" \
            > "$EXEC/$name.log" 2>&1; then
        echo "[run_all] FAILED: $name; executed copy: $out; log: $EXEC/$name.log" >&2
        if [ -f "$out" ]; then "$PY" -m discnb.core.notebook failed "$out" >&2 || true; else tail -20 "$EXEC/$name.log" >&2; fi
        exit 1
    fi
    echo "[run_all] $name done in $(( $(date +%s) - start )) s"
    ran=$((ran + 1))
done
[ "$ran" -gt 0 ] || { echo "[run_all] no notebook matched (--from '$FROM' --only '$ONLY')" >&2; exit 2; }
case "$PROFILE" in demo) figs=figures ;; paper) figs=figures/paper ;; *) figs=figures/smoke ;; esac
echo "[run_all] ran $ran notebook(s); executed copies in $EXEC/, figures in $figs/"
