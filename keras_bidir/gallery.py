"""Pictures of attacks (`keras_bidir.gallery`): the public name of `keras_bidir.evaluation.pictures`.

Clean and adversarial inputs side by side (`flipped_examples`), and the tokens
an embedding perturbation moved towards (`token_shifts`).
"""

from keras_bidir.evaluation.pictures import FlippedExamples
from keras_bidir.evaluation.pictures import flipped_examples
from keras_bidir.evaluation.pictures import format_token_shifts
from keras_bidir.evaluation.pictures import is_picture
from keras_bidir.evaluation.pictures import token_shifts

__all__ = ["FlippedExamples", "flipped_examples", "format_token_shifts", "is_picture",
           "token_shifts"]
