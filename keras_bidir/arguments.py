"""The checks on `BidirectionalModel`'s arguments, each error saying what to pass instead."""

import math

import keras

from keras_bidir.policies.base import is_real

ATTACK_MODES = ("inference", "training")


def check_base_model(base_model, wrapper_class):
    """`base_model` must be a plain Keras model (not already wrapped)."""
    if not isinstance(base_model, keras.layers.Layer):
        raise TypeError(
            f"base_model must be a Keras model, got {type(base_model).__name__}. "
            "Build it with keras.Sequential, the functional API or by subclassing keras.Model.")
    if isinstance(base_model, wrapper_class):
        raise TypeError("base_model is already a BidirectionalModel; wrap the plain "
                        "model (its .base_model) instead.")
    return base_model


def check_weight(name, value):
    """A loss weight: a finite number >= 0, as a Python float."""
    if not is_real(value):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}.")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}.")
    return float(value)


def check_adversarial_weight(value):
    """λ must be > 0: with 0 the policy would have no effect."""
    value = check_weight("adversarial_weight", value)
    if value == 0:
        raise ValueError("adversarial_weight must be > 0: with 0 the policy has no effect. "
                         "Train the base model directly for ordinary training.")
    return value


def check_attack_mode(attack_mode):
    if attack_mode not in ATTACK_MODES:
        raise ValueError(f"attack_mode must be one of {ATTACK_MODES}, got {attack_mode!r}.")
    return attack_mode


def check_objective(policy, weight_policy, clean_weight):
    """The policy, weight policy and clean weight must make one objective."""
    if weight_policy is not None and policy.kind == "accumulate":
        raise ValueError(
            f"{type(weight_policy).__name__} cannot be combined with {type(policy).__name__}, "
            "which averages the weight gradients of several ascent steps into one update: "
            "there is no single descent gradient to take at the perturbed weights. Use "
            "FreeAdversarial, or an attack policy (PGD, TRADES, ...).")
    if clean_weight == 0 and policy.default_clean_weight > 0:
        raise ValueError(
            f"{type(policy).__name__} trains on the clean loss plus its own divergence term: "
            "clean_weight must be > 0 (leave it unset for the policy's default, "
            f"{policy.default_clean_weight}; when switching policies, set model.clean_weight "
            "first).")
