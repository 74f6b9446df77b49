"""The ``fastem`` command line: ``fastem demo`` and ``fastem bench`` as a user runs them
(through :func:`fastem.cli.main`), and the errors for bad arguments."""

import json
import math
import statistics
import sys

import pytest

from fastem import _demo
from fastem.cli import main


def test_demo_recovers_its_truth(capsys):
    """The demo's mixture is well separated: the fit finds its means and out-scores it."""
    summary = _demo.run_demo(n_samples=20_000, n_features=3, n_components=3, seed=1)
    assert summary["converged"]
    assert summary["max_abs_mean_error"] < 0.1
    assert summary["loglik_fit"] >= summary["loglik_truth"]
    assert main(["demo", "--n-samples", "20000", "--n-features", "3", "--n-components", "3",
                 "--covariance-type", "diag", "--max-iter", "50"]) == 0
    out = capsys.readouterr().out
    assert "3 'diag' components" in out and "max abs error of the means" in out


@pytest.fixture(autouse=True)
def _quick_bench(monkeypatch):
    """The bench's ceilings measured on 64 MiB and 256 x 256 products, once each (the same
    code as the 1 GiB and 2048 x 2048 default, in a tenth of the time), and no settling
    pause before each run: these tests check what the bench does, not how well it times."""
    import fastem._bench

    measure = fastem._bench.measure_ceilings
    monkeypatch.setattr(fastem._bench, "measure_ceilings", lambda threads: measure(
        threads, read_bytes=2**26, gemm_n=256, repeats=1))
    monkeypatch.setattr(fastem._bench, "SETTLE_SECONDS", 0.0)


def _bench(tmp_path, *extra):
    path = tmp_path / "bench.json"
    argv = ["bench", "--n-samples", "3000", "--n-features", "3", "--n-components", "3",
            "--repeats", "2", "--n-iter", "2", "--json", str(path), *extra]
    assert main(argv) == 0
    return json.loads(path.read_text())


def _check_timing(row, seconds, n_iter, base_seconds):
    """A peer's row: its `seconds` the median run over `n_iter`, its speed-up fastem's."""
    assert len(row["times"]) == row["runs"] >= 1
    assert seconds == pytest.approx(statistics.median(row["times"]) / n_iter)
    assert row["speedup"] == pytest.approx(seconds / base_seconds)


def test_bench_times_each_peer_and_writes_every_number(tmp_path, capsys):
    report = _bench(tmp_path, "--covariance-type", "full", "tied", "--peers", "reference",
                    "sklearn", "--no-plot", "--whole-fit")
    assert report["shape"] == [3000, 3, 3] and report["n_iter"] == 2
    assert report["peers"] == ["fastem", "reference", "sklearn"]
    assert report["ceilings"]["read_gbs"] > 0 and report["ceilings"]["gemm_gflops"]["float64"] > 0
    for cov in ("full", "tied"):
        rows = report["results"][cov]
        base = rows["fastem"]["s_per_iter"]
        for peer in ("fastem", "reference", "sklearn"):
            row = rows[peer]
            _check_timing(row, row["s_per_iter"], 2, base)
            assert 0 < row["roofline_fraction"] and row["floor_s"] > 0
        for peer in ("reference", "sklearn"):  # the same iterates from the same start
            assert rows[peer]["agrees"]
        fits = report["whole_fits"][cov]
        assert set(fits) == {"fastem", "sklearn"}
        for peer, row in fits.items():
            _check_timing(row, row["s_per_fit"], 1, fits["fastem"]["s_per_fit"])
            assert row["converged"] and 1 <= row["n_iter"] <= 100
            assert math.isfinite(row["lower_bound"])
    out = capsys.readouterr().out
    assert "### 3,000 x 3 x 3, float64" in out and "### whole fits, 3,000 x 3 x 3" in out
    assert out.count("| tied | sklearn |") == 2


