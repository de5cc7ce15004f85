"""Packed rows: many prompts in one sequence, the tokens they share computed once.

Prompts that share leading tokens (the demonstrations of an ICL prompt set, a
task definition, a chat header) form a prefix tree over their token ids. A
packed row holds a piece of that tree in depth-first order: a shared prefix
once, then every continuation of it, each continuation attending to its
ancestors and to itself only (a 4-D block mask, :func:`attention_mask`) and
numbering its positions from where its prefix ends. Under a causal model every
token then sees exactly the tokens before it in its own prompt, at the
positions it has there, so its states are those of that prompt run alone.
Prompts that share nothing are packed side by side (a block-diagonal mask),
which removes padding.

This module plans rows from token ids (no model); the capture lives in
:func:`tunelens.models.hidden_states.capture_packed`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from tunelens.models.wrappers import unwrap_model

MIN_ROW_TOKENS = 256
MAX_ROW_TOKENS = 4096


@dataclass
class PrefixNode:
    """A run of tokens of the prefix tree; ``depth`` tokens precede it on every path through it."""

    tokens: list[int]
    depth: int
    children: list[PrefixNode] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)  # prompts whose last token is this node's last


@dataclass(frozen=True)
class PackedRow:
    """One packed sequence.

    ``ids`` and ``positions`` per token; ``segments[t]`` is the segment (tree
    node) token t belongs to and ``parents[s]`` the segment that segment s
    continues (-1 for a segment that starts a prompt); ``ends`` maps each
    prompt captured in this row to the row index of its last token.
    """

    ids: list[int]
    positions: list[int]
    segments: list[int]
    parents: list[int]
    ends: dict[int, int]


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def prefix_tree(prompts: Sequence[Sequence[int]]) -> PrefixNode:
    """The compressed prefix tree of ``prompts`` (non-empty token id lists); the root has no tokens.

    Built from the prompts in sorted order, where each prompt's shared part
    with the tree is its common prefix with the previous one.
    """
    root = PrefixNode([], 0)
    path = [root]  # the branch of the previous prompt, root first
    previous: Sequence[int] = ()
    for index in sorted(range(len(prompts)), key=lambda i: list(prompts[i])):
        ids = list(prompts[index])
        if not ids:
            raise ValueError(f"prompt {index} has no tokens")
        shared = _common_length(previous, ids)
        while len(path) > 1 and path[-1].depth >= shared:
            path.pop()
        top = path[-1]
        if top.depth + len(top.tokens) > shared:  # split the node where the prompts diverge
            cut = shared - top.depth
            head = PrefixNode(top.tokens[:cut], top.depth, children=[top])
            parent = path[-2]
            parent.children[parent.children.index(top)] = head
            top.tokens, top.depth = top.tokens[cut:], shared
            path[-1] = top = head
        if len(ids) > shared:
            node = PrefixNode(ids[shared:], shared)
            top.children.append(node)
            path.append(node)
        else:  # the prompt is the path so far (a duplicate, or a prefix of the next prompts)
            node = top
        node.ends.append(index)
        previous = ids
    return root


def shared_tokens(root: PrefixNode) -> int:
    """The longest prefix that two or more prompts share (what a row must repeat to continue it)."""
    longest, stack = 0, list(root.children)
    while stack:
        node = stack.pop()
        if node.children:
            longest = max(longest, node.depth + len(node.tokens))
            stack += node.children
    return longest


def row_budget(shared: int, hidden_size: int) -> int:
    """Tokens per row that minimise the cost per new token, clamped to [256, 4096].

    A row of ``B`` tokens that repeats a prefix of ``P`` tokens computes
    ``B - P`` new tokens; its linear layers cost about ``24 d^2`` FLOPs per
    token per layer (``d`` = hidden size) and its dense masked attention
    ``4 d B`` per token per layer, so the cost per new token is ``(a B + b B^2) /
    (B - P)`` with ``a / b = 6 d``, least at ``B = P + sqrt(P^2 + 6 d P)``. The
    lower clamp keeps per-forward overhead small where nothing is shared, the
    upper one the ``B^2`` mask and attention memory.
    """
    best = shared + math.sqrt(shared * shared + 6 * hidden_size * shared)
    return int(min(MAX_ROW_TOKENS, max(MIN_ROW_TOKENS, math.ceil(best))))


class _RowBuilder:
    def __init__(self) -> None:
        self.ids: list[int] = []
        self.positions: list[int] = []
        self.segments: list[int] = []
        self.parents: list[int] = []
        self.ends: dict[int, int] = {}
        self.segment_of: dict[int, int] = {}  # id(node) -> its segment in this row

    def add(self, node: PrefixNode, parent: PrefixNode | None, *, capture: bool) -> None:
        segment = len(self.parents)
        self.parents.append(-1 if parent is None else self.segment_of[id(parent)])
        self.segment_of[id(node)] = segment
        self.ids += node.tokens
        self.positions += range(node.depth, node.depth + len(node.tokens))
        self.segments += [segment] * len(node.tokens)
        if capture:
            for prompt in node.ends:
                self.ends[prompt] = len(self.ids) - 1

    def row(self) -> PackedRow:
        return PackedRow(self.ids, self.positions, self.segments, self.parents, self.ends)


def pack_rows(
    prompts: Sequence[Sequence[int]], max_tokens: int | None = None, *, hidden_size: int = 1024
) -> list[PackedRow]:
    """Rows that together capture every prompt once (``ends``), in depth-first order.

    A row is closed when the next node would take it past ``max_tokens``; the
    next row starts by repeating that node's ancestors. A node that does not
    fit even in a row of its ancestors alone gets such a row to itself (the
    row is longer than ``max_tokens``, as its prompt is). ``max_tokens=None``:
    :func:`row_budget` for the prompts' longest shared prefix and ``hidden_size``.
    """
    root = prefix_tree(prompts)
    budget = row_budget(shared_tokens(root), hidden_size) if max_tokens is None else max_tokens
    if budget < 1:
        raise ValueError(f"max_tokens must be >= 1, got {budget}")
    rows: list[PackedRow] = []
    current = _RowBuilder()
    stack: list[tuple[PrefixNode, tuple[PrefixNode, ...]]] = [
        (c, ()) for c in reversed(root.children)
    ]
    while stack:
        node, ancestors = stack.pop()
        # the ancestors are always in the current row; more than them means the row can close
        if len(current.ids) + len(node.tokens) > budget and len(current.ids) > node.depth:
            rows.append(current.row())
            current = _RowBuilder()
            for i, ancestor in enumerate(ancestors):
                current.add(ancestor, ancestors[i - 1] if i else None, capture=False)
        current.add(node, ancestors[-1] if ancestors else None, capture=True)
        stack += [(c, (*ancestors, node)) for c in reversed(node.children)]
    if current.ids:
        rows.append(current.row())
    return rows


def padded_row(row: PackedRow, width: int, pad_id: int) -> PackedRow:
    """``row`` evened out to ``width`` tokens by one more segment of ``pad_id`` tokens that
    sees only itself (positions 0), so rows of one batch stack; ``row`` itself if it fills
    ``width`` already."""
    pad = width - len(row.ids)
    if pad <= 0:
        return row
    return PackedRow(
        row.ids + [pad_id] * pad,
        row.positions + [0] * pad,
        row.segments + [len(row.parents)] * pad,
        [*row.parents, -1],
        row.ends,
    )


def attention_mask(row: PackedRow, device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean [1, 1, L, L] mask: token i sees token j <= i of its own segment or an ancestor's."""
    n_segments = len(row.parents)
    sees = torch.zeros((n_segments, n_segments), dtype=torch.bool)
    for segment, parent in enumerate(row.parents):
        sees[segment, segment] = True
        if parent >= 0:
            sees[segment] |= sees[parent]  # parents precede their children in the row
    segments = torch.tensor(row.segments)
    visible = sees[segments[:, None], segments[None, :]]
    n = len(row.ids)
    causal = torch.ones((n, n), dtype=torch.bool).tril()
    return (visible & causal)[None, None].to(device)


def model_mask(mask: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """A boolean 4-D ``mask`` as ``model``'s attention applies it.

    SDPA takes the booleans; eager attention adds the mask to its scores, so it
    gets 0 where a token is seen and the weights' dtype's minimum elsewhere.
    """
    inner = unwrap_model(model)
    config = getattr(inner, "config", None)
    if getattr(config, "_attn_implementation", None) != "eager":
        return mask
    dtype = next(inner.parameters()).dtype
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
        ~mask, torch.finfo(dtype).min
    )
