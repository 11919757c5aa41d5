"""What the README tells a new user to type works: the memorization gate, the run.toml example's model, the
not-found message that lists models, and the documented `train --preset` default."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from meddiff_cli.errors import ExitCode, error_document
from meddiff_cli.model.registry import model_names
from meddiff_cli.train.options import TrainOptions

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_memorization_gate_one_liner_handles_no_train_and_failures():
    """The README's `evaluate --json | python -c ...` gate: exit 0 only for a successful run without flags."""
    line = next(line for line in README.splitlines() if line.startswith("meddiff evaluate") and "python -c" in line)
    code = re.search(r"python -c '(.+)'$", line).group(1)
    documents = {
        0: [{"memorization": None, "verdict": {}}, {"memorization": {"flagged": []}}],  # no --train / none flagged
        1: [{"memorization": {"flagged": [{"synthetic": "a", "nearest_train": "b"}]}},
            error_document(ExitCode.NO_INPUT, "no volumes found", "real/")],  # flagged / evaluate itself failed
    }
    for expected, cases in documents.items():
        for document in cases:
            done = subprocess.run([sys.executable, "-c", code], input=json.dumps(document), capture_output=True,
                                  text=True, timeout=60)
            assert done.returncode == expected and done.stderr == "", (document, done.stderr)


def test_config_examples_name_a_model_that_exists(isolated_cache):
    named = set(re.findall(r'model = "([^"]+)"', README + (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")))
    assert named and named <= set(model_names(isolated_cache))


def test_model_not_found_lists_the_available_models(run_meddiff, tmp_path):
    code, _, err = run_meddiff("sample", "--modality", "ct", "--count", "1", "--out", tmp_path / "o",
                               "--model", "chest-ct")
    assert code == ExitCode.MODEL and "(available: default)" in " ".join(err.split())


def test_train_defaults_to_the_cpu_preset_not_the_test_one(run_meddiff):
    assert TrainOptions([], "x").preset == "compact"
    code, out, _ = run_meddiff("config", "show", "train", "--json")
    assert code == 0 and json.loads(out)["commands"]["train"]["preset"]["value"] == "compact"
