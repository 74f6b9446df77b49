"""Progress bars (``progress=True``): every pass reports each of its rows once, the stages and
bound shown are the fit's own, and no result changes by a bit. Fits of a fixed ``max_iter``
warn ``ConvergenceWarning`` by design (the ``ignore_convergence`` mark)."""

import sys

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import fastem
import fastem.data
from fastem import _progress
from fastem.data import StreamSource

ignore_convergence = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning")


class RecordingBar:
    """Stands in for tqdm: records what the model asks of its bar."""

    made = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.passes = []  # [total, rows counted so far, stage] per pass
        self.chunks = []  # chunks reported, per pass
        self.description = kwargs.get("desc")
        self.postfix = ""
        self.lines = []
        self.closed = False
        RecordingBar.made.append(self)

    def set_description(self, text, refresh=True):
        self.description = text

    def set_postfix_str(self, text, refresh=True):
        self.postfix = text

    def reset(self, total=None):
        self.passes.append([total, 0, self.description])
        self.chunks.append(0)

    def update(self, n):
        self.passes[-1][1] += n
        self.chunks[-1] += 1

    def write(self, line):
        self.lines.append(line)

    def close(self):
        self.closed = True


@pytest.fixture
def recording(monkeypatch):
    RecordingBar.made = []
    monkeypatch.setattr(_progress, "_tqdm", lambda: RecordingBar)
    return RecordingBar.made


@pytest.fixture
def small_chunks(monkeypatch):
    """Default chunks of 1024 rows, so that an in-memory array is read in several."""
    monkeypatch.setattr(fastem.data, "DEFAULT_CHUNK_BYTES", 1)


def _fit(X, **kwargs):
    return fastem.GaussianMixture(3, random_state=0, **kwargs).fit(X)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
@pytest.mark.parametrize("on_disk", [False, True])
def test_progress_changes_no_bit(blobs, tmp_path, recording, small_chunks, covariance_type,
                                 on_disk):
    X = blobs(5000, 3, 2)[0]
    if on_disk:
        np.save(tmp_path / "X.npy", X)
        X = np.load(tmp_path / "X.npy", mmap_mode="r")
    quiet = _fit(X, covariance_type=covariance_type)
    shown = _fit(X, covariance_type=covariance_type, progress=True)
    # Each pass in chunks of 1024 rows, which in memory a pass without a bar takes whole.
    assert all(p[1] == 5000 for p in recording[0].passes)
    assert len(recording[0].passes) > shown.n_iter_
    assert set(recording[0].chunks) == {5}
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert_array_equal(getattr(shown, name), getattr(quiet, name))
    assert shown.lower_bounds_ == quiet.lower_bounds_
    assert_array_equal(shown.predict_proba(X), quiet.predict_proba(X))
    assert_array_equal(shown.score_samples(X), quiet.score_samples(X))
    assert shown.score(X) == quiet.score(X)


@ignore_convergence
def test_each_pass_reports_its_rows_and_stage(blobs, recording, small_chunks):
    X = blobs(3000, 3, 2)[0]
    gm = _fit(X, n_init=2, max_iter=4, tol=0.0, progress=True)
    assert len(recording) == 1
    bar = recording[0]
    assert bar.closed
    assert all(total == 3000 and rows == 3000 for total, rows, _ in bar.passes)
    stages = [stage for _, _, stage in bar.passes]
    for init in (1, 2):
        em = [s for s in stages if s.startswith(f"fit: init {init}/2, EM iteration")]
        assert em == [f"fit: init {init}/2, EM iteration {i}" for i in range(1, 5)]
        # k-means and the initial responsibilities come first
        first = stages.index(em[0])
        assert first > 0 and stages[first - 1] == f"fit: init {init}/2, initialization"
    assert bar.postfix == f"bound={gm.lower_bounds_[-1]:.8g}"


@ignore_convergence
def test_verbose_messages_are_written_above_the_bar(blobs, recording, capsys):
    X = blobs(2000, 3, 2)[0]
    _fit(X, max_iter=3, tol=0.0, verbose=1, verbose_interval=1, progress=True)
    assert recording[0].lines == ["Initialization 0", "  Iteration 1", "  Iteration 2",
                                  "  Iteration 3", "Initialization did not converge."]
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("method, task", [
    ("predict", "predict"), ("predict_proba", "predict_proba"),
    ("score_samples", "score_samples"), ("score", "score"), ("bic", "score"),
])
def test_predictions_report_one_pass(blobs, recording, small_chunks, method, task):
    X = blobs(2500, 3, 2)[0]
    gm = _fit(X)
    expected = getattr(gm, method)(X)
    gm.set_params(progress=True)
    got = getattr(gm, method)(X)
    assert_array_equal(got, expected)
    (bar,) = recording
    assert bar.kwargs["desc"] == task
    assert bar.passes == [[2500, 2500, task]]
    assert bar.closed


@ignore_convergence
def test_a_stream_reports_rows_before_its_length_is_known(blobs, recording):
    X = blobs(2048, 3, 2)[0]

    def chunks():
        return (X[a : a + 512] for a in range(0, len(X), 512))

    gm = _fit(StreamSource(chunks), max_iter=3, progress=True)
    passes = recording[0].passes
    assert passes[0][:2] == [None, 2048]  # the first pass counts the rows
    assert all(p[:2] == [2048, 2048] for p in passes[1:])
    assert_array_equal(gm.means_, _fit(X, max_iter=3).means_)


def test_a_failed_fit_closes_its_bar_and_keeps_the_model(blobs, recording):
    X = blobs(1000, 3, 2)[0]
    gm = _fit(X, progress=True)
    means = gm.means_.copy()
    bad = X.copy()
    bad[700, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity in row 700"):
        gm.fit(bad)
    assert recording[-1].closed
    assert_array_equal(gm.means_, means)


@ignore_convergence
def test_real_bar_is_drawn(blobs, capsys):
    pytest.importorskip("tqdm")
    X = blobs(1000, 3, 2)[0]
    _fit(X, max_iter=2, progress=True)
    err = capsys.readouterr().err
    assert "fit: initialization" in err and "fit: EM iteration 2" in err and "rows/s" in err
    assert "init 1/1" not in err  # one initialization: no count of them


def test_progress_without_tqdm_says_what_to_install(blobs, monkeypatch):
    X = blobs(1000, 3, 2)[0]
    gm = _fit(X)
    means = gm.means_.copy()
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(ImportError, match=r'pip install "fastem\[progress\]"'):
        gm.set_params(progress=True).fit(X)
    assert_array_equal(gm.means_, means)
    with pytest.raises(ImportError, match="set progress=False"):
        gm.predict(X)


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_progress_must_be_a_bool(blobs, value):
    X = blobs(600, 3, 2)[0]
    with pytest.raises(TypeError, match="progress must be a bool"):
        _fit(X, progress=value)
