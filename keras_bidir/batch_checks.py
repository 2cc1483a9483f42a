"""Checks on every batch of `fit` data, for data whose batches are only seen as training runs.

A check has a host side (NumPy: it runs on each batch of a Python generator or iterator)
and a graph side (TensorFlow ops: asserted inside a `tf.data` pipeline, on the host whatever
the backend). The assertion carries the check's mark and the offending values; `translate`
turns the error Keras raises from it back into the check's own clear error.
"""

import re


class BatchCheck:
    """One check of `fit` batches.

    Args:
        mark: a text that identifies the check's assertion in an error message.
        host: `host(batch)`, raising the check's error for a bad batch.
        graph: `graph(*batch)` of TensorFlow tensors: `(ok, values)` (integer
            scalars reported on failure), or None when the batch has nothing to check.
        error: `error(values)`, the check's error for the reported values.
    """

    def __init__(self, mark, host, graph, error):
        self.mark, self.host, self.graph, self.error = mark, host, graph, error


def checked(data, check):
    """`data` whose every batch passes `check`: a `tf.data.Dataset` gets an assertion in its
    pipeline, a generator or iterator is checked batch by batch, other data is returned as is."""
    if hasattr(data, "element_spec") and hasattr(data, "map"):
        import tensorflow as tf  # the data is a tf.data pipeline whatever the backend

        def assert_ok(batch):
            found = check.graph(*batch)
            if found is not None:
                ok, values = found
                tf.debugging.Assert(ok, [check.mark] + list(values))  # runs: a stateful op

        if isinstance(data.element_spec, tuple):
            @tf.autograph.experimental.do_not_convert
            def checked_batch(*batch):
                assert_ok(batch)
                return batch
        else:  # one tensor (or dict) per element: keep that structure
            @tf.autograph.experimental.do_not_convert
            def checked_batch(batch):
                assert_ok((batch,))
                return batch

        return data.map(checked_batch)
    if hasattr(data, "__next__"):
        def generator():
            for batch in data:
                check.host(batch)
                yield batch

        return generator()
    return data


def translate(error, check):
    """`check`'s own error for an error its pipeline assertion raised, else None."""
    found = re.search(re.escape(check.mark) + r"\]((?: \[-?\d+\])+)", str(error))
    if not found:
        return None
    return check.error([int(v) for v in re.findall(r"-?\d+", found.group(1))])