def test_bench_draws_its_plot(tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "plots" / "bench.png"
    report = _bench(tmp_path, "--covariance-type", "diag", "--peers", "sklearn",
                    "--repeats", "1", "--plot", str(plot), "--whole-fit")
    assert set(report["whole_fits"]["diag"]) == {"fastem", "sklearn"}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_times_whole_fits_only_when_asked_and_only_of_its_peers(tmp_path):
    args = ("--covariance-type", "spherical", "--peers", "fastem", "--repeats", "1",
            "--no-plot")
    assert _bench(tmp_path, *args)["whole_fits"] == {}
    report = _bench(tmp_path, *args, "--whole-fit")
    assert list(report["results"]["spherical"]) == ["fastem"]
    assert list(report["whole_fits"]["spherical"]) == ["fastem"]
    assert report["whole_fits"]["spherical"]["fastem"]["speedup"] == 1.0


def test_bench_skips_a_peer_it_estimates_too_slow_and_says_why(tmp_path):
    """From a run on its first 20k rows, scaled to all of them: no peer takes 0 s."""
    path = tmp_path / "bench.json"
    assert main(["bench", "--n-samples", "50000", "--n-features", "2", "--n-components", "2",
                 "--covariance-type", "diag", "--peers", "sklearn", "--repeats", "1",
                 "--max-run-seconds", "0", "--whole-fit", "--no-plot", "--json",
                 str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["results"]["diag"]["sklearn"] is None
    assert report["whole_fits"]["diag"]["sklearn"] is None
    assert report["whole_fits"]["diag"]["fastem"]["speedup"] == 1.0
    skipped = [note for note in report["notes"] if "would take about" in note]
    assert len(skipped) == 2 and all("sklearn" in note for note in skipped)


@pytest.mark.parametrize("argv, message", [
    ([], "required: COMMAND"),
    (["bench", "--n-samples", "2", "--n-components", "3"],
     "--n-samples (2) must be at least --n-components (3)"),
    (["demo", "--n-samples", "4", "--n-components", "5"],
     "--n-samples (4) must be at least --n-components (5)"),
    (["bench", "--n-samples", "1.5e3"], None),  # a whole number written as a float: fine
    (["bench", "--n-samples", "2.5"], "invalid integer: '2.5' is not a whole number"),
    (["demo", "--n-samples", "many"], "invalid integer: 'many'"),
    (["demo", "--n-samples", "1"], "must be at least 2, got 1"),
    (["demo", "--seed", "99999999999"], "argument --seed: must be at most 4294967295"),
    (["bench", "--seed", "4294967296"], "argument --seed: must be at most 4294967295"),
    (["bench", "--n-jobs", "0"], "must be a positive number of threads"),
    (["bench", "--peers", "pandas"], "invalid choice: 'pandas'"),
    (["bench", "--covariance-type", "wide"], "invalid choice: 'wide'"),
    (["bench", "--dtype", "float16"], "invalid choice: 'float16'"),
    (["bench", "--n-samples", "1e15", "--n-features", "64", "--no-plot"],
     "more than half of the"),
])
def test_bad_arguments_exit_with_a_message_that_names_them(capsys, monkeypatch, argv, message):
    if message is None:  # parsing must succeed: stop before anything runs
        import fastem._bench

        monkeypatch.setattr(fastem._bench, "run_bench", lambda **kwargs: kwargs)
        assert main(argv + ["--no-plot"]) == 0
        return
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_a_plot_without_matplotlib_says_how_to_get_it_or_skip_it(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--n-samples", "3000"])
    assert exit_.value.code == 2
    assert 'pip install "fastem[plot]" (or give no plot path: --no-plot)' in (
        capsys.readouterr().err)


def test_the_parsed_shape_reaches_the_bench(monkeypatch):
    import fastem._bench

    seen = {}
    monkeypatch.setattr(fastem._bench, "run_bench", lambda **kwargs: seen.update(kwargs))
    assert main(["bench", "--n-samples", "2_000", "--n-features", "5", "--n-components", "4",
                 "--covariance-type", "tied", "spherical", "--dtype", "float32", "--n-jobs",
                 "1", "--no-plot", "--whole-fit", "--seed", "3"]) == 0
    assert seen["n_samples"] == 2000 and seen["n_features"] == 5 and seen["n_components"] == 4
    assert seen["covariance_types"] == ["tied", "spherical"] and seen["dtype"] == "float32"
    assert seen["n_jobs"] == 1 and seen["plot_path"] is None and seen["whole_fit"]
    assert seen["seed"] == 3


def _bench_gate():
    """``ci/bench_gate.py`` as a module (it is a script, not part of the package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "ci" / "bench_gate.py"
    spec = importlib.util.spec_from_file_location("bench_gate", path)
    gate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gate)
    return gate


@pytest.mark.parametrize("option", ["--repeats", "--n-iter", "--threads"])
def test_the_benchmark_gate_refuses_zero_instead_of_taking_its_default(capsys, option):
    """``ci/bench_gate.py --repeats 0`` is a bad argument (exit 2), not "not given": it used to
    run the whole gate with the thresholds file's setting."""
    gate = _bench_gate()
    with pytest.raises(SystemExit) as exit_:
        gate.main([option, "0"])
    assert exit_.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_the_benchmark_gate_takes_the_thresholds_of_the_cpu_class_it_runs_on():
    """A case's ``by_cpu`` thresholds replace its ``min_speedup`` for the peers they name, on
    that class of CPU only; the shipped file validates."""
    import fastem._bench

    gate = _bench_gate()
    spec = gate.load_thresholds(gate.DEFAULT_THRESHOLDS)
    assert all(set(gate.thresholds_for(case, cpu)) == set(case["min_speedup"])
               for case in spec["cases"] for cpu in fastem._bench.CPU_CLASSES)
    case = {"min_speedup": {"sklearn": 3.5, "reference": 4.5},
            "by_cpu": {"avx2": {"sklearn": 11.0}}}
    assert gate.thresholds_for(case, "avx2") == {"sklearn": 11.0, "reference": 4.5}
    assert gate.thresholds_for(case, "avx512") == {"sklearn": 3.5, "reference": 4.5}
    assert gate.thresholds_for(case, "other") == {"sklearn": 3.5, "reference": 4.5}


@pytest.mark.parametrize("by_cpu, message", [
    ({"sse2": {"sklearn": 2.0}}, "by_cpu of 200×2×8 full must map some of"),
    ([], "by_cpu of 200×2×8 full must map some of"),
    ({"avx2": {}}, "by_cpu 'avx2' of 200×2×8 full must map some of its min_speedup's peers"),
    ({"avx2": {"daal4py": 2.0}}, "by_cpu 'avx2' of 200×2×8 full"),
    ({"avx2": {"sklearn": 0}}, "by_cpu 'avx2' of 200×2×8 full"),
    ({"avx2": {"sklearn": "9"}}, "by_cpu 'avx2' of 200×2×8 full"),
])
def test_the_benchmark_gate_refuses_bad_thresholds_for_a_cpu_class(tmp_path, capsys, by_cpu,
                                                                    message):
    """A thresholds file whose ``by_cpu`` names an unknown class or peer, or no peer, or a
    threshold that is not a positive number, is a bad file (exit 2) saying which case."""
    gate = _bench_gate()
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps({"cases": [{
        "shape": [200, 2, 8], "covariance_type": "full",
        "min_speedup": {"sklearn": 3.5, "reference": 4.5}, "by_cpu": by_cpu}]}))
    assert gate.main(["--thresholds", str(path)]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("features, expected", [
    ({"avx512f", "avx2", "avx"}, "avx512"), ({"avx2", "avx"}, "avx2"), ({"avx"}, "other"),
    (set(), "other"),
])
def test_cpu_class_is_the_vector_instructions_the_kernels_compile_for(monkeypatch, features,
                                                                      expected):
    """The class follows the features Numba compiles for: AVX-512, else AVX2, else other."""
    import fastem._bench
    import fastem._kernels._llvm as llvm

    monkeypatch.setattr(llvm, "target_has", lambda feature: feature in features)
    assert fastem._bench.cpu_class() == expected


def test_bench_refuses_a_json_path_it_could_not_write_before_it_runs(capsys, monkeypatch,
                                                                     tmp_path):
    """A --json path that cannot be written is an argument error at once (exit 2), not a
    traceback after minutes of measuring; folders still missing are made, as before."""
    import fastem._bench

    ran = []
    monkeypatch.setattr(fastem._bench, "run_bench", lambda **kwargs: ran.append(kwargs))
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for path, message in [(a_file / "x.json", "is not a folder"), (tmp_path, "is a folder")]:
        with pytest.raises(SystemExit) as exit_:
            main(["bench", "--json", str(path), "--no-plot"])
        assert exit_.value.code == 2
        assert f"argument --json: {path if message == 'is a folder' else a_file} {message}" \
            in capsys.readouterr().err
    assert ran == []
    nested = tmp_path / "new" / "folder" / "x.json"
    assert main(["bench", "--json", str(nested), "--no-plot"]) == 0
    assert ran[0]["json_path"] == str(nested)


def test_the_benchmarks_warm_up_compiles_the_lloyd_pass_for_each_dtype():
    """A whole fit's k-means passes over all the rows read the data's dtype: the warm-up
    compiles them for float32 too (with 512 rows it never reached them, and the first float32
    whole fit of ``fastem bench`` timed their compile). In a fresh process, so that no other
    test has compiled them already."""
    import subprocess

    code = ("import numpy as np; from numba import types; "
            "from fastem._bench import warm_up_fastem; "
            "from fastem._kernels.kmeans import _lloyd_task; "
            "warm_up_fastem(('spherical',), (np.float32,), threads=1); "
            "print(sorted({str(sig[2].dtype) for sig in _lloyd_task.signatures}))")  # X's
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "float32" in done.stdout.strip().splitlines()[-1]
