"""The public names of the design document are importable from ``varlearn``; ``__init__`` is explicit."""
import ast
import inspect

import varlearn as vl

# the public API contract of docs/design.md (and the solver objects of its target layout)
DESIGN_NAMES = [
    "TotalVariation", "FieldOfExperts", "Regularizer", "PotentialRegularizer", "DenoisingProblem",
    "MultinomialLogisticProblem", "QuadraticProblem", "LeastSquares", "SquaredError", "CrossEntropy",
    "solve_lower", "hypergradient", "minimize_bilevel", "BilevelResult", "Result",
    "MAID", "HOAG", "FixedAccuracy", "FISTA", "CG",
]


def test_design_names_are_exported():
    missing = [n for n in DESIGN_NAMES if n not in vl.__all__ or not hasattr(vl, n)]
    assert missing == []
    assert [n for n in vl.__all__ if not hasattr(vl, n)] == []
    assert len(set(vl.__all__)) == len(vl.__all__)


def test_init_has_explicit_imports_and_all():
    tree = ast.parse(inspect.getsource(vl))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names = [a.asname or a.name for a in node.names]
            assert "*" not in names, f"star import from {node.module}"
            imported.update(names)
    exported = set(vl.__all__) - {"__version__"}
    # every exported name is imported explicitly, every imported public name is exported
    assert exported - imported == set()
    assert {n for n in imported if not n.startswith("_")} - exported == set()
