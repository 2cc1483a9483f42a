"""Draws docs/img/architecture.png (python docs/img/architecture.py)."""
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch

fig, ax = plt.subplots(figsize=(10, 4.6))
ax.set_xlim(0, 10); ax.set_ylim(0, 4.6); ax.axis("off")

def box(x, y, w, h, text, color):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.04", fc=color, ec="#333", lw=1))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=8.5)

def arrow(x0, y0, x1, y1, text=None):
    ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=dict(arrowstyle="->", lw=1.2))
    if text:
        ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.12, text, ha="center", fontsize=7.5, color="#444")

box(0.1, 3.4, 1.5, 0.8, "batch (x, y)\nlabels, mask (VAT)", "#eef")
box(2.0, 3.4, 2.0, 0.8, "input policy\ngenerate: (context, x) → x̃\n(FGSM, PGD, N-FGSM, TRADES…)", "#efe")
box(4.4, 3.4, 2.1, 0.8, "weight policy (optional)\nascent ∂L/∂θ at x̃ → θ + v\n(SAM, AWP)", "#ffe")
box(6.9, 3.4, 3.0, 0.8, "ONE gradient of the objective\nc·f(θ,X) + λ·g(θ,X̃) at (θ+v, x̃)\n→ ∂/∂θ and ∂/∂x̃", "#fee")
box(6.9, 1.9, 1.4, 0.8, "restore θ\nexactly", "#fee")
box(8.5, 1.9, 1.4, 0.8, "optimizer\nθ → θ'", "#fee")
box(4.4, 1.9, 2.1, 0.8, "replay policies\nupdate: x̃ moves with ∂/∂x̃\n(Free, FreeLB: m updates)", "#efe")
box(0.1, 1.9, 3.9, 0.8, "StepState (model.step_state), built at compile / fit:\npolicy state, per-example memory, adv_* containers,\ntrackers (variables; JAX threads their values)", "#f0e6ff")
box(0.1, 0.4, 4.0, 0.8, "Step.finish: clean metrics, adv_* metrics, losses,\nnonfinite_batches, state written back → logs", "#eef")
box(4.4, 0.4, 5.5, 0.8, "trainer.py: what a step computes (keras.ops), reading StepState\nsteps/tensorflow.py, steps/jax.py: the calls in order; backend/: gradients", "#f4f4f4")

arrow(1.6, 3.8, 2.0, 3.8)
arrow(4.0, 3.8, 4.4, 3.8)
arrow(6.5, 3.8, 6.9, 3.8)
arrow(7.6, 3.4, 7.6, 2.7)
arrow(8.3, 2.3, 8.5, 2.3)
arrow(6.9, 2.3, 6.5, 2.3, "∂/∂x̃")
arrow(5.45, 2.7, 5.45, 3.4, "next replay")
arrow(4.4, 2.1, 2.6, 1.2)
arrow(2.0, 2.7, 2.6, 3.4, "state in")
arrow(2.0, 1.2, 2.0, 1.9, "state out")
fig.tight_layout()
fig.savefig(os.path.join(os.path.dirname(os.path.abspath(__file__)), "architecture.png"), dpi=110)
