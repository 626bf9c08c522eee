"""Field docstrings and defaults of a dataclass: the command lines' help texts and defaults, so that a
flag's help and default and the field it sets cannot drift apart."""

from __future__ import annotations

import ast
import dataclasses
import inspect


def field_docs(cls) -> dict[str, str]:
    """Each field's docstring (the string literal under it in the class body), by field name."""
    docs, previous = {}, None
    for node in ast.parse(inspect.getsource(cls)).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            previous = node.target.id
        elif previous and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            docs[previous] = " ".join(node.value.value.split())
            previous = None
        else:
            previous = None
    return docs


def help_texts(cls) -> dict[str, str]:
    """`field_docs` escaped for argparse, which reads % as a format character."""
    return {name: doc.replace("%", "%%") for name, doc in field_docs(cls).items()}


def field_default(cls, name: str):
    """The default of dataclass field `name` (a fresh one for a field with a default factory)."""
    spec = cls.__dataclass_fields__[name]
    return spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
