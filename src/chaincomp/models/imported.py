"""A user's own network: built from an import spec (`pkg.mod:callable`) or given as an object, then cut
into the zoo's `blocks` + `head` contract on its traced graph, so every technique reads the model itself.

Why cut the graph rather than ask for attributes: exit points, feature-map points, export segments and
costs per block all need "the map after block i"; a torchvision-style model has no such list. torch.fx
traces forward; a *cut* is a point where one tensor is all that later nodes read from earlier ones.
Blocks end at the last 4-D (spatial > 1x1) cut before each next conv/linear layer; the head is what
follows the last one. Blocks ending after a residual merge (add, cat) or a change of spatial size are
the automatic exit points (`auto_exits`); `module_ends` maps module paths that end a block to its index.

Security (a recipe is data and may come from someone else): an `nn.Module` subclass may be named freely
(checked to be one before it is called); any other callable only from a module allowed by
`--allow-import` / `compress(allow_import=...)` (`allow_imports`). Importing the module itself is
the only code that runs before the check, and it must already be installed or on PYTHONPATH.
"""
from __future__ import annotations

import copy
import importlib
import operator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.fx as fx
from torch import nn

from ..errors import UserError
from .classification import Sequential

ALLOWED: ContextVar[frozenset] = ContextVar("chaincomp_allowed_imports", default=frozenset())
GIVEN: ContextVar[dict] = ContextVar("chaincomp_given_models", default={})
WEIGHTED = (nn.Conv2d, nn.Linear)
MERGES = {operator.add, operator.iadd, torch.add, torch.cat, torch.concat, "add", "add_"}


@contextmanager
def allow_imports(modules=(), given: dict | None = None):
    """Within the block, factories of `modules` (and their submodules) may be called by import specs,
    and `given` models (compress(model_object)) rebuild their checkpoints."""
    t1 = ALLOWED.set(ALLOWED.get() | frozenset(modules or ()))
    t2 = GIVEN.set({**GIVEN.get(), **(given or {})})
    try:
        yield
    finally:
        ALLOWED.reset(t1)
        GIVEN.reset(t2)


def _allowed(module: str) -> bool:
    return any(module == a or module.startswith(a + ".") for a in ALLOWED.get())


def resolve(target: str, field: str = "model.import"):
    """The callable `target` names, refused unless it is an nn.Module class or its module is allowed."""
    if not isinstance(target, str) or target.count(":") != 1 or not all(target.split(":")):
        raise UserError(f"{field}: '{target}' is not of the form package.module:callable")
    mod_name, qual = target.split(":")
    try:
        obj = importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001 - whatever the import raised, it is told in one line
        raise UserError(f"{field}: module '{mod_name}' does not import ({type(e).__name__}: {e}); install it or "
                        "put it on PYTHONPATH") from None
    for part in qual.split("."):
        if not hasattr(obj, part):
            raise UserError(f"{field}: module '{mod_name}' has no '{qual}'")
        obj = getattr(obj, part)
    if isinstance(obj, type) and issubclass(obj, nn.Module):
        return obj
    if not callable(obj):
        raise UserError(f"{field}: '{target}' is not callable")
    if not _allowed(mod_name):
        raise UserError(f"{field}: '{target}' is not an nn.Module class; a factory function is called only from a "
                        f"module you allow (--allow-import {mod_name}, or compress(allow_import=['{mod_name}']))")
    return obj


def instantiate(target: str, kwargs: dict | None, field: str = "model") -> nn.Module:
    fn = resolve(target, f"{field}.import")
    try:
        model = fn(**(kwargs or {}))
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's constructor failing is the user's to fix
        raise UserError(f"{field}.kwargs: {target}(**kwargs) failed ({type(e).__name__}: {e})") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"{field}.import: '{target}' returned {type(model).__name__}, not an nn.Module")
    return model


# ---------------------------------------------------------------- cutting the traced graph

def _trace(model: nn.Module, sample: torch.Tensor, where: str) -> fx.GraphModule:
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise UserError(f"{where}: {type(model).__name__} does not trace with torch.fx ({type(e).__name__}: "
                        f"{first}); data-dependent control flow in forward cannot be compressed") from None
    was = model.training
    gm.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(sample[:1])
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{where}: {type(model).__name__} fails on an input of shape {list(sample.shape[1:])} "
                        f"({type(e).__name__}: {str(e)[:160]})") from None
    finally:
        gm.train(was)
    outs = [n for n in gm.graph.nodes if n.op == "output"][0].args[0]
    if not isinstance(outs, fx.Node):
        raise UserError(f"{where}: {type(model).__name__}.forward must return one tensor (logits), not "
                        f"{type(outs).__name__}")
    return gm


def _shape(n: fx.Node):
    tm = n.meta.get("tensor_meta")
    return tuple(tm.shape) if tm is not None and hasattr(tm, "shape") else None


def _is_free(n: fx.Node) -> bool:
    """Nodes that read no tensor of the graph (parameters, constants): copied into the block using them."""
    return n.op == "get_attr"


def _weighted(gm: fx.GraphModule, n: fx.Node) -> bool:
    return n.op == "call_module" and isinstance(gm.get_submodule(n.target), WEIGHTED)


