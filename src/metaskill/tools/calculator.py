"""The ``calculator`` tool: evaluates an arithmetic expression, safely.

The expression is evaluated by ``simpleeval`` (a small, maintained evaluator that walks the
Python AST with a whitelist), never by ``eval``: only numbers, ``+ - * / // % **``,
unary signs and parentheses; no names, no functions, no attributes, no strings. The
argument's JSON schema allows only those characters (:data:`EXPRESSION_PATTERN`), so a
constrained model cannot write anything else, and simpleeval refuses huge powers.

Example:
    >>> from metaskill.tools.base import call_tool
    >>> calculate("58 + 55"), calculate("7 / 2"), calculate("(12 - 30) * 3")
    ('113', '3.5', '-54')
    >>> call_tool(calculator(), {"expression": "2 ** 10"}).result
    '1024'
    >>> call_tool(calculator(), {"expression": "__import__('os')"}).error[:19]
    'malformed arguments'
"""

from __future__ import annotations

import ast
import math

from pydantic import BaseModel, Field

from metaskill.tools.base import Tool

#: The characters an expression may hold (the JSON schema's pattern).
EXPRESSION_PATTERN = r"^[0-9+\-*/%(). ]+$"


class CalculatorArgs(BaseModel):
    """The calculator's argument."""

    expression: str = Field(max_length=60, pattern=EXPRESSION_PATTERN,
                            description="arithmetic with numbers, + - * / % ** and parentheses")


def format_number(value: float | int) -> str:
    """A number as an answer: integral values without a decimal point, others to 10
    significant digits.

    Example:
        >>> format_number(113.0), format_number(1 / 3), format_number(-4)
        ('113', '0.3333333333', '-4')
    """
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"the result is {value}")
        if value.is_integer() and abs(value) < 1e16:
            return str(int(value))
        return f"{value:.10g}"
    return str(value)


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression (see the module docstring for what is allowed).

    Raises:
        ValueError: for anything but arithmetic on numbers (names, strings, calls ...),
            a division by zero, or a result that is too large.

    Example:
        >>> calculate("1 / 0")
        Traceback (most recent call last):
        ...
        ValueError: division by zero
    """
    import simpleeval

    evaluator = simpleeval.SimpleEval(functions={}, names={})
    ops = {ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub,
           ast.UAdd}
    evaluator.operators = {k: v for k, v in evaluator.operators.items() if k in ops}
    try:
        value = evaluator.eval(expression.strip())
    except ZeroDivisionError as e:
        raise ValueError("division by zero") from e
    except (simpleeval.InvalidExpression, SyntaxError, TypeError, KeyError,
            OverflowError) as e:
        raise ValueError(f"not an arithmetic expression: {e}") from e
    if not isinstance(value, int | float):
        raise ValueError(f"not a number: {type(value).__name__}")
    return format_number(value)


def calculator(timeout_s: float = 2.0) -> Tool:
    """The calculator :class:`~metaskill.tools.base.Tool`.

    Example:
        >>> calculator().line()
        'calculator(expression): evaluates an arithmetic expression and returns the number'
    """
    return Tool("calculator", "evaluates an arithmetic expression and returns the number",
                CalculatorArgs, lambda a: calculate(a.expression), timeout_s=timeout_s)
