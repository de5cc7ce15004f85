#!/usr/bin/env bash
# Resume or finish the training of `world-base` (issue 29), install it into
# src/tunelens/assets/world_base and record its reference evaluation.
#
#   scripts/train_world_base.sh            # resume to the end, then install + evaluate
#   WORLD_BASE_DIR=/elsewhere scripts/train_world_base.sh
#
# The run lives outside the repository (checkpoints are never committed):
# $WORLD_BASE_DIR/work holds checkpoint.safetensors and training_log.jsonl. It is
# trained in 500-step pieces (`tunelens world train-model --until N`); a stopped
# run resumes from its last checkpoint, and a step's batch depends only on
# (seed, step), so the pieces equal one uninterrupted run. If the run that
# started it (run.sh) is still going, this script waits for it instead of
# starting a second writer of the same checkpoint.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
B="${WORLD_BASE_DIR:-/work/train/world-base}"
PY="${PYTHON:-$REPO/.venv/bin/python}"
STEPS=8000 # recipe_for_size("world-base").steps
mkdir -p "$B"

# The code the run started with (a snapshot beside it), else the repository's.
if [ -d "$B/code/tunelens" ]; then
    CODE="$B/code"
else
    CODE="$REPO/src"
fi
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

while pgrep -f "train-model --size world-base --workdir $B/work" >/dev/null; do
    echo "$(date -u +%FT%TZ) a world-base piece is running; waiting"
    sleep 120
done

piece() { # the code, then the step to stop after
    PYTHONPATH="$1" "$PY" -m tunelens world train-model --size world-base \
        --workdir "$B/work" --threads 1 --until "$2"
}
for until in $(seq 500 500 "$STEPS"); do
    # Should the snapshot fail (the export and evaluation after the last step use
    # more of the package than training does), the repository's code goes on.
    piece "$CODE" "$until" || piece "$REPO/src" "$until"
done

# The last piece exported the model (with reference_eval.json) to work/export.
TARGET="$REPO/src/tunelens/assets/world_base"
mkdir -p "$TARGET"
cp "$B/work/export/"{config.json,generation_config.json,model.safetensors,recipe.json} "$TARGET/"
cp "$B/work/export/"{tokenizer.json,tokenizer_config.json,training_log.jsonl} "$TARGET/"
# Re-record the reference evaluation with the repository's code (a test reproduces it).
PYTHONPATH="$REPO/src" "$PY" - "$TARGET" <<'EOF'
import sys
from pathlib import Path

from tunelens.commands.world import record_reference_eval

record_reference_eval(Path(sys.argv[1]), 0)
EOF
echo "reference_eval.json:"
cat "$TARGET/reference_eval.json"
du -sh "$REPO/src/tunelens/assets"

# The fuller evaluation for the issue's closing note (held-out tasks, 20 queries).
TL=(env PYTHONPATH="$REPO/src" "$PY" -m tunelens world eval --model "$TARGET" --no-progress)
"${TL[@]}" --shots 0,1,4,8
"${TL[@]}" --shots 1,4,8 --labels novel
"${TL[@]}" --shots 0 --definition
echo "Now remove world-base from UNSHIPPED in src/tunelens/models/paths.py and add it to"
echo "FAMILY in tests/integration/test_world_model.py; commit the assets (not the checkpoints)."