def find_cuts(gm: fx.GraphModule) -> tuple[list[fx.Node], list[int]]:
    """(nodes in order, indices i such that node i is the only value later nodes read from nodes <= i)."""
    nodes = [n for n in gm.graph.nodes if n.op != "output"]
    pos = {n: i for i, n in enumerate(nodes)}
    last_use = {}
    for n in gm.graph.nodes:
        for a in n.all_input_nodes:
            if not _is_free(a):
                last_use[a] = max(last_use.get(a, -1), pos.get(n, len(nodes)))
    cuts, open_ = [], set()
    for i, n in enumerate(nodes):
        if not _is_free(n) and last_use.get(n, -1) > i:
            open_.add(n)
        open_ = {a for a in open_ if last_use[a] > i}
        if open_ == {n} and n.op != "placeholder":
            cuts.append(i)
    return nodes, cuts


def block_ends(gm: fx.GraphModule) -> tuple[list[fx.Node], list[int]]:
    """Node indices that end blocks: in each stretch between two weighted layers, the last cut whose
    map is 4-D and larger than 1x1."""
    nodes, cuts = find_cuts(gm)
    weighted = [i for i, n in enumerate(nodes) if _weighted(gm, n)]
    ends = []
    for c in cuts:
        s = _shape(nodes[c])
        if s is None or len(s) != 4 or s[2] * s[3] <= 1:
            continue
        nxt = next((w for w in weighted if w > c), None)
        if ends and next((w for w in weighted if w > ends[-1]), None) == nxt:
            ends[-1] = c          # same stretch: a later cut (after the activation or pooling) wins
        else:
            ends.append(c)
    if not ends:
        raise UserError(f"model: {type(gm).__name__} has no point where one 4-D feature map carries everything "
                        "forward; it cannot be cut into blocks")
    return nodes, ends


def _segment(gm: fx.GraphModule, nodes: list[fx.Node], start: int, stop: int, inp: fx.Node,
             out: fx.Node | None = None) -> fx.GraphModule:
    """Nodes start..stop (inclusive) as a GraphModule reading `inp` (the previous cut or the input) and
    returning `out` (default: the last of them)."""
    g = fx.Graph()
    env = {inp: g.placeholder("x")}
    free = {}

    def arg(a: fx.Node):
        if a in env:
            return env[a]
        if _is_free(a):
            if a not in free:
                free[a] = g.node_copy(a, arg)
            return free[a]
        raise RuntimeError(f"node {a.name} crosses a cut")   # find_cuts guarantees it does not happen

    for n in nodes[start:stop + 1]:
        if n.op == "placeholder" or _is_free(n):
            continue
        env[n] = g.node_copy(n, arg)
    g.output(env[out if out is not None else nodes[stop]])
    return fx.GraphModule(gm, g, class_name="Block")


def _module_of(n: fx.Node) -> list[str]:
    stack = [k.split("@")[0] for k in (n.meta.get("nn_module_stack") or {})]   # "relu@2": a reused module
    return stack + ([n.target] if n.op == "call_module" else [])


def to_blocks(model: nn.Module, sample: torch.Tensor, where: str = "model") -> Sequential:
    """The model cut into blocks + head (same parameters, same function); see the module docstring."""
    gm = _trace(model, sample, where)
    nodes, ends = block_ends(gm)
    output = [n for n in gm.graph.nodes if n.op == "output"][0].args[0]
    inp = nodes[0]
    blocks, auto, names, start = [], [], {}, 0
    last_node: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for p in _module_of(n):
            last_node[p] = i
    in_shape = _shape(inp)
    for k, e in enumerate(ends):
        blocks.append(_segment(gm, nodes, start, e, inp))
        seg_nodes = nodes[start:e + 1]
        out_shape = _shape(nodes[e])
        merged = any(n.op in ("call_function", "call_method") and n.target in MERGES
                     and len([a for a in n.all_input_nodes if not _is_free(a)]) >= 2 for n in seg_nodes)
        if merged or (in_shape and out_shape and in_shape[2:] != out_shape[2:]):
            auto.append(k)
        for p, i in last_node.items():
            if i == e and p:
                names[p] = k
        inp, in_shape, start = nodes[e], out_shape, e + 1
    if nodes.index(output) <= ends[-1]:
        raise UserError(f"{where}: {type(model).__name__} returns a feature map, not class scores; "
                        "only classifiers can be cut into blocks and a head")
    head = _segment(gm, nodes, start, len(nodes) - 1, inp, output)
    net = Sequential(blocks, head)
    net.auto_exits = [k for k in auto if k < len(blocks) - 1]
    net.module_ends = names
    net.train(model.training)
    return net


# ---------------------------------------------------------------- the spec a checkpoint records

def build(spec: dict, weights: dict | None = None, where: str = "model") -> Sequential:
    """Build and cut a model from its spec: {"import": "pkg.mod:callable", "kwargs": {...}, "input": [C, H, W]}
    or {"given": key, ...} for an object passed to compress() (found in `GIVEN`)."""
    if spec.get("given"):
        given = GIVEN.get().get(spec["given"])
        if given is None:
            raise UserError(f"{where}: this run's model was passed to compress() as an object ({spec.get('class')}); "
                            "pass the same model again (compress(model, ..., resume=True), or load within "
                            "chaincomp.models.imported.allow_imports(given={'model': model}))")
        raw = copy.deepcopy(given)
    else:
        raw = instantiate(spec["import"], spec.get("kwargs"), where)
    if weights is not None:
        try:
            raw.load_state_dict(weights, strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0][:200]
            raise UserError(f"{where}.weights: do not fit {spec.get('import') or spec.get('class')} ({first})") from None
    sample = torch.zeros(2, *spec["input"])
    net = to_blocks(raw, sample, where)
    net.chaincomp_arch = {"model": dict(spec), "transforms": []}
    return net


def is_spec(spec: dict) -> bool:
    return "import" in spec or "given" in spec
