"""The result of `evaluate_robustness`: figures per attack, worst case, masking checks."""


class Check:
    """One gradient-masking check: its name, verdict and explanation."""

    def __init__(self, name, passed, message, details=None):
        self.name = name
        self.passed = bool(passed)
        self.message = message
        self.details = details or {}

    def to_dict(self):
        return {"name": self.name, "passed": self.passed, "message": self.message,
                "details": self.details}

    def __repr__(self):
        return f"Check({self.name!r}, {'passed' if self.passed else 'FAILED'})"


class RobustnessReport:
    """Result of `evaluate_robustness`.

    For a classifier the measure is accuracy (higher is better); for a
    regression model it is the model's loss (e.g. mean squared error; higher
    is worse), and the worst case per example is its largest loss over the
    attacks.

    Attributes:
        measure: `"accuracy"` or the name of the loss measured.
        clean: the measure on unperturbed inputs.
        epsilons: the radii evaluated.
        by_attack: `{attack_name: {epsilon: value}}`.
        worst_case: `{epsilon: value}`, the per-example worst case over all
            attacks (and their restarts).
        checks: list of `Check` (gradient-masking checks).
        num_examples: examples evaluated.
        norm: the attacks' norm.
        output: the evaluated output head (None for single-output models).
        suite: `"standard"`, `"fast"` or `"custom"` (the attacks' origin).
        cascade: whether each attack ran only on the examples still robust;
            then `by_attack` holds the robust accuracy after each attack.
        restarts: how many runs (seeds) of each attack the figures take the
            per-example worst case over.
        resumed_batches: batches read back from `evaluate_robustness`'s
            `state` file instead of attacked (0 on a first run).

    Classifier reports also answer `clean_accuracy`, `accuracy` and
    `robust_accuracy`; regression reports `clean_loss`, `loss` and
    `worst_loss`.
    """

    def __init__(self, clean, epsilons, by_attack, worst_case, checks, num_examples, norm,
                 measure="accuracy", output=None, suite=None, cascade=False, restarts=1):
        self.clean = clean
        self.epsilons = list(epsilons)
        self.by_attack = by_attack
        self.worst_case = worst_case
        self.checks = checks
        self.num_examples = num_examples
        self.norm = norm
        self.measure = measure
        self.output = output
        self.suite = suite
        self.cascade = bool(cascade)
        self.restarts = int(restarts)
        #: Finds flipped examples on demand (set by `evaluate_robustness` for classifiers).
        self.example_finder = None
        #: Batches a resumed evaluation read back from its state file instead of attacking.
        self.resumed_batches = 0
        self._examples = {}

    @property
    def is_accuracy(self):
        return self.measure == "accuracy"

    def _only(self, accuracy, name):
        if self.is_accuracy != accuracy:
            kind = "a classifier" if self.is_accuracy else f"a regression model ({self.measure})"
            other = ("clean_accuracy / accuracy / robust_accuracy" if self.is_accuracy
                     else "clean_loss / loss / worst_loss")
            raise AttributeError(f"This report is for {kind}: it has no {name}; read {other}.")

    @property
    def clean_accuracy(self):
        self._only(True, "clean_accuracy")
        return self.clean

    @property
    def accuracy(self):
        self._only(True, "accuracy")
        return self.by_attack

    @property
    def robust_accuracy(self):
        self._only(True, "robust_accuracy")
        return self.worst_case

    @property
    def clean_loss(self):
        self._only(False, "clean_loss")
        return self.clean

    @property
    def loss(self):
        self._only(False, "loss")
        return self.by_attack

    @property
    def worst_loss(self):
        self._only(False, "worst_loss")
        return self.worst_case

    @property
    def passed_checks(self):
        """True when every gradient-masking check passed."""
        return all(check.passed for check in self.checks)

    def format(self, value):
        """A value of the measure as text: a percentage or a loss."""
        return f"{value:.1%}" if self.is_accuracy else f"{value:.4g}"

    def summary(self):
        """The figures a paper or RobustBench reports: clean, robust, ε, norm, examples.

        Returns:
            A dict: `clean_accuracy`, `robust_accuracy` (`{epsilon: value}`),
            `epsilons`, `norm`, `num_examples`, `suite` and `attacks`
            (regression reports: `clean_loss` and `worst_loss`).
        """
        key = "accuracy" if self.is_accuracy else "loss"
        return {
            f"clean_{key}": self.clean,
            "robust_accuracy" if self.is_accuracy else "worst_loss": dict(self.worst_case),
            "epsilons": list(self.epsilons),
            "norm": self.norm,
            "num_examples": self.num_examples,
            "suite": self.suite,
            "attacks": list(self.by_attack),
            "restarts": self.restarts,
        }

    def to_robustbench(self, dataset, architecture, epsilon=None, **fields):
        """The figures as RobustBench's model-info JSON has them (a standard-suite report).

        Args:
            dataset: `"cifar10"`, `"cifar100"`, `"imagenet"` (or your own name).
            architecture: e.g. `"WideResNet-28-10"`.
            epsilon: the radius to report (default: the report's only one).
            **fields: `name`, `authors`, `link`, `venue`, `additional_data`
                (bool) and `reported` (the paper's robust accuracy, a fraction).

        Returns:
            A dict with RobustBench's fields: `clean_acc` and `autoattack_acc`
            in percent as text, `eps` as `"8/255"`, `number_forward_passes`
            1, and a `footnote` when fewer examples than the full test set
            were evaluated. `keras_bidir.evaluation.robustbench.save_model_info`
            writes it to `<dir>/<dataset>/<Linf|L2>/<name>.json`.

        Raises:
            ValueError: for a report that is not AutoAttack's standard suite on
                a classifier, or an ε the report does not have.

        Example:

        >>> report.to_robustbench("cifar10", "PreActResNet-18", name="Fast AT, keras-bidir")
        """
        from keras_bidir.evaluation import robustbench

        return robustbench.model_info(self, dataset, architecture, epsilon, **fields)

    def summary_line(self):
        """`summary()` as one line of text."""
        robust = ", ".join(f"{self.format(v)} at ε={e:g}" for e, v in self.worst_case.items())
        kind = "robust" if self.is_accuracy else f"worst {self.measure}"
        clean = "clean" if self.is_accuracy else f"clean {self.measure}"
        suite = f"{self.suite} suite: " if self.suite else ""
        return (f"{clean} {self.format(self.clean)}, {kind} {robust} ({self.norm}, "
                f"{self.num_examples} examples; {suite}{', '.join(self.by_attack)}"
                f"{', in cascade' if self.cascade else ''}"
                f"{f', {self.restarts} restarts' if self.restarts > 1 else ''})")

    def to_dict(self):
        key = "accuracy" if self.is_accuracy else "loss"
        return {
            "suite": self.suite,
            "cascade": self.cascade,
            "restarts": self.restarts,
            "num_examples": self.num_examples,
            "norm": self.norm,
            "measure": self.measure,
            "output": self.output,
            f"clean_{key}": self.clean,
            "epsilons": self.epsilons,
            key: {a: {str(e): v for e, v in r.items()} for a, r in self.by_attack.items()},
            "robust_accuracy" if self.is_accuracy else "worst_loss":
                {str(e): v for e, v in self.worst_case.items()},
            "checks": [check.to_dict() for check in self.checks],
        }

    def to_markdown(self):
        header = ["attack"] + [f"ε={e:g}" for e in self.epsilons]
        head = f", output '{self.output}'" if self.output is not None else ""
        title = "Clean accuracy" if self.is_accuracy else f"Clean {self.measure} (higher is worse)"
        lines = [
            f"{title}: {self.format(self.clean)} ({self.num_examples} examples, {self.norm}{head})",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        after = "after " if self.cascade else ""
        for name, row in self.by_attack.items():
            lines.append("| " + " | ".join([after + name] + [self.format(row[e]) for e in self.epsilons])
                         + " |")
        lines.append(
            "| **worst case** | "
            + " | ".join(f"**{self.format(self.worst_case[e])}**" for e in self.epsilons)
            + " |"
        )
        lines.append("")
        if self.cascade:
            lines.append("In cascade: each attack ran on the examples every earlier attack (and "
                         "every smaller ε) left robust; each row is the robust accuracy after it.")
            lines.append("")
        lines.append(f"Summary: {self.summary_line()}")
        lines.append("")
        lines.append("Gradient-masking checks:")
        for check in self.checks:
            mark = "pass" if check.passed else "FAIL"
            lines.append(f"- [{mark}] {check.name}: {check.message}")
        return "\n".join(lines)

    def flipped_examples(self, count=8, epsilon=None):
        """Examples the attacks flip at one radius: a `gallery.FlippedExamples`.

        Re-runs the attacks, in order, on the examples the evaluation found
        broken at that radius (clean-correct, not robust), until `count` are
        found; cached.

        Args:
            count: at most this many examples.
            epsilon: the radius (default: the model's training ε when the
                report has it, else the middle radius; the largest is where
                nearly every example breaks). The pictures' title says which.
        """
        if self.example_finder is None:
            raise ValueError(
                "This report has no examples to show: only reports of evaluate_robustness on a "
                "classifier with one output have them (regression has no prediction to flip).")
        key = (count, epsilon)
        if key not in self._examples:
            self._examples[key] = self.example_finder(count, epsilon)
        return self._examples[key]

    def plot_examples(self, path=None, count=8, class_names=None, epsilon=None):
        """A grid of flipped examples: clean input, adversarial input, perturbation, both labels.

        Images are drawn as images; other inputs (tabular features) as bars.

        Args:
            path: where to save a PNG; None returns the figure unsaved.
            count: at most this many examples (rows).
            class_names: optional names of the classes, for the titles.
            epsilon: the radius (see `flipped_examples`).

        Returns:
            The matplotlib figure.

        Example:

        >>> report = keras_bidir.evaluate_robustness(model, (x_test, y_test), [0.2])
        >>> report.plot_examples("flipped.png")
        """
        return self.flipped_examples(count, epsilon).plot(path, count, class_names)

    def plot(self, path=None):
        """The measure against ε, one curve per attack plus the worst case.

        Args:
            path: where to save a PNG; None returns the figure unsaved.

        Returns:
            The matplotlib figure.
        """
        try:
            import matplotlib

            if path is not None:
                matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as error:
            raise ImportError("plot() needs matplotlib: pip install 'keras-bidir[plot]'.") from error
        scale = 100 if self.is_accuracy else 1
        figure, axis = plt.subplots(figsize=(5.5, 3.8))
        xs = [0.0] + self.epsilons
        # The worst case underneath as a wide band: an attack whose line coincides with it
        # (the last of a cascade, the strongest of a set) stays visible on top.
        axis.plot(xs, [scale * self.clean] + [scale * self.worst_case[e] for e in self.epsilons],
                  color="black", linewidth=7, alpha=0.2, solid_capstyle="round",
                  label="worst case", zorder=1)
        markers, styles = "os^vDP*X", ["-", "--", "-.", ":"]
        for position, (name, row) in enumerate(self.by_attack.items()):
            label = f"after {name}" if self.cascade else name
            axis.plot(xs, [scale * self.clean] + [scale * row[e] for e in self.epsilons],
                      marker=markers[position % len(markers)], markersize=4,
                      linestyle=styles[position % len(styles)], linewidth=1.2, label=label,
                      zorder=2 + position)
        axis.set_xlabel(f"ε ({self.norm})")
        if self.is_accuracy:
            axis.set_ylabel("accuracy (%)")
            axis.set_ylim(0, 100)
        else:
            axis.set_ylabel(f"{self.measure} (higher is worse)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
        figure.tight_layout()
        if path is not None:
            figure.savefig(path, dpi=120)
            plt.close(figure)
        return figure

    def __repr__(self):
        worst = ", ".join(f"ε={e:g}: {self.format(v)}" for e, v in self.worst_case.items())
        name = "clean" if self.is_accuracy else f"clean {self.measure}"
        return f"RobustnessReport({name}={self.format(self.clean)}, worst case {worst})"
