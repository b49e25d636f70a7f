"""The one walker over structures of processes and data.

A structure is a tuple, list or dict of processes (or of data), nested freely; its leaves are
``bd.Process`` objects on one side and tensors or ``bd.Masked`` on the other. Tuples and lists
are interchangeable (a DataLoader turns tuples into lists); dicts match by keys. Every
mismatch raises the same exceptions: TypeError for a wrong kind of container or leaf,
ValueError for a wrong length or set of keys.
"""

import torch
from torch import Tensor

from .masked import Masked
from .process import Process

_SEQUENCES = (tuple, list)


def is_node(x) -> bool:
    """Whether ``x`` is a container of a structure (not a leaf)."""
    return isinstance(x, (tuple, list, dict))


def children(node):
    """(key, child) pairs of a node, in its order."""
    return list(node.items()) if isinstance(node, dict) else list(enumerate(node))


def _keys(d: dict) -> str:
    """A dict's keys as a sorted list, each by repr (so that 0 and '0' differ)."""
    return "[" + ", ".join(sorted(map(repr, d))) + "]"


def _check_match(node, arg, name: str, what: str = "") -> None:
    """Raise unless ``arg`` is a container matching ``node`` (described as ``what``)."""
    what = what or f"the {type(node).__name__} of processes"
    if isinstance(node, dict):
        if not isinstance(arg, dict):
            raise TypeError(f"{name} must be a dict with keys {_keys(node)} to match "
                            f"{what}, got {type(arg).__name__}")
        if set(arg) != set(node):
            raise ValueError(f"{name} has keys {_keys(arg)} but {what} has "
                             f"{_keys(node)}")
        return
    if not isinstance(arg, _SEQUENCES):
        raise TypeError(f"{name} must be a tuple or list of {len(node)} components to match "
                        f"{what}, got {type(arg).__name__}")
    if len(arg) != len(node):
        raise ValueError(f"{name} has {len(arg)} components but {what} has {len(node)}")


def _rebuild(like, keys, values):
    """A container of ``like``'s kind holding ``values`` under ``keys``."""
    if isinstance(like, dict):
        return dict(zip(keys, values))
    return type(like)(values) if type(like) in _SEQUENCES else tuple(values)


def map_tree(fn, process, args, names, *, shared=(), out=0, _path=""):
    """Apply ``fn(leaf_process, *leaf_args)`` over the structure of ``process``.

    Args:
        fn: called once per leaf process with the matching leaves of ``args``.
        process: a ``bd.Process`` or a structure of them.
        args: the data arguments, each a structure matching ``process``.
        names: the arguments' names, for error messages.
        shared: indices of arguments that may also be a single leaf shared by every
            component (times, eta); given as a matching structure they are split.
        out: index of the argument whose container kinds the result takes (tuple or list;
            dicts stay dicts); the process's kinds where that argument is shared.
    """
    if is_node(process):
        for i, (a, name) in enumerate(zip(args, names)):
            if i not in shared or is_node(a):
                _check_match(process, a, name)
        keys = [k for k, _ in children(process)]
        results = []
        for key in keys:
            leaf_args = tuple(a[key] if (i not in shared or is_node(a)) else a
                              for i, a in enumerate(args))
            leaf_names = tuple(f"{n}[{key!r}]" for n in names)
            results.append(map_tree(fn, process[key], leaf_args, leaf_names, shared=shared,
                                    out=out, _path=f"{_path}[{key!r}]"))
        like = args[out] if len(args) > out and is_node(args[out]) else process
        return _rebuild(like, keys, results)
    if not isinstance(process, Process):
        raise TypeError(f"process must be a bd.Process or a tuple, list or dict of them, "
                        f"got {type(process).__name__}")
    for i, (a, name) in enumerate(zip(args, names)):
        if i in shared and is_node(a):
            raise TypeError(f"{name} is a {type(a).__name__} but its process is a single "
                            f"{type(process).__name__}")
    try:
        return fn(process, *args)
    except (TypeError, ValueError) as error:
        if not _path or type(error) not in (TypeError, ValueError):
            raise           # a single process, or a subclass that may not take one message
        # inside a structure, say which component: two may share a class
        raise type(error)(f"component {_path} ({type(process).__name__}): {error}") from None


def map_data(fn, tree, *others, names=(), what="x"):
    """Apply ``fn`` to the leaves of a data structure and the matching leaves of ``others``
    (checked to match it; ``names`` name them in errors, ``what`` names ``tree``), keeping
    ``tree``'s containers."""
    if not is_node(tree):
        return fn(tree, *others)
    names = tuple(names) + tuple(f"argument {i + 2}" for i in range(len(names), len(others)))
    for other, name in zip(others, names):
        _check_match(tree, other, name, what)
    keys = [k for k, _ in children(tree)]
    return _rebuild(tree, keys, [
        map_data(fn, tree[k], *(o[k] for o in others), names=[f"{n}[{k!r}]" for n in names],
                 what=f"{what}[{k!r}]") for k in keys])


def leaves(tree) -> list:
    """The leaves of a structure, in order."""
    if is_node(tree):
        return [leaf for _, c in children(tree) for leaf in leaves(c)]
    return [tree]


def unmasked(x):
    """The plain tensors of ``x``: each ``bd.Masked`` leaf replaced by its tensor, containers kept.

    Args:
        x: a tensor, ``bd.Masked``, or a (nested) tuple, list or dict of them.
    """
    return map_data(lambda leaf: leaf.x if isinstance(leaf, Masked) else leaf, x)


# ---------------------------------------------------------------- masks at the leaves

def split(x, process: Process, name: str):
    """A data leaf as (tensor, mask or None), the mask checked against the state's shape."""
    if isinstance(x, Masked):
        check_mask(x.mask, x.x, process, name)
        return x.x, x.mask
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor or bd.Masked, got {type(x).__name__}")
    return x, None


def check_mask(mask: Tensor, data: Tensor, process: Process, name: str) -> None:
    """Raise unless ``mask``'s shape is a leading part of the state shape of ``data``."""
    state = data.shape[:max(data.ndim - process.event_ndim, 0)]
    if mask.ndim > len(state) or tuple(state[:mask.ndim]) != tuple(mask.shape):
        raise ValueError(f"{name}'s mask has shape {tuple(mask.shape)}, which is not a leading "
                         f"part of the state shape {tuple(state)} of {type(process).__name__} "
                         f"(the data's shape without its {process.event_ndim} event "
                         f"dimension(s))")


def state_mask(mask: Tensor, data: Tensor, process: Process) -> Tensor:
    """``mask`` broadcast over the trailing state dimensions: the state's shape, (...)."""
    state = data.shape[:data.ndim - process.event_ndim]
    return mask.reshape(mask.shape + (1,) * (len(state) - mask.ndim)).expand(state)


def rewrap(new: Tensor, old: Tensor, mask, process: Process):
    """Keep ``old`` where ``mask`` is False and wrap the result like the input was."""
    if mask is None:
        return new
    keep = state_mask(mask, old, process)
    keep = keep.reshape(keep.shape + (1,) * process.event_ndim)
    return Masked(torch.where(keep, new, old), mask)
