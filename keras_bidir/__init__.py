"""keras-bidir: bidirectional optimization for Keras 3.

One gradient computation per step gives the loss gradient with respect to the
weights (for the optimizer) and to the inputs (for an input policy such as
FGSM, PGD or free adversarial training).
"""

from keras_bidir import callbacks
from keras_bidir import datasets
from keras_bidir import example_index
from keras_bidir import gallery
from keras_bidir import evaluation
from keras_bidir import layers
from keras_bidir import policies
from keras_bidir import recipes
from keras_bidir import schedules
from keras_bidir import sites
from keras_bidir import weight_policies
from keras_bidir.evaluation import evaluate_robustness
from keras_bidir.model import BidirectionalModel
from keras_bidir.version import __version__

__all__ = [
    "BidirectionalModel",
    "callbacks",
    "datasets",
    "evaluate_robustness",
    "evaluation",
    "example_index",
    "gallery",
    "layers",
    "policies",
    "recipes",
    "schedules",
    "sites",
    "weight_policies",
    "__version__",
]
