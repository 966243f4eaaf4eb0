#!/usr/bin/env bash
# Test SICOG inside the real evaluation frameworks: install VLMEvalKit and lmms-eval from source checkouts
# into a throwaway virtual environment beside SICOG, then run the tests that drive them
# (tests/test_eval_vlmevalkit_real.py, tests/test_eval_lmms_real.py,
# tests/test_eval_suite_lmms_real.py). CI does not run this: the frameworks
# pull in several GiB of packages. Without them installed those tests skip.
#
#   git clone https://github.com/open-compass/VLMEvalKit ../VLMEvalKit
#   git clone https://github.com/EvolvingLMMs-Lab/lmms-eval ../lmms-eval
#   bash tests/frameworks/setup.sh ../VLMEvalKit ../lmms-eval [VENV]     # VENV default: .venv-frameworks
#
# The frameworks are installed with --no-deps plus the packages they import on the paths SICOG uses (their
# full requirement lists hold every benchmark's and every model's dependencies). torchvision comes with the
# torch build it was made for, since VLMEvalKit imports it everywhere. lmms-eval 0.7 needs filelock 3
# (it patches filelock._api, gone in filelock 4), which pip reports as a conflict with SICOG's filelock>=4.3:
# SICOG's output locks work with both, and nothing here relies on taking over a stale lock.
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: bash tests/frameworks/setup.sh VLMEVALKIT_DIR LMMS_EVAL_DIR [VENV]" >&2
    exit 2
fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VLMEVALKIT="$(cd "$1" && pwd)"
LMMS_EVAL="$(cd "$2" && pwd)"
VENV="${3:-$REPO/.venv-frameworks}"
for dir in "$VLMEVALKIT/run.py" "$VLMEVALKIT/vlmeval" "$LMMS_EVAL/lmms_eval"; do
    [ -e "$dir" ] || { echo "setup.sh: $dir not found: give a VLMEvalKit and an lmms-eval checkout" >&2; exit 2; }
done

VLMEVALKIT_IMPORTS=(pandas tabulate termcolor requests validators sty portalocker datasets timeout-decorator
    levenshtein decord jieba nltk rouge rouge-score math-verify pylatexenc opencv-python-headless imageio
    json-repair num2words qwen-vl-utils xlsxwriter)
LMMS_EVAL_IMPORTS=(loguru sacrebleu evaluate pytz tenacity pytablewriter)

set -x
python3 -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet)
"${PIP[@]}" --upgrade pip
"${PIP[@]}" torchvision
"${PIP[@]}" -e "$REPO[dev]"
"${PIP[@]}" --no-deps -e "$VLMEVALKIT" -e "$LMMS_EVAL"
"${PIP[@]}" "${VLMEVALKIT_IMPORTS[@]}" "${LMMS_EVAL_IMPORTS[@]}"
"${PIP[@]}" "filelock<4"  # pip reports the conflict with SICOG's pin (see above) and installs it
"$VENV/bin/python" -c "import vlmeval.config, vlmeval.dataset, lmms_eval.evaluator, lmms_eval.tasks"
cd "$REPO"
"$VENV/bin/python" -m pytest -q -rs tests/test_eval_vlmevalkit_real.py tests/test_eval_lmms_real.py tests/test_eval_suite_lmms_real.py
