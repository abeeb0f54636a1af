#!/usr/bin/env bash
# The script for a GPU session (prepared for an H200 with 16 cores and 15 minutes of device time,
# one call; not run yet: the session it was written in was lent no machine): the CUDA lines of
# bench/train.py and bench/cv.py, then a cv at the paper's 30 % pitch on CUDA of a phantom cohort
# streamed into the cache (each study generated, preprocessed at both CRs and dropped: the disk
# holds the cache, about 13 MB per full-size study at two CRs, never 70 MB of DICOM per study, so
# the run is bounded by time, not disk), then the same cohort at 512 and 256 while time is left
# (its crops reused from the cache, no study generated again). Tried end to end on the CPU
# (DEVICE=cpu, 20 studies, 2 epochs, 3 folds) in an environment made of the GPU image's packages.
# Run from the repository root; the carried wheels (.whl) supply what the machine's image lacks.
# Everything a step finishes is copied to $OUT before the next starts, so a step cut short by the
# deadline loses only itself.
#
#   OUT=/tmp/out STUDIES=300 DEADLINE=540 bash docs/experiments/gpu/run.sh
#
# The wheels (the image has torch, numpy, scipy, scikit-learn, matplotlib, typer, rich, pyyaml,
# safetensors; Python 3.12), made where pip reaches an index, in .git/info/exclude's /.whl/:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
#     -d .whl pydicom==3.0.2 pynetdicom==3.0.4 pylibjpeg==2.1.0 pylibjpeg-openjpeg==2.6.0 \
#     pylibjpeg-libjpeg==2.4.0 pyjpegls==1.5.1 highdicom==0.28.2 captum==0.9.0 \
#     pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
#     typing-extensions==4.16.0
set -u
START=$(date +%s)
DEADLINE=${DEADLINE:-540}    # seconds for the whole script
STUDIES=${STUDIES:-300}
SIZE=${SIZE:-full}
EXTRA=${EXTRA:-}             # extra cv options (a smoke test passes --epochs 2 --folds 3)
DEVICE=${DEVICE:-cuda}       # a smoke test on a machine without a GPU passes cpu
BENCH=${BENCH:-1}
WHL=${WHL:-.whl}             # wheels of what the machine's image lacks
OUT=${OUT:?OUT must name a folder}
left() { echo $((DEADLINE - ($(date +%s) - START))); }
log() { echo "[$(($(date +%s) - START)) s] $*"; }

if [ -d "$WHL" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$WHL"/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
python3 -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__,
'cuda', torch.cuda.is_available(), torch.get_num_threads(), 'threads')" || exit 1

# the roomiest of /tmp, $HOME and here; a streamed full-size study leaves 13 MB in the cache at
# the paper's pitch and two CRs (bench/phantom_disk.py), about 3 MB more for the runs at 512 and
# 256: 20 MB with room
read -r AVAIL MOUNT < <(df --output=avail,target /tmp "$HOME" "$PWD" | tail -n +2 | sort -n |
                        tail -1)
EXP=${MOUNT%/}/dicomcr-gpu
mkdir -p "$EXP"
FITS=$(((AVAIL / 1000000 - 8) * 1000 / 20))
[ "$FITS" -lt "$STUDIES" ] && STUDIES=$FITS
DATA="phantom:studies=$STUDIES,seed=2026,size=$SIZE"  # streamed into $EXP/cache, never written
log "working in $EXP: $((AVAIL / 1000000)) GB free, $STUDIES studies"

if [ "$BENCH" = 1 ]; then
    log "bench/train.py"
    timeout 150 python3 bench/train.py --samples 128
    log "bench/cv.py"
    timeout 150 python3 bench/cv.py
fi

pack() {  # one results folder as one file under $OUT (model files stay behind: too large)
    tar czf "$OUT/$1.tgz" --exclude='*.dcmcr' -C "$EXP" "$1" 2>/dev/null
    log "packed $1: $(du -h "$OUT/$1.tgz" | cut -f1)"
}

for size in paper 512 256; do
    if [ "$(left)" -lt 60 ]; then log "no time left for $size"; break; fi
    opts=(); [ "$size" != paper ] && opts=(--input-size "$size")
    log "cv at $size, CR 1 and 11000, --cross, $DEVICE, on $DATA"
    timeout "$(($(left) - 15))" python3 -m dicomcr cv "$DATA" --cache "$EXP/cache" --cr 1 \
        --cr 11000 --cross --device "$DEVICE" "${opts[@]}" $EXTRA --out "$EXP/cnn3-$size"
    log "cv at $size: exit $?"
    cp "$EXP"/cache/phantom-*/labels.csv "$OUT/labels.csv" 2>/dev/null
    du -sh "$EXP/cache"
    pack "cnn3-$size"
done
log "done"
