"""Evidently's embedding drift on window pairs, for ``bench/drift/run.py``; runs in a Python of its own that has
evidently (``evidently_worker.py PAIRS.npz N OUT.json``).

It applies what ``EmbeddingsDriftMetric`` applies when no method is given: ``model(bootstrap=<reference rows> <
1000)``, a domain classifier between the windows whose ROC AUC is compared with a threshold or, for small
references, with the 95th percentile of random predictions' ROC AUC (see
``evidently/legacy/metrics/data_drift/embeddings_drift.py``). Calling the method directly skips only the report's
visualisation. Beside it, Evidently's own MMD method as ``mmd()`` defaults it (drift when MMD² > 0.015), for
comparison.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
from evidently.legacy.metrics.data_drift.embedding_drift_methods import mmd, model


def main(pairs_path: str, count: str, out_path: str) -> None:
    pairs = np.load(pairs_path)
    verdicts = []
    for i in range(int(count)):
        reference, current = pd.DataFrame(pairs[f"ref{i}"]), pd.DataFrame(pairs[f"cur{i}"])
        score, detected, _ = model(bootstrap=reference.shape[0] < 1000)(current.copy(), reference.copy())
        mmd2, mmd_detected, _ = mmd()(current.copy(), reference.copy())
        verdicts.append({"score": float(score), "drift": bool(detected), "mmd2": float(mmd2),
                         "mmdDrift": bool(mmd_detected)})
    with open(out_path, "w") as out:
        json.dump(verdicts, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
