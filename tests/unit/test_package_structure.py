"""The package's shape: no import circles, the library never imports the command line."""

import ast
import os

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
PACKAGES = ("keras_bidir", "keras_bidir_cli")


def _modules():
    """`{module name: path}` of every module of the two packages."""
    found = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    found[module.removesuffix(".__init__")] = path
    return found


def _imports(path, modules):
    """The package modules `path` imports, at any depth of its code (function-level too)."""
    def owner(name):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    targets = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            targets.update(owner(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                targets.add(full if full in modules else owner(node.module))
    return {t for t in targets if t and t.startswith(PACKAGES)}


def _graph():
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _circles(graph):
    """Every import circle, as the list of its modules (Tarjan's strongly connected parts)."""
    order, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(module):
        order[module] = low[module] = len(order)
        stack.append(module)
        on_stack.add(module)
        for target in graph[module]:
            if target not in order:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], order[target])
        if low[module] == order[module]:
            part = []
            while not part or part[-1] != module:
                part.append(stack.pop())
                on_stack.discard(part[-1])
            if len(part) > 1:
                circles.append(sorted(part))

    for module in graph:
        if module not in order:
            visit(module)
    return circles


def test_no_import_circles_anywhere_in_the_packages():
    assert _circles(_graph()) == []


def test_the_circle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(graph) == [["a", "b", "c"]]


def test_the_library_never_imports_the_command_line_or_the_trainer_from_its_primitives():
    graph = _graph()
    library = [m for m in graph if m.split(".")[0] == "keras_bidir"]
    assert library and all(not any(t.startswith("keras_bidir_cli") for t in graph[m])
                           for m in library)
    primitives = [m for m in graph if m.startswith("keras_bidir.backend")]
    assert primitives and all("keras_bidir.trainer" not in graph[m] for m in primitives)


def _private_reads(path, names):
    """`name._attr` reads in `path` where `name` is one of `names` (or `self.<name>`)."""
    found = []
    for node in ast.walk(ast.parse(open(path).read())):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
            continue
        value = node.value
        if isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name):
            value = ast.Name(value.attr) if value.value.id == "self" else value
        if isinstance(value, ast.Name) and value.id in names and not node.attr.startswith("__"):
            found.append(f"{value.id}.{node.attr} (line {node.lineno})")
    return found


def test_the_step_reads_the_step_state_never_the_models_privates():
    """The trainer and the per-backend steps use the model's public API and `model.step_state`."""
    paths = [os.path.join(ROOT, "keras_bidir", name) for name in
             ("trainer.py", "steps/tensorflow.py", "steps/jax.py")]
    for path in paths:
        assert _private_reads(path, {"model"}) == [], path


def test_the_private_read_finder_finds_one(tmp_path):
    path = tmp_path / "sample.py"
    path.write_text("def f(model):\n    return model._policy_state, self.model._sites\n")
    assert _private_reads(path, {"model"}) == ["model._policy_state (line 2)",
                                               "model._sites (line 2)"]


def test_the_model_module_stays_a_thin_wrapper():
    with open(os.path.join(ROOT, "keras_bidir", "model.py")) as f:
        assert len(f.read().splitlines()) <= 400
