import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from keras_bidir_cli import import_quietly  # noqa: E402

import_quietly()  # TensorFlow's native start-up log would interleave with pytest's output

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# CI gates a submission on the same property cases every time (`.ci/run` sets the profile);
# local runs draw new cases each time and so keep exploring.
settings.register_profile("ci", derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

from keras_bidir import datasets  # noqa: E402


@pytest.fixture(scope="session")
def digits():
    """The bundled UCI digits, protocol split."""
    return datasets.load_digits()


@pytest.fixture
def small_batch(digits):
    (x_train, y_train), _ = digits
    return x_train[:64], y_train[:64]


def tiny_cnn(seed=0, softmax=False):
    """A small digits classifier (logits unless softmax=True)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10, activation="softmax" if softmax else None),
        ]
    )


def compile_classifier(model, optimizer="adam", **kwargs):
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        **kwargs,
    )
    return model


@pytest.fixture(scope="session")
def trained_plain(digits):
    """A plainly trained tiny CNN (shared by tests that only read it)."""
    (x_train, y_train), _ = digits
    model = compile_classifier(tiny_cnn(0))
    model.fit(x_train, y_train, batch_size=64, epochs=8, verbose=0)
    return model


def numpy_norm(delta, norm):
    flat = np.asarray(delta, dtype="float64").reshape(len(delta), -1)
    if norm == "linf":
        return np.abs(flat).max(axis=1)
    return np.sqrt((flat**2).sum(axis=1))


from keras_bidir import policies as _policies  # noqa: E402

CLIP = {"clip_min": 0.0, "clip_max": 1.0}


class RecordGradients(_policies.InputPolicy):
    """A probe through the public policy protocol: leaves every site as it is
    and stores the weight step's site gradients as its state."""

    def state_shapes(self, input_shapes):
        return [tuple(s) for s in input_shapes]

    def generate(self, context, inputs, state):
        return list(inputs), state

    def update(self, context, inputs, adversarial, gradients, state):
        return adversarial, list(gradients)


def training_policies():
    """One small instance of every policy (data range [0, 1] where it applies)."""
    return [
        _policies.FGSM(0.1, **CLIP),
        _policies.RandomFGSM(0.1, **CLIP),
        _policies.NFGSM(0.1, **CLIP),
        _policies.PGD(0.1, steps=2, restarts=2, **CLIP),
        _policies.FreeAdversarial(0.1, replays=2, **CLIP),
        _policies.GaussianNoise(0.1, **CLIP),
        _policies.APGD(0.1, steps=3, **CLIP),
        _policies.FreeLB(0.1, steps=2, norm="linf"),
        _policies.PriorGuidedFGSM(0.1, momentum=0.3, **CLIP),
        _policies.MART(0.1, steps=2, **CLIP),
        _policies.PriorGuidedFGSM(0.1, prior="example", **CLIP),
        _policies.ATAS(0.1, **CLIP),
    ]


# One policy of each way the step runs a policy: a random start (RandomFGSM), an attack loop
# with restarts (PGD), replays (Free), a graph-loop attack (APGD), accumulated gradients
# (FreeLB), carried state (batch-prior FGSM), clean outputs (MART), a memory per example
# (ATAS). The every-policy matrices run these in `make test` and the rest in `make test-all`.
ONE_OF_EACH_KIND = (1, 3, 4, 6, 7, 8, 9, 11)  # indices into training_policies()


def every_policy_cases():
    """`training_policies()` as pytest params: the kinds above, the others marked `slow`."""
    return [pytest.param(policy, marks=[] if index in ONE_OF_EACH_KIND else [pytest.mark.slow],
                         id=type(policy).__name__ + ("" if index in ONE_OF_EACH_KIND else f"{index}"))
            for index, policy in enumerate(training_policies())]


BACKEND = keras.backend.backend()


def independent_gradients(loss_of, x, variables=()):
    """`(d loss / d x, [d loss / d v])` by the backend's own autodiff, not keras-bidir's.

    TensorFlow: a `tf.GradientTape`; JAX: `jax.grad` of a pure function of the
    input and the variables' values (a `keras.StatelessScope`).

    Args:
        loss_of: callable taking the input tensor and returning a scalar loss.
        x: the input (array).
        variables: Keras variables to differentiate too.
    """
    variables = list(variables)
    if BACKEND == "jax":
        import jax

        def pure(x, values):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return loss_of(x)

        gx, gv = jax.grad(pure, argnums=(0, 1))(jax.numpy.asarray(x), [v.value for v in variables])
        return np.asarray(gx), [np.asarray(g) for g in gv]
    import tensorflow as tf

    x = tf.convert_to_tensor(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        loss = loss_of(x)
    gx = tape.gradient(loss, x).numpy()
    return gx, [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, variables)]


def pytest_sessionfinish(session):
    """Ends a test process quickly and quietly.

    pytest-xdist's worker gets SIGINT when it is still busy 5 s after the
    controller asked it to stop (execnet's `_terminate_execution`): on a busy
    machine the teardown's garbage collections, slowed by JAX's and
    hypothesis' gc callbacks, took that long, and the KeyboardInterrupt
    landed inside a callback (a stray `PytestUnraisableExceptionWarning`
    traceback after `[100%]`). Nothing needs collecting any more: drop those
    callbacks and stop the collector.
    """
    import gc

    gc.callbacks[:] = [callback for callback in gc.callbacks
                       if getattr(callback, "__module__", "").split(".")[0]
                       not in ("jax", "jaxlib", "hypothesis")]
    gc.disable()
