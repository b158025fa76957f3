"""The package shows the pipeline: each stage imports only the stages below it (function-level
imports included), and library code leaves logging setup and the environment to the entry points."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "bgwsol"

# lower number = lower in the pipeline; a module may import its own stage and the ones below
STAGES = {
    "bgwsol.config": 0, "bgwsol.errors": 0, "bgwsol.ray_init": 0, "bgwsol.progress": 0, "bgwsol.console": 0,
    "bgwsol.flow": 0, "bgwsol.retry": 0, "bgwsol.precision": 0, "bgwsol.service_start": 0,
    "bgwsol.data": 1,
    "bgwsol.models": 2,
    "bgwsol.methods": 3,
    "bgwsol.checkpoint": 4,
    "bgwsol.evaluation": 4,
    "bgwsol.tracking": 5,
    "bgwsol.serving": 6,   # loads registered models: depends on tracking, never the other way
    "bgwsol.training": 7,
    "bgwsol.workflows": 8,
}


def stage(module: str) -> tuple[str, int]:
    for prefix in sorted(STAGES, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix, STAGES[prefix]
    raise AssertionError(f"{module}: in no stage of the layout (add it to STAGES and the README's table)")


def modules():
    for path in sorted(ROOT.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")
        yield name, ast.parse(path.read_text())


def imported(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno


def test_no_module_imports_a_later_stage():
    upward = []
    for name, tree in modules():
        if name == "bgwsol":
            continue
        mine, rank = stage(name)
        for target, line in imported(tree):
            if target.startswith("bgwsol.") and stage(target)[1] > rank:
                upward.append(f"{name}:{line} imports {target} ({mine} is below {stage(target)[0]})")
    assert upward == []


def test_the_rules_the_issue_names_hold():
    imports = {name: {t for t, _ in imported(tree)} for name, tree in modules()}
    for name, targets in imports.items():
        if name.startswith("bgwsol.serving"):
            assert not any(t.startswith("bgwsol.training") for t in targets), name
        if name.startswith("bgwsol.tracking"):  # the registry names the pyfunc loader, never imports it
            assert not any(t.startswith("bgwsol.serving") for t in targets), name
        if name.startswith("bgwsol.evaluation"):
            assert not any(t.startswith(("bgwsol.models", "bgwsol.training")) for t in targets), name


FINAL_SCORING = {"summarize", "evaluate_checkpoint", "FinalEvaluation", "score_examples", "score_here"}


def test_scoring_has_one_home_and_training_only_produces_checkpoints():
    """A checkpoint is scored in bgwsol/evaluation/ (scoring.py; on_ray.py fans it out over Ray
    tasks); training imports from it only what validation during training needs, never the final
    scoring (thresholds on validation, the test split once), and no other module defines a
    function of that name."""
    for name, tree in modules():
        if name.startswith("bgwsol.training"):
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module == "bgwsol.evaluation.on_ray":
                    raise AssertionError(f"{name} imports {ast.unparse(node)}")
                if isinstance(node, ast.ImportFrom) and node.module == "bgwsol.evaluation.scoring":
                    assert not {a.name for a in node.names} & FINAL_SCORING, f"{name}: {ast.unparse(node)}"
        if name != "bgwsol.evaluation.scoring":
            defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
            assert not defined & (FINAL_SCORING | {"map_variants", "merge_evaluations"}), name


def test_library_code_sets_up_no_logging_and_writes_no_environment():
    found = []
    for name, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "basicConfig":
                found.append(f"{name}:{node.lineno} calls logging.basicConfig")
            if isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Subscript) and ast.unparse(target.value) == "os.environ":
                        found.append(f"{name}:{node.lineno} writes os.environ")
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("os.environ.setdefault", "os.environ.update",
                                                                          "os.putenv"):
                found.append(f"{name}:{node.lineno} writes os.environ")
    assert found == []


def test_no_private_api_of_ray_or_webdataset():
    """Ray Data's datasink and webdataset's shuffle are used through their public names
    (``ray.data.Datasink``, ``webdataset.shuffle``); private ones change without notice."""
    found = []
    for name, tree in modules():
        for target, line in imported(tree):
            if target.startswith(("ray.", "webdataset.")) and any(part.startswith("_") for part in target.split(".")):
                found.append(f"{name}:{line} imports {target}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                base = ast.unparse(node.value)
                if base.split(".")[0] in ("wds", "webdataset", "ray"):
                    found.append(f"{name}:{node.lineno} uses {base}.{node.attr}")
    assert found == []
