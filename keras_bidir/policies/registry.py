"""Policies by name: `get` and `names` (what the CLI and `BidirectionalModel` accept)."""

import keras

from keras_bidir.policies.atas import ATAS
from keras_bidir.policies.apgd import APGD
from keras_bidir.policies.base import InputPolicy
from keras_bidir.policies.mart import MART
from keras_bidir.policies.trades import TRADES
from keras_bidir.policies.vat import VAT
from keras_bidir.policies.freelb import FreeLB
from keras_bidir.policies.free import FreeAdversarial
from keras_bidir.policies.fgsm import FGSM
from keras_bidir.policies.fgsm import NFGSM
from keras_bidir.policies.pgd import PGD
from keras_bidir.policies.fgsm import RandomFGSM
from keras_bidir.policies.noise import GaussianNoise
from keras_bidir.policies.prior import PriorGuidedFGSM

_BY_NAME = {
    "fgsm": FGSM,
    "random_fgsm": RandomFGSM,
    "nfgsm": NFGSM,
    "prior_guided_fgsm": PriorGuidedFGSM,
    "fgsm_pgi": PriorGuidedFGSM,
    "mart": MART,
    "atas": ATAS,
    "pgd": PGD,
    "apgd": APGD,
    "free": FreeAdversarial,
    "free_adversarial": FreeAdversarial,
    "freelb": FreeLB,
    "gaussian_noise": GaussianNoise,
    "trades": TRADES,
    "vat": VAT,
}


def names():
    """The policy names accepted by `get` and the CLI."""
    return sorted(_BY_NAME)


def get(identifier, **kwargs):
    """Returns a policy from a policy, a config dict, or a name plus arguments.

    Args:
        identifier: an `InputPolicy`, a serialized config dict, or a name
            from `names()` (e.g. `"pgd"`).
        **kwargs: constructor arguments when `identifier` is a name.

    Example:

    >>> keras_bidir.policies.get("pgd", epsilon=0.2, steps=7)
    """
    if isinstance(identifier, InputPolicy):
        return identifier
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(identifier)
    if isinstance(identifier, str):
        key = identifier.lower().replace("-", "_")
        if key not in _BY_NAME:
            raise ValueError(
                f"Unknown policy {identifier!r}. Known policies: {', '.join(names())}."
            )
        return _BY_NAME[key](**kwargs)
    raise TypeError(
        f"Expected an InputPolicy, a config dict or a policy name, got {identifier!r}."
    )
