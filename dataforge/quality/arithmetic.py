"""Arithmetic a response states: every ``a + b = c`` between plain numbers, and GSM8K's calculator
annotations ``<<48/2=24>>``, recomputed. A wrong sum needs no judge to be caught.

Only statements whose left side is numbers and operators alone are checked ("10X + 5 = 10" is algebra,
not arithmetic, and is left alone). The right side is compared at its own precision ("22/7 = 3.14"
holds). Score ``arithmetic``: 1 when every statement holds, 0 when one does not; no score without any.
"""

from __future__ import annotations

import ast
import operator
import re

_NUM = r"\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"  # 1,250 but not the comma after "54,"
_OPERAND = rf"(?:\(\s*)?{_NUM}(?:\s*\))?"
_STATEMENT = re.compile(rf"({_OPERAND}(?:\s*[-+*/×÷x]\s*{_OPERAND})+)\s*=\s*(-?{_NUM})(?![\d.]*\d)(?!\s*[-+*/×÷x]\s*\d)")
_ANNOTATION = re.compile(r"<<([^<>=]+)=([^<>]+)>>")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _evaluate(expr: str) -> float | None:
    text = expr.replace("×", "*").replace("÷", "/").replace("$", "").replace(",", "")
    text = re.sub(r"(?<=[\d)\s])x(?=[\s\d(])", "*", text)
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        return None

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError("not plain arithmetic")

    try:
        return ev(tree)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


def _holds(value: float, stated: str) -> bool:
    s = stated.replace("$", "").replace(",", "").strip()
    try:
        want = float(s)
    except ValueError:
        return True  # not a number: nothing to check
    decimals = len(s.split(".", 1)[1]) if "." in s else 0
    return abs(value - want) <= 0.5 * 10 ** -decimals + 1e-9 * max(1.0, abs(want))


def arithmetic_errors(text: str) -> tuple[int, list[str]]:
    """(statements checked, the ones that do not hold)."""
    checked, wrong = 0, []
    for m in _ANNOTATION.finditer(text):
        value = _evaluate(m.group(1))
        if value is not None:
            checked += 1
            if not _holds(value, m.group(2)):
                wrong.append(f"{m.group(1).strip()}={m.group(2).strip()}")
    plain = _ANNOTATION.sub(" ", text)
    for m in _STATEMENT.finditer(plain):
        prev = plain[m.start() - 1] if m.start() else " "
        before = plain[: m.start()].rstrip()
        if prev.isalnum() or prev in "._" or (before and before[-1] in "+-*/×÷=^(%"):
            continue  # part of a longer expression or of algebra ("10X + 5 = 10")
        value = _evaluate(m.group(1))
        if value is None:
            continue
        checked += 1
        if not _holds(value, m.group(2)):
            wrong.append(" ".join(m.group(0).split()))
    return checked, wrong


def check_arithmetic(output: str) -> tuple[float, str | None] | None:
    checked, wrong = arithmetic_errors(output)
    if not checked:
        return None
    return (0.0, "wrong: " + "; ".join(wrong[:3])) if wrong else (1.0, None)
