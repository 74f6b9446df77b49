"""Progress bars over the passes of a fit or a prediction (``progress=True``; tqdm, the
``progress`` extra).

A pass over a billion rows on disk takes minutes, and a fit makes dozens. With
``progress=True`` a model draws one bar per fit or prediction, started again at each pass over
the data: the rows read so far of all of them, rows per second, the time left in the pass,
what the pass is for (the initialization, or which EM iteration) and the last iteration's
bound.

The bar follows the rows as the kernels consume them, chunk by chunk, through a data source
that wraps the model's own (:class:`ReportingSource`): every pass (k-means, initialization,
EM, prediction) reports itself without knowing of bars. Over an in-memory array, which a pass
otherwise takes whole, the wrapper reads default-sized chunks so that the bar moves: a
multiple of the kernels' block, so the results keep every bit.
"""

from __future__ import annotations

import contextlib

from .data import DataSource


def _tqdm():
    """tqdm's bar class for this context (a widget in a notebook, text elsewhere)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError(
            "progress=True draws its progress bars with tqdm, which is not installed. "
            'Install it with pip install "fastem[progress]" (or pip install tqdm), or set '
            "progress=False."
        ) from None
    return tqdm


class PassBar:
    """One progress bar, started again at each pass over the data.

    Parameters
    ----------
    task : str
        What the bar is for ("fit", "predict", ...), the start of its description.
    """

    def __init__(self, task: str):
        self.task = task
        self._bar = _tqdm()(total=None, desc=task, unit="rows", unit_scale=True,
                            dynamic_ncols=True)

    def set_stage(self, stage: str) -> None:
        """Name what the passes from now on are for, such as "EM iteration 3"."""
        self._bar.set_description(f"{self.task}: {stage}" if stage else self.task,
                                  refresh=False)

    def set_bound(self, lower_bound: float | None) -> None:
        """Show the bound of the iteration just done (None: none yet)."""
        self._bar.set_postfix_str("" if lower_bound is None else f"bound={lower_bound:.8g}",
                                  refresh=False)

    def begin_pass(self, n_samples: int | None) -> None:
        """Start the bar again for a pass over ``n_samples`` rows (None: not known yet)."""
        self._bar.reset(total=n_samples)

    def advance(self, rows: int) -> None:
        self._bar.update(rows)

    def write(self, line: str) -> None:
        """Print a line above the bar, leaving the bar whole."""
        self._bar.write(line)

    def close(self) -> None:
        self._bar.close()


def reported(source: DataSource, enabled: bool, task: str):
    """For a ``with`` statement: ``(source, bar)``, the source wrapped so that its passes
    report to a new :class:`PassBar` for ``task``, closed however the block ends; or
    ``(source, None)`` when ``enabled`` is false."""
    return _Reported(source, task) if enabled else contextlib.nullcontext((source, None))


class _Reported:
    """:func:`reported`'s context when a bar is drawn."""

    def __init__(self, source, task):
        self.bar = PassBar(task)
        self.source = ReportingSource(source, self.bar)

    def __enter__(self):
        return self.source, self.bar

    def __exit__(self, *exc_info):
        self.bar.close()


class ReportingSource(DataSource):
    """``source``'s rows, each pass over them reported to a :class:`PassBar`.

    Everything else is the wrapped source's: its rows, chunks, dtype and row count (a stream's
    known after its first pass), and its random access (:meth:`take`, which is no pass).
    """

    def __init__(self, source: DataSource, bar: PassBar):
        self.source = source
        self.bar = bar
        self.n_features = source.n_features
        self.dtype = source.dtype

    @property
    def n_samples(self) -> int | None:
        return self.source.n_samples

    def __repr__(self):
        return f"ReportingSource({self.source!r})"

    def default_chunk_size(self) -> int:
        return self.source.default_chunk_size()

    def chunks(self, chunk_size=None, prefetch=False):
        # An in-memory array, which a pass otherwise takes whole, in default-sized chunks (the
        # same bits): the bar then moves during the pass.
        source = self.source
        if (chunk_size is None and source._zero_copy
                and source._auto_chunk_size() == source.n_samples):
            chunk_size = source.default_chunk_size()
        # The wrapped source's own checks (a bad chunk_size, a file changed since it was
        # opened) are made here, at once, as its chunks() makes them.
        return self._reported(source.chunks(chunk_size, prefetch))

    def _reported(self, chunks):
        self.bar.begin_pass(self.source.n_samples)
        with contextlib.closing(chunks):
            for start, block in chunks:
                yield start, block
                self.bar.advance(block.shape[0])

    def take(self, indices):
        return self.source.take(indices)
