"""The parallel loop that runs the kernels' tasks by address: the right compiled task and loop
for the arguments' types, the slots merged in block order, and a task that fails reported, not
ignored."""

import numpy as np
import pytest

from fastem import GaussianMixture
from fastem._em import kernel_rows, threads
from fastem._kernels._atomic import following_block
from fastem._kernels._config import BLOCK_ROWS
from fastem._kernels._waves import TASK_FAILED, launcher_address, task_address
from fastem._kernels.gaussian import HARD, _diagonal_task, _full_task, _waves, gaussian_pass
from fastem._kernels.gaussian_expanded import expanded_pass
from fastem._params import GaussianParams, precisions_cholesky_from_covariances


def _layout(covariance_type, K, d, seed):
    rng = np.random.default_rng(seed)
    covariances = {"full": np.tile(np.eye(d), (K, 1, 1)), "diag": np.ones((K, d))}
    params = GaussianParams(covariance_type, np.full(K, 1 / K), rng.normal(size=(K, d)),
                            precisions_cholesky_from_covariances(
                                covariances[covariance_type], covariance_type))
    return params.kernel_layout()


def _task_args(layout, X, wave):
    """The per-component tasks' arguments for a pass over X, whose slots hold `wave` blocks."""
    kind, shift, centre, prec, aux, const = layout
    K, d = shift.shape
    return (kind, HARD, X, shift, centre, np.zeros(d), prec, np.zeros((8, d)), aux, const,
            np.empty((0, K)), True, BLOCK_ROWS, BLOCK_ROWS, 1, np.zeros((wave, K)),
            np.zeros((wave, K, d)), np.zeros((wave, *prec.shape)), np.zeros(wave),
            np.zeros(wave, dtype=np.int64), np.empty(0), np.empty((0, K)),
            np.empty(0, dtype=np.int64), np.zeros(1, dtype=np.int64))


def test_task_address_is_one_per_task_and_argument_types():
    X = kernel_rows(np.random.default_rng(0).normal(size=(BLOCK_ROWS, 3)), 3)
    args = _task_args(_layout("full", 2, 3, 1), X, 1)
    address = task_address(_full_task, args)
    assert address == task_address(_full_task, args)
    assert address != task_address(_diagonal_task, args)
    as_float32 = (*args[:2], X.astype(np.float32), *args[3:])
    assert task_address(_full_task, as_float32) != address
    assert not X.flags.writeable  # as the kernels get every chunk
    assert task_address(_full_task, (*args[:2], X.copy(), *args[3:])) != address


def test_a_task_that_raises_makes_the_pass_fail():
    """A 'diag' layout handed to the 'full' task: the task raises (it was compiled without
    'diag''s code), and the loop returns TASK_FAILED rather than merge unwritten slots."""
    X = kernel_rows(np.random.default_rng(2).normal(size=(4 * BLOCK_ROWS, 3)), 3)
    args = _task_args(_layout("diag", 2, 3, 3), X, 4)
    s0, s1, s2, loglik = np.zeros(2), np.zeros((2, 3)), np.zeros((2, 1, 3)), np.zeros(1)
    with threads(2):
        bad = _waves(launcher_address(), task_address(_full_task, args), 4, 4, 2,
                     np.zeros(1, dtype=np.int64), *args, loglik, s0, s1, s2)
    assert bad == TASK_FAILED
    assert loglik[0] == 0 and not s0.any()


