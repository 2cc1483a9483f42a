"""Helper for tests/integration/test_large_evaluations.py: evaluates with a state file, or dies.

    python tests/integration/evaluation_resume_script.py MODEL.keras DATA.npz STATE REPORT.json [KILL_AFTER]

With KILL_AFTER, the process sends itself SIGKILL once KILL_AFTER batches are in the state
file (a kill from outside at that moment); without it, it runs to the end and writes the report.
"""

import json
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_bidir as kb  # noqa: E402
from keras_bidir.evaluation import state as state_lib  # noqa: E402

SETTINGS = {"epsilons": [0.1, 0.2], "clip_min": 0.0, "clip_max": 1.0, "batch_size": 32,
            "suite": "fast", "checks": False, "verbose": 0}


def main(model_path, data_path, state_path, report_path, kill_after=None):
    model = keras.models.load_model(model_path)
    with np.load(data_path) as data:
        x, y = data["x"], data["y"]
    if kill_after is not None:
        put = state_lib.EvaluationState.put

        def put_then_die(self, key, scores):
            put(self, key, scores)
            if len(self.entries) >= int(kill_after):
                os.kill(os.getpid(), signal.SIGKILL)

        state_lib.EvaluationState.put = put_then_die
    report = kb.evaluate_robustness(model, (x, y), state=state_path, **SETTINGS)
    with open(report_path, "w") as handle:
        json.dump(report.to_dict(), handle)


if __name__ == "__main__":
    main(*sys.argv[1:])
