"""The DAG under kfp.local with fan_out_folds=True: plan_folds → one train_fold task per fold (a
nested ParallelFor) → finalize (dsl.Collected of the folds' predictions) → evaluate → register."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from emoflow.registry import Registry
from emoflow.storage import open_store

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

DRIVER = """
import json, sys
from kfp import local
sys.path.insert(0, sys.argv[1])
from pipelines import training
home = sys.argv[2]
local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=home + "/pipeline_root", raise_on_error=True)
run = training.build_pipeline(cluster=False)(
    corpus="demo", epochs=1, store=home + "/store", deploy_target="none", fan_out_folds=True,
    ingest_options={"demo": {"sessions": 3, "speakers_per_session": 1, "utterances_per_speaker": 8}})
print("REGISTRATION " + json.dumps(run.output if hasattr(run, "output") else run))
"""


def test_fold_fan_out_runs_end_to_end_locally(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "assets").symlink_to(Path(os.environ["EMOFLOW_HOME"]) / "assets")
    env = dict(os.environ, EMOFLOW_HOME=str(home), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("EMOFLOW_STORE", None)
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(REPO), str(home)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    out = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)
    assert proc.returncode == 0, out[-6000:]
    finished = re.findall(r"Task '([\w-]+)' finished with status SUCCESS", out)
    for step in ("ingest", "transcribe", "fingerprint", "features", "plan-folds", "finalize", "evaluate-2",
                 "register-2"):
        assert finished.count(step) == 1, (step, finished)
    # one task per fold (kfp.local does not always log SUCCESS for each parallel iteration)
    assert len(re.findall(r"Executing task 'train-fold'", out)) == 3
    assert "FAILURE" not in out
    assert "train" not in finished and "register" not in finished  # the one-task path was skipped
    trained = sorted(set(re.findall(r"a1 (fold\d-S\d): test UA", out)))
    assert trained == ["fold1-S1", "fold2-S2", "fold3-S3"]

    registration = json.loads(out.split("REGISTRATION ", 1)[1].splitlines()[0])
    assert (registration["version"], registration["winner"], registration["promoted"]) == ("v1", "a1", True)
    assert set(registration["results"]["a1"]["folds"]) == {"fold1-S1", "fold2-S2", "fold3-S3"}
    registry = Registry(open_store(str(home / "store")))
    assert registry.resolve("emoflow@production") == ("emoflow", "v1")
    files = set(registry.manifest("emoflow", "v1")["files"])
    assert {"model/model.safetensors", "model/feature_config.json", "evaluation/evaluation.json"} <= files
    local = registry.download("emoflow@production", tmp_path / "model")
    evaluation = json.loads((local / "evaluation" / "evaluation.json").read_text())
    assert set(evaluation["metrics"]["folds"]) == {"fold1-S1", "fold2-S2", "fold3-S3"}
    # the final model was fitted for the median of the folds' best epochs
    from emoflow.models import load_model

    assert load_model(local / "model").labels == evaluation["labels"]
