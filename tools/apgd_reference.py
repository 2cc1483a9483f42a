"""APGD-CE against AutoAttack's reference APGD, on the same weights (a developer's check).

AutoAttack's APGD (Croce and Hein, 2020) as torchattacks ports it
(`torchattacks.APGD`, a copy of `autoattack/autopgd_base.py`) and
keras-bidir's `policies.APGD` attack the digits protocol's models, on the
same weights, at L∞ ε = 0.2 with 100 steps and several seeds. Two steps, two
Python environments (torch is not a keras-bidir dependency):

    .venv/bin/python tools/apgd_reference.py keras --output outputs/apgd_ref
    <a venv with torch==2.13.0 torchattacks==3.5.1>/bin/python tools/apgd_reference.py \\
        torch --output outputs/apgd_ref

The first trains the models (as `keras-bidir bench --quality` does), saves
their weights and keras-bidir's per-example results; the second runs the
reference on the same weights and prints the comparison.
"""

import argparse
import json
import os

import numpy as np

CONFIGS = ("fgsm", "pgd7", "trades7", "recipe_fast")
SEEDS = (0, 1, 2)
EPSILON, STEPS = 0.2, 100


def keras_side(output):
    from keras_bidir import evaluation, policies
    from keras_bidir_cli import frontier

    protocol = frontier.PROTOCOLS["digits"]
    (x_train, y_train), (x_test, y_test) = protocol.load()
    results = {}
    for name in CONFIGS:
        model = frontier._timed_fit(protocol, frontier._configs()[name], 0, x_train, y_train)[0]
        base = getattr(model, "base_model", model)
        np.savez(os.path.join(output, f"{name}.npz"), *base.get_weights())
        attack = policies.APGD(EPSILON, steps=STEPS, clip_min=0.0, clip_max=1.0)
        runs = [evaluation.correct_under_attack(model, x_test, y_test, attack, seed=s)
                for s in SEEDS]
        clean = evaluation.correct_under_attack(model, x_test, y_test, None)
        results[name] = {"clean": clean.tolist(), "runs": [r.tolist() for r in runs]}
        print(f"{name}: clean {clean.mean():.1%}, keras-bidir APGD-CE "
              + " / ".join(f"{r.mean():.2%}" for r in runs), flush=True)
    np.savez(os.path.join(output, "data.npz"), x=x_test, y=y_test)
    with open(os.path.join(output, "keras_bidir.json"), "w") as f:
        json.dump(results, f)


def _torch_model(weights):
    import torch

    k1, b1, k2, b2, w3, b3, w4, b4 = [torch.tensor(w) for w in weights]

    class DigitsCNN(torch.nn.Module):
        def forward(self, x):  # NCHW in; Keras' kernels (h, w, in, out) -> (out, in, h, w)
            x = torch.relu(torch.nn.functional.conv2d(x, k1.permute(3, 2, 0, 1), b1, padding=1))
            x = torch.relu(torch.nn.functional.conv2d(x, k2.permute(3, 2, 0, 1), b2, padding=1))
            x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # Keras flattens NHWC
            return torch.relu(x @ w3 + b3) @ w4 + b4

    return DigitsCNN().eval()


def torch_side(output):
    import torch
    import torchattacks

    data = np.load(os.path.join(output, "data.npz"))
    x = torch.tensor(data["x"]).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor(data["y"]).long()
    with open(os.path.join(output, "keras_bidir.json")) as f:
        ours = json.load(f)
    print(f"APGD-CE, L∞ ε = {EPSILON}, {STEPS} steps, {len(y)} test digits; robust accuracy "
          f"per seed {SEEDS}")
    print("| model | clean (torch / keras) | reference APGD-CE | keras-bidir APGD-CE | "
          "reference mean | keras-bidir mean | difference |")
    print("|---|---|---|---|---|---|---|")
    for name in CONFIGS:
        weights = np.load(os.path.join(output, f"{name}.npz"))
        model = _torch_model([weights[f"arr_{i}"] for i in range(len(weights.files))])
        with torch.no_grad():
            clean = (model(x).argmax(1) == y).numpy()
        reference = []
        for seed in SEEDS:
            attack = torchattacks.APGD(model, norm="Linf", eps=EPSILON, steps=STEPS,
                                       n_restarts=1, seed=seed, loss="ce", rho=0.75)
            adversarial = attack(x, y)
            with torch.no_grad():
                reference.append(((model(adversarial).argmax(1) == y).numpy() & clean).mean())
        mine = [np.mean(r) for r in ours[name]["runs"]]
        print(f"| {name} | {clean.mean():.1%} / {np.mean(ours[name]['clean']):.1%} | "
              + " / ".join(f"{r:.2%}" for r in reference) + " | "
              + " / ".join(f"{r:.2%}" for r in mine)
              + f" | {np.mean(reference):.2%} | {np.mean(mine):.2%} | "
              f"{100 * (np.mean(mine) - np.mean(reference)):+.2f} points |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("side", choices=("keras", "torch"))
    parser.add_argument("--output", default="outputs/apgd_ref")
    args = parser.parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    (keras_side if args.side == "keras" else torch_side)(args.output)


if __name__ == "__main__":
    main()
