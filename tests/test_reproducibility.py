"""The same fit gives the same bits in a process that compiles the kernels and in one that
loads them from Numba's on-disk cache."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

# Fits whose iterations run both Gaussian kernels: 'diag' at d = 3 the per-component one,
# 'full' with 6 components the expanded one; k-means initializes both.
_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import fastem
    rng = np.random.default_rng(0)
    X = np.r_[rng.normal(size=(1500, 3)), rng.normal(size=(1500, 3)) + 4.0] * 3.0
    out = {}
    for cov, k in (("diag", 3), ("full", 6)):
        gm = fastem.GaussianMixture(k, covariance_type=cov, max_iter=4, tol=0, random_state=0)
        gm.fit(X)
        out[cov] = [float(v).hex() for v in
                    np.r_[gm.weights_, gm.means_.ravel(), gm.covariances_.ravel(),
                          gm.lower_bounds_]]
    json.dump(out, sys.stdout)
""")


@pytest.mark.filterwarnings("ignore")
def test_compiling_and_cached_runs_agree_to_the_bit(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), FASTEM_NUMBA_CACHE="1",
               PYTHONWARNINGS="ignore")

    def run():
        done = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True,
                              text=True, check=True, timeout=600)
        return json.loads(done.stdout)

    compiled = run()  # empty cache: every kernel is compiled in this process
    assert any(tmp_path.rglob("*.nbi")), "the first run left no cached kernel"
    cached = run()  # the kernels are loaded from the cache
    assert cached == compiled
