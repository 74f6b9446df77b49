"""The ``fastem`` command line.

Subcommands
-----------
demo
    Fit a mixture with a known truth and show how well fastem recovers it.
bench
    Compare fastem with the reference, scikit-learn and oneDAL on your own shape and machine
    (table, JSON and a PNG of speed-ups and roofline fractions; see ``fastem._bench``).

Each subcommand is one function that builds its parser and sets ``func`` (called with the
parsed namespace, returning an exit code); :func:`main` dispatches.
"""

from __future__ import annotations

import argparse
import sys

from ._bench import add_bench_parser

__all__ = ["main", "build_parser"]

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


# ---------------------------------------------------------------------- argument types
def _integer(text: str) -> int:
    """An integer written as 2000000, 2_000_000 or 2e6."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r} is not a whole number")
    return int(value)


def _at_least(low: int, high: int | None = None):
    def parse(text: str) -> int:
        value = _integer(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {value}")
        return value

    # how argparse names the type in its messages
    parse.__name__ = f"integer >= {low}" if high is None else f"integer in [{low}, {high}]"
    return parse


def _n_jobs(text: str) -> int:
    value = _integer(text)
    if value == 0:
        raise argparse.ArgumentTypeError(
            "must be a positive number of threads, or negative (-1: all cores, -2: all but one), "
            "not 0"
        )
    return value


# ---------------------------------------------------------------------- demo
def _add_demo(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="fit a mixture with a known truth and show the recovery",
        description=(
            "Generate a Gaussian mixture with random, well-separated means, random covariances "
            "and random weights; draw rows from it; fit fastem.GaussianMixture with verbose "
            "output (the bound and the time of every iteration); then print the fit time, the "
            "time per iteration, the fitted against the true weights and means (matched up to "
            "permutation), and the mean log-likelihood of the truth and of the fit."
        ),
    )
    add_shape_arguments(parser, 2_000_000, 8, 5, rows="rows to generate",
                        components="mixture components, true and fitted")
    parser.add_argument("--covariance-type", choices=COVARIANCE_TYPES, default="full",
                        help="covariance type, true and fitted (default: %(default)s)")
    parser.add_argument("--n-jobs", type=_n_jobs, default=None, metavar="N",
                        help="threads; -1: all cores, -2: all but one (default: all cores)")
    parser.add_argument("--seed", type=_at_least(0, 2**32 - 1), default=0,  # numpy's seeds
                        help="seed of the truth, the data and the initialization "
                        "(default: %(default)s)")
    parser.add_argument("--max-iter", type=_at_least(1), default=100, metavar="N",
                        help="EM iterations at most (default: %(default)s)")
    parser.set_defaults(func=_run_demo, parser=parser)


def add_shape_arguments(parser, n_samples, n_features, n_components, *, rows="rows",
                        components="mixture components"):
    """--n-samples, --n-features and --n-components, validated, with these defaults."""
    parser.add_argument("--n-samples", type=_at_least(2), default=n_samples, metavar="N",
                        help=f"{rows} (default: %(default)s)")
    parser.add_argument("--n-features", type=_at_least(1), default=n_features, metavar="D",
                        help="columns (default: %(default)s)")
    parser.add_argument("--n-components", type=_at_least(1), default=n_components, metavar="K",
                        help=f"{components} (default: %(default)s)")


def _run_demo(args) -> int:
    from . import _demo

    if args.n_samples < args.n_components:
        args.parser.error(
            f"--n-samples ({args.n_samples}) must be at least --n-components "
            f"({args.n_components})"
        )
    try:
        _demo.check_memory(args.n_samples, args.n_features)
    except ValueError as error:
        args.parser.error(str(error))
    _demo.run_demo(
        n_samples=args.n_samples, n_features=args.n_features, n_components=args.n_components,
        covariance_type=args.covariance_type, n_jobs=args.n_jobs, seed=args.seed,
        max_iter=args.max_iter,
    )
    return 0


# ---------------------------------------------------------------------- the parser
_SUBCOMMANDS = (_add_demo, add_bench_parser)


def build_parser() -> argparse.ArgumentParser:
    """The ``fastem`` argument parser, with one subparser per subcommand."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="fastem",
        description="Fast, reproducible EM for Gaussian mixtures.",
    )
    parser.add_argument("--version", action="version", version=f"fastem {__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    subparsers.required = True
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv=None) -> int:
    """Run the ``fastem`` command line; returns the exit code.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 1 when the command failed, 2 for bad arguments (from argparse, which
        exits itself), 130 when interrupted.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("fastem: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, MemoryError) as error:
        print(f"fastem {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
