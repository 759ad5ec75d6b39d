"""Reading a user's `forward` before replacing it: what it returns and what state it reads.

`patch` replaces the forward of a user's mixed op with the fused one, which computes the
weighted sum of the ops and nothing else. A forward that also reads other state (DARTS-'s
auxiliary skip scaled by a beta that decays during the search, a drop probability, a flag)
would be followed at patch time and then silently dropped. So `patch` reads the forward's
source first (`ForwardReads`): the attributes of `self` and the global objects it reads
(modules, functions, classes and builtins are code, not state). State the fused forward
does not follow means the op keeps its own forward, and the report says which.

One extra is followed: an auxiliary term `res += self.<aux>(x) * <beta>` (optionally under
an `if <cond>:`), as DARTS- writes it (`AuxiliaryTerm`). `<beta>` and `<cond>` are compiled
from the user's own source and evaluated in the forward's globals on every call, so a beta
read from a module-global scheduler or from module state is followed exactly.
"""
from __future__ import annotations

import ast
import builtins
import inspect
import textwrap
import types
from dataclasses import dataclass
from typing import Callable, Optional

__all__ = ["ForwardReads", "AuxiliaryTerm", "read_forward", "single_child_call"]


@dataclass
class AuxiliaryTerm:
    """`+ self.<module>(<x>) * <beta>`, added when `<cond>` (None: always) holds."""
    module: str
    beta: types.CodeType
    beta_text: str
    cond: Optional[types.CodeType]
    cond_text: str
    reads: frozenset  # the attributes of self and the globals that beta and cond read

    def value(self, fn: Callable, self_name: str, owner, names: dict):
        """(cond, beta) evaluated now, in `fn`'s globals with `self` and the arguments."""
        scope = {self_name: owner, **names}
        if self.cond is not None and not eval(self.cond, fn.__globals__, scope):
            return False, None
        return True, eval(self.beta, fn.__globals__, scope)


@dataclass
class ForwardReads:
    """What a forward reads besides its arguments. `None` fields: the source was unreadable."""
    self_attributes: frozenset
    state_globals: frozenset  # globals that are objects, not code (an args namespace, ...)
    aux: Optional[AuxiliaryTerm]
    arg_names: tuple


def _function_def(fn: Callable) -> Optional[ast.FunctionDef]:
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        return None
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    node = tree.body[0] if tree.body else None
    return node if isinstance(node, ast.FunctionDef) else None


def _is_code(value) -> bool:
    return isinstance(value, (types.ModuleType, types.FunctionType, types.BuiltinFunctionType,
                              types.MethodType, type))


def _reads(nodes, self_name: str, local: set, fn_globals: dict) -> tuple[set, set]:
    attrs, globs = set(), set()
    for root in nodes:
        for node in ast.walk(root):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == self_name):
                attrs.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                name = node.id
                if name in local or name == self_name or hasattr(builtins, name):
                    continue
                if name in fn_globals and _is_code(fn_globals[name]):
                    continue
                globs.add(name)
    return attrs, globs


def _assigned(fn_def: ast.FunctionDef) -> set:
    names = {a.arg for a in fn_def.args.args + fn_def.args.kwonlyargs}
    for extra in (fn_def.args.vararg, fn_def.args.kwarg):
        if extra is not None:
            names.add(extra.arg)
    for node in ast.walk(fn_def):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return names


def _aux_product(expr: ast.expr, self_name: str, x_name: str):
    """(module attribute, beta expression) of `self.<m>(x) * beta` / `beta * self.<m>(x)`."""
    if not (isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Mult)):
        return None
    for call, beta in ((expr.left, expr.right), (expr.right, expr.left)):
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                and isinstance(call.func.value, ast.Name) and call.func.value.id == self_name
                and len(call.args) == 1 and not call.keywords
                and isinstance(call.args[0], ast.Name) and call.args[0].id == x_name):
            return call.func.attr, beta
    return None


