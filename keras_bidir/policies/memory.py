"""Where a policy keeps what it carries from one step to the next: per batch or per example."""

from keras import ops

from keras_bidir import constraints
from keras_bidir.policies.free import _rows
from keras_bidir.policies.free import _store_rows


class BatchMemory:
    """Tensors carried from one batch to the next (FreeAdversarial's δ, FGSM-BP's prior)."""

    def __init__(self, tensors):
        self.tensors = list(tensors)

    def read(self, position, batch_size):
        return _rows(self.tensors[position], batch_size)

    def write(self, position, rows):
        self.tensors[position] = _store_rows(self.tensors[position], rows)


class ExampleMemory:
    """The batch's rows of a memory kept per training example (the step reads them at the
    batch's example indices before `generate` and writes them back after the step).

    The last tensor flags the examples seen before (1) or not yet (0).
    """

    def __init__(self, tensors):
        self.tensors = list(tensors)

    def read(self, position, batch_size=None):
        return self.tensors[position]

    def write(self, position, rows):
        self.tensors[position] = ops.cast(rows, self.tensors[position].dtype)

    def seen(self):
        """`(batch,)` bools: which of the batch's examples came by before."""
        return self.read(len(self.tensors) - 1) > 0

    def mark_seen(self):
        self.write(len(self.tensors) - 1, ops.ones_like(self.tensors[-1]))


def remembered_or_random(policy, context, memory, position, x, epsilon):
    """The remembered perturbation of each example; a uniform draw in the ε-ball for new ones."""
    remembered = memory.read(position, ops.shape(x)[0])
    if not isinstance(memory, ExampleMemory):
        return remembered
    fresh = constraints.random_in_ball(ops.shape(x), epsilon, policy.norm, x.dtype, context.seed)
    seen = ops.reshape(memory.seen(), (-1,) + (1,) * (len(x.shape) - 1))
    return ops.where(seen, ops.cast(remembered, x.dtype), fresh)


def starting_points(policy, context, memory, inputs, epsilon):
    """Each site's clean value plus its remembered perturbation, back in the ball and range."""
    return [policy._project(x, x + remembered_or_random(policy, context, memory, i, x, epsilon),
                            epsilon, clip)
            for i, (x, clip) in enumerate(zip(inputs, context.clip(len(inputs))))]


def check_num_examples(num_examples):
    """`num_examples` as an int >= 1, or None."""
    if num_examples is None:
        return None
    if not isinstance(num_examples, int) or isinstance(num_examples, bool) or num_examples < 1:
        raise ValueError(f"num_examples must be a positive integer or None, got {num_examples!r}.")
    return num_examples

