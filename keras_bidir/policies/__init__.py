"""Input policies: how the inputs move along (or regardless of) their gradient."""

from keras_bidir.policies.atas import ATAS
from keras_bidir.policies.apgd import APGD
from keras_bidir.policies.apgd import APGDTargeted
from keras_bidir.policies.augment import Augment
from keras_bidir.policies.augment import WorstOfK
from keras_bidir.policies.base import BallPolicy
from keras_bidir.policies.base import InputPolicy
from keras_bidir.policies.base import PerturbationContext
from keras_bidir.policies.compose import Compose
from keras_bidir.policies.compose import RandomChoice
from keras_bidir.policies.mart import MART
from keras_bidir.policies.trades import TRADES
from keras_bidir.policies.vat import VAT
from keras_bidir.policies.freelb import FreeLB
from keras_bidir.policies.fab import FABTargeted
from keras_bidir.policies.free import FreeAdversarial
from keras_bidir.policies import pieces
from keras_bidir.policies.fgsm import FGSM
from keras_bidir.policies.fgsm import NFGSM
from keras_bidir.policies.pgd import PGD
from keras_bidir.policies.fgsm import RandomFGSM
from keras_bidir.policies.noise import GaussianNoise
from keras_bidir.policies.prior import PriorGuidedFGSM
from keras_bidir.policies.registry import get
from keras_bidir.policies.registry import names
from keras_bidir.policies.square import Square

__all__ = [
    "InputPolicy",
    "BallPolicy",
    "PerturbationContext",
    "FGSM",
    "RandomFGSM",
    "NFGSM",
    "PriorGuidedFGSM",
    "ATAS",
    "PGD",
    "APGD",
    "APGDTargeted",
    "Square",
    "FABTargeted",
    "FreeAdversarial",
    "FreeLB",
    "GaussianNoise",
    "TRADES",
    "MART",
    "VAT",
    "Augment",
    "WorstOfK",
    "Compose",
    "RandomChoice",
    "get",
    "names",
    "pieces",
]