def _aux_statement(stmt: ast.stmt, self_name: str, x_name: str):
    """`res += self.<m>(x) * beta` or `res = res + ...` -> (result name, module, beta)."""
    if isinstance(stmt, ast.AugAssign) and isinstance(stmt.op, ast.Add) and isinstance(
            stmt.target, ast.Name):
        found = _aux_product(stmt.value, self_name, x_name)
        return None if found is None else (stmt.target.id, *found)
    if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
            and isinstance(stmt.targets[0], ast.Name) and isinstance(stmt.value, ast.BinOp)
            and isinstance(stmt.value.op, ast.Add) and isinstance(stmt.value.left, ast.Name)
            and stmt.value.left.id == stmt.targets[0].id):
        found = _aux_product(stmt.value.right, self_name, x_name)
        return None if found is None else (stmt.targets[0].id, *found)
    return None


def _compile(expr: ast.expr, fn: Callable) -> types.CodeType:
    return compile(ast.Expression(body=expr), f"<{fn.__qualname__}>", "eval")


def _auxiliary_term(fn_def, fn, self_name, x_name, arg_names, assigned, fn_globals):
    """The DARTS- form: `res = sum(...)`, `[if cond:] res += self.aux(x) * beta`,
    `return res`, with beta and cond reading only self, the arguments and globals."""
    body = [s for s in fn_def.body
            if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    if len(body) != 3 or not isinstance(body[2], ast.Return):
        return None
    first, middle, last = body
    cond = None
    if isinstance(middle, ast.If) and len(middle.body) == 1 and not middle.orelse:
        cond, middle = middle.test, middle.body[0]
    found = _aux_statement(middle, self_name, x_name)
    if found is None:
        return None
    result, module, beta = found
    if not (isinstance(first, ast.Assign) and len(first.targets) == 1
            and isinstance(first.targets[0], ast.Name) and first.targets[0].id == result
            and isinstance(last.value, ast.Name) and last.value.id == result):
        return None
    exprs = [beta] + ([cond] if cond is not None else [])
    computed = assigned - set(arg_names)
    if any(isinstance(node, ast.Name) and node.id in computed
           for e in exprs for node in ast.walk(e)):
        return None  # beta and cond may read only self, the arguments and globals
    attrs, globs = _reads(exprs, self_name, set(arg_names), fn_globals)
    return AuxiliaryTerm(module, _compile(beta, fn), ast.unparse(beta),
                         None if cond is None else _compile(cond, fn),
                         "" if cond is None else ast.unparse(cond),
                         frozenset(attrs) | frozenset(globs)), first


def read_forward(fn: Callable) -> Optional[ForwardReads]:
    """What `fn` (a module class's `forward`) reads; None if its source cannot be read."""
    fn = inspect.unwrap(fn)
    fn_def = _function_def(fn)
    if fn_def is None or not fn_def.args.args:
        return None
    arg_names = tuple(a.arg for a in fn_def.args.args)
    self_name = arg_names[0]
    fn_globals = getattr(fn, "__globals__", {})
    local = _assigned(fn_def)
    aux = None
    nodes = fn_def.body
    if len(arg_names) >= 2:
        found = _auxiliary_term(fn_def, fn, self_name, arg_names[1], arg_names, local,
                                fn_globals)
        if found is not None:
            aux, first = found
            nodes = [first]  # the rest is the auxiliary term, followed by evaluating it
    attrs, globs = _reads(nodes, self_name, local, fn_globals)
    return ForwardReads(frozenset(attrs), frozenset(globs), aux, arg_names)


def single_child_call(fn: Callable) -> Optional[str]:
    """`name` if `fn`'s body is `return self.<name>(<its one argument>)` (a wrapper such as
    DrNAS's AvgPoolBN: `return self.op(x)`), else None."""
    fn_def = _function_def(inspect.unwrap(fn))
    if fn_def is None or len(fn_def.args.args) != 2:
        return None
    self_name, x_name = (a.arg for a in fn_def.args.args)
    body = [s for s in fn_def.body
            if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    if len(body) != 1 or not isinstance(body[0], ast.Return):
        return None
    call = body[0].value
    if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
            and isinstance(call.func.value, ast.Name) and call.func.value.id == self_name
            and len(call.args) == 1 and not call.keywords
            and isinstance(call.args[0], ast.Name) and call.args[0].id == x_name):
        return call.func.attr
    return None