def test_fits_in_one_dtype_after_another_run_their_own_loop():
    """float32, float64, int32 and int64 rows fitted one after another in a process: each
    fit runs the loop compiled for its own arguments, and integers fit as float64 does.
    (With the tasks' arguments passed to the loop as one tuple, Numba 0.59 dispatched it by a
    wrong fingerprint, a matter of what lay in memory: in scikit-learn's dtype check, and in
    this sequence on other data, the integer fits ran the float32 loop and raised "can't unbox
    array".)"""
    X = 3 * np.random.default_rng(10).uniform(size=(20, 5))
    fits = {}
    for dtype in (np.float32, np.float64, np.int32, np.int64):
        Xd = X.astype(dtype) if dtype in (np.float32, np.float64) else (10 * X).astype(dtype)
        model = GaussianMixture(2, max_iter=5, n_init=2, random_state=0).fit(Xd)
        fits[dtype] = model.score_samples(Xd)
    X_int = (10 * X).astype(np.int64)
    as_float = GaussianMixture(2, max_iter=5, n_init=2, random_state=0).fit(
        X_int.astype(np.float64))
    np.testing.assert_array_equal(fits[np.int64], as_float.score_samples(X_int.astype(float)))
    np.testing.assert_array_equal(fits[np.int32], fits[np.int64])
    np.testing.assert_allclose(fits[np.float32], fits[np.float64], rtol=1e-4)


@pytest.mark.parametrize("wave", [1, 3, 16])
def test_any_wave_size_and_task_count_give_the_same_bits(wave):
    X = kernel_rows(np.random.default_rng(4).normal(size=(11 * BLOCK_ROWS, 5)), 5)
    kind, shift, centre, prec, aux, const = _layout("diag", 3, 5, 5)

    def one_pass(wave_blocks, n_tasks):
        stats = np.zeros(1), np.zeros(3), np.zeros((3, 5)), np.zeros((3, 1, 5))
        with threads(n_tasks):
            bad = gaussian_pass(kind, HARD, X, shift, centre, prec, aux, const,
                                np.empty((0, 3)), True, BLOCK_ROWS, wave_blocks, n_tasks,
                                *stats, np.empty(0), np.empty((0, 3)),
                                np.empty(0, dtype=np.int64))
        assert bad == -1
        return stats

    expected = one_pass(11, 1)
    for n_tasks in (1, 2):
        for found, wanted in zip(one_pass(wave, n_tasks), expected):
            np.testing.assert_array_equal(found, wanted)


def test_the_expanded_pass_checks_its_padded_layout_before_any_task_runs():
    """The panels read without bounds checks, so the layout is checked in Python first."""
    X = kernel_rows(np.random.default_rng(6).normal(size=(BLOCK_ROWS, 4)), 4)
    rng = np.random.default_rng(7)
    K = 24
    params = GaussianParams("diag", np.full(K, 1 / K), rng.normal(size=(K, 4)),
                            np.ones((K, 4)))
    kind, centre, eta, row_factor = params.expanded_layout()
    stats = np.zeros(eta.shape[::-1])
    outputs = (np.zeros(1), stats, np.zeros((0, 0, 0)), np.empty(0), np.empty((0, K)),
               np.empty(0, dtype=np.int64))
    for wrong_eta, wrong_stats in [(eta[:, :-1], stats), (eta[:-8], stats[:, :-8]),
                                   (eta, stats[:-8])]:
        with pytest.raises(ValueError, match="padded layout"):
            expanded_pass(kind, X, centre, np.ascontiguousarray(wrong_eta), row_factor, K,
                          True, BLOCK_ROWS, 16, 2, outputs[0], np.ascontiguousarray(wrong_stats),
                          *outputs[2:])
    assert expanded_pass(kind, X, centre, eta, row_factor, K, True, BLOCK_ROWS, 16, 2,
                         *outputs) == -1
    assert outputs[0][0] != 0 and stats[0, :K].sum() == pytest.approx(BLOCK_ROWS)


@pytest.mark.parametrize(("nw", "take"), [(1, 1), (7, 1), (3, 4), (12, 4), (10, 4)])
def test_each_block_knows_the_block_its_task_runs_next(nw, take):
    """A task alone in a wave, taking `take` blocks at a time and claiming its next take
    before it runs the current one, as the kernels' tasks do: each block's following block
    (whose rows it prefetches) is the one the task runs next, and the last block's is none."""
    taken = iter(range(0, nw + 2 * take, take))
    order, following = [], []
    first = next(taken)
    while first < nw:
        then = next(taken)
        last = min(first + take, nw)
        for w in range(first, last):
            order.append(w)
            following.append(following_block(w, last, then, nw))
        first = then
    assert order == list(range(nw))
    assert following == order[1:] + [-1]
