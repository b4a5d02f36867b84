"""Drafters: where candidate tokens come from.

A drafter follows the batch of active requests (rows, in the loop's order) and, each step,
proposes candidates for every row. The loop (``engine.Engine``) calls:

- ``add(requests)``: new requests join at the end of the batch (``request.tokens`` is the prompt).
- ``keep(rows)``: only these rows stay, in this order (finished requests left).
- ``propose(requests, num_draft, temperature, generator) -> Proposal``: up to ``num_draft``
  candidates per row; ``request.tokens`` holds prompt + accepted output, the last token being
  the root that the candidates continue.
- ``update(requests, proposal, outcome)``: what the target accepted (rollback, calibration).

``request`` objects only need ``.index`` (a stable id) and ``.tokens`` (a list of ints).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass
from operator import countOf

import numpy as np
import torch
from torch import Tensor

from . import ops
from .calibration import NGRAM_FEATURES, AcceptanceCalibration
from .estimators import NgramLogistic, token_class_table
from .kv_cache import RaggedKVCache
from .proposal import Outcome, Proposal

__all__ = [
    "NgramDrafter",
    "ModelDrafter",
    "NgramMatch",
    "ngram_match",
    "NgramIndex",
    "match_arrays",
    "transition_agreements",
]


# ------------------------------------------------------------------------------------------
# n-gram (prompt lookup) drafting


@dataclass
class NgramMatch:
    """Continuation of the longest earlier match of a context's suffix, with raw statistics.

    tokens: the drafted continuation. features: one row per token, ``NGRAM_FEATURES`` =
    (match length, number of earlier occurrences of the suffix, fraction of those occurrences
    that continue with this token at this offset, depth starting at 1, transition agreement:
    fraction of the context's occurrences of the token's parent that this token follows,
    see ``transition_agreements``).
    """

    tokens: list[int]
    features: list[tuple[float, float, float, float, float]]


def _agreements(pairs: Counter, parents: Counter, root: int, tokens: list[int]) -> list[float]:
    """``transition_agreements`` from the context's transition counts ``pairs`` ((a, b): how
    often b follows a) and ``parents`` (a: how often a is followed by a token)."""
    out = []
    for parent, token in zip([root] + tokens[:-1], tokens):
        total = parents.get(parent, 0)
        out.append(pairs.get((parent, token), 0) / total if total else 0.0)
    return out


def transition_agreements(context: list[int], tokens: list[int]) -> list[float]:
    """For each drafted token (a chain continuing ``context``): of the places in ``context``
    where its parent (the previous drafted token; for the first, the context's last token)
    is followed by a token, the fraction where that token is this one. Unlike the n-gram
    agreement, which counts only the occurrences of the matched suffix, this asks whether the
    step parent -> token is the context's habit (held-out-free tuning: leave-one-category-out
    Brier 0.0995 -> 0.0961 on the bundled Gemma trace, bench/README.md)."""
    parents = [context[-1]] + tokens[:-1]
    # One pass that keeps only the followers of the (at most len(tokens)) parents in question:
    # 3x cheaper than counting every transition of the context.
    followers: dict[int, list[int]] = {parent: [] for parent in parents}
    for a, b in zip(context, context[1:]):
        if a in followers:
            followers[a].append(b)
    return [
        followers[p].count(t) / len(followers[p]) if followers[p] else 0.0 for p, t in zip(parents, tokens)
    ]


def overlapping_copy(context: list[int], source: int, max_draft: int) -> list[int]:
    """What follows ``context[source]`` onwards, up to ``max_draft`` tokens, copied as LZ77
    copies: past the context's end the copy reads its own tokens, so a suffix that recurs every
    p = len(context) - source tokens drafts that period again and again instead of stopping
    after p tokens. Small models loop (Gemma 3 270M repeats list items and blank lines), and a
    draft cut at the period left such a request 2 tokens a step where k were right (tuning
    traces, bench/README.md "The n-gram drafter's overlapping copy")."""
    period = len(context) - source
    tokens = context[source : source + max_draft]
    while len(tokens) < max_draft:
        tokens.append(tokens[len(tokens) - period])
    return tokens


def ngram_match(context: list[int], max_draft: int, max_ngram: int = 4, min_ngram: int = 1) -> NgramMatch:
    """Prompt-lookup drafting: find the longest suffix of ``context`` (``max_ngram`` down to
    ``min_ngram`` tokens) that occurred earlier, and propose what followed its most recent
    earlier occurrence (up to ``max_draft`` tokens, an ``overlapping_copy``). A token's
    agreement counts the occurrences with a follower at its depth; past the context's end the
    most recent occurrence's follower is the drafted token itself."""
    L = len(context)
    for n in range(min(max_ngram, L - 1), min_ngram - 1, -1):
        suffix = context[L - n :]
        # Earlier occurrences that are followed by at least one token.
        starts = [i for i in range(L - n) if context[i : i + n] == suffix]
        if not starts:
            continue
        source = starts[-1] + n
        tokens = overlapping_copy(context, source, max_draft)
        transitions = transition_agreements(context, tokens)
        features = []
        for depth, token in enumerate(tokens):
            followers = [context[s + n + depth] for s in starts if s + n + depth < L]
            copied = int(source + depth >= L)  # the copy's own token, not one of the context's
            agreement = (sum(f == token for f in followers) + copied) / (len(followers) + copied)
            features.append((float(n), float(len(starts)), agreement, float(depth + 1), transitions[depth]))
        return NgramMatch(tokens, features)
    return NgramMatch([], [])


# An n-gram's followers in `NgramIndex`: the position of its one follower (an int), or the list
# of positions once it has several. Most n-grams of a context occur once, and an int leaves
# nothing for Python's cyclic garbage collector, where a one-element list per n-gram (every
# joining request's prompt adds hundreds) set off full collections of the whole heap, about
# half of the vLLM proposer's step at batch 64 (bench/README.md, "Cheaper policy step (2)").
def _add_followers(index: dict, grams, positions) -> None:
    """Index each n-gram of ``grams`` as followed by the position beside it in ``positions``
    (increasing, each new to ``index``)."""
    for gram, position in zip(grams, positions):
        # One lookup: ``setdefault`` returns the very object it was given when the n-gram is
        # new, and an earlier position (another object) or list when it is not.
        known = index.setdefault(gram, position)
        if known is not position:
            if type(known) is int:
                index[gram] = [known, position]
            else:
                known.append(position)


class NgramIndex:
    """`ngram_match` for one growing context at the cost of its new tokens only.

    For every n in [min_ngram, max_ngram] a dict maps each n-gram to the positions of the tokens
    that followed it, in order; `extend` indexes only the appended tokens, and `match` looks up
    the current suffix instead of scanning the context. `match` returns exactly what
    `ngram_match(tokens, max_draft, max_ngram, min_ngram)` returns (tests/ compare them), so the
    calibrated features mean the same in a serving engine as in the decoding loop.
    """

    def __init__(self, max_ngram: int = 4, min_ngram: int = 1):
        if min_ngram < 1 or max_ngram < min_ngram:
            raise ValueError("NgramIndex: need 1 <= min_ngram <= max_ngram")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.tokens: list[int] = []
        # n -> n-gram -> the positions of the tokens that followed it (`_add_followers`)
        self.followers: dict[int, dict[tuple[int, ...], int | list[int]]] = {
            n: {} for n in range(min_ngram, max_ngram + 1)
        }
        self.pairs: Counter = Counter()  # (a, b): how often b follows a (transition agreements)
        self.parents: Counter = Counter()  # a: how often a is followed by a token

    def extend(self, tokens: list[int]) -> None:
        # A step's few tokens: one short loop each. A prompt: whole-slice passes (zip,
        # Counter.update), half the time per token but ~7 us to set up (measured crossover ~16).
        if len(tokens) > 16:
            return self._extend_many(tokens)
        context, pairs, parents = self.tokens, self.pairs, self.parents
        tail = tuple(context[-self.max_ngram :])  # the last tokens: every n-gram ending there
        for token in tokens:
            p = len(context)  # the new token follows the n-grams that end at p - 1
            if p:
                parent = context[-1]
                pairs[parent, token] = pairs.get((parent, token), 0) + 1
                parents[parent] = parents.get(parent, 0) + 1
            context.append(token)
            for n, index in self.followers.items():  # n increasing
                if p < n:
                    break
                gram = tail[-n:]
                known = index.setdefault(gram, p)  # as in _add_followers, inlined (per token)
                if known is not p:
                    if type(known) is int:
                        index[gram] = [known, p]
                    else:
                        known.append(p)
            tail = (tail if len(tail) < self.max_ngram else tail[1:]) + (token,)

    def _extend_many(self, tokens: list[int]) -> None:
        context = self.tokens
        start = len(context)
        context.extend(tokens)
        end = len(context)
        head = max(start - 1, 0)
        self.pairs.update(zip(context[head : end - 1], context[head + 1 : end]))
        self.parents.update(context[head : end - 1])
        for n, index in self.followers.items():
            first = max(start, n)  # the first new position that follows a whole n-gram
            grams = zip(*(context[first - n + i : end - n + i] for i in range(n)))
            _add_followers(index, grams, range(first, end))

    def follower_positions(self, n: int) -> list[int]:
        """Where the context's last ``n`` tokens occurred before: the positions of the tokens that
        followed them, increasing ([] when they did not occur, or n is outside the index)."""
        L = len(self.tokens)
        if not self.min_ngram <= n <= min(self.max_ngram, L - 1):
            return []
        positions = self.followers[n].get(tuple(self.tokens[L - n :]))
        if positions is None:
            return []
        return [positions] if type(positions) is int else list(positions)

    def match(self, max_draft: int) -> NgramMatch:
        context, L = self.tokens, len(self.tokens)
        for n in range(min(self.max_ngram, L - 1), self.min_ngram - 1, -1):
            positions = self.followers[n].get(tuple(context[L - n :]))
            if positions is None:
                continue
            source = positions if type(positions) is int else positions[-1]
            tokens = overlapping_copy(context, source, max_draft)
            transitions = _agreements(self.pairs, self.parents, context[-1], tokens)
            if type(positions) is int:
                # One occurrence: every depth agrees with itself (a follower in the context is
                # the copied token; past its end the copy's own token counts), as ngram_match.
                return NgramMatch(
                    tokens, [(float(n), 1.0, 1.0, float(depth + 1), t) for depth, t in enumerate(transitions)]
                )
            occurrences = float(len(positions))
            features = []
            for depth, token in enumerate(tokens):
                # Positions increase: those with a follower at this depth (p + depth < L) are a
                # prefix; map / count run in C (the same counts as a comprehension).
                followed = bisect_left(positions, L - depth)
                following = map(context.__getitem__, map(depth.__add__, positions[:followed]))
                copied = int(source + depth >= L)  # as ngram_match: the copy's own token
                agreement = (countOf(following, token) + copied) / (followed + copied)
                features.append((float(n), occurrences, agreement, float(depth + 1), transitions[depth]))
            return NgramMatch(tokens, features)
        return NgramMatch([], [])


def match_arrays(matches: list[NgramMatch], num_draft: int) -> tuple[Tensor, Tensor]:
    """Matches as a batch: tokens [B, num_draft] int64 (-1: none) and raw features
    [B, num_draft, len(NGRAM_FEATURES)] float32 (0: none). Filled as numpy arrays, one
    conversion each: a tensor per match costs more than the matching itself."""
    tokens = np.full((len(matches), num_draft), -1, dtype=np.int64)
    features = np.zeros((len(matches), num_draft, len(NGRAM_FEATURES)), dtype=np.float32)
    for b, match in enumerate(matches):
        if match.tokens:
            tokens[b, : len(match.tokens)] = match.tokens
            features[b, : len(match.tokens)] = match.features
    return torch.from_numpy(tokens), torch.from_numpy(features)


class NgramDrafter:
    """Model-free drafting from the prompt and the output so far (longest suffix match).

    Each drafted token's acceptance probability comes from ``calibration`` applied to the raw
    match statistics, which the proposal carries as ``features``. The default is
    ``estimators.NgramLogistic()``: a batched logistic model with the shipped prior, learning
    online, scored and updated once per step for the whole batch (held-out Brier -23.8% vs a
    constant rate without token classes, bench/README.md "Held-out estimates and the
    cost-aware policy"; against the old default on the tuning traces, "The default n-gram
    estimator"). With a tokenizer, ``NgramDrafter.with_tokenizer`` adds its token classes
    (held-out Brier -26.1%). The older ``calibration.AcceptanceCalibration`` (match-length
    statistics, one SGD step per token, per-request offsets) stays available by passing it;
    any object with ``predict`` / ``update`` (per request) or ``predict_batch`` /
    ``update_batch`` (per batch) and ``forget`` works.
    Each request's context is indexed incrementally (one ``NgramIndex`` per request, built at
    its first proposal and extended by the tokens it gained since): a step costs its new tokens,
    not a rescan of the context, and drafts exactly what ``ngram_match`` drafts. A request
    whose tokens are not an extension of what was indexed (a rollback, a reused id) is indexed
    afresh. A request's own state (index, calibration) is dropped when it leaves the batch
    (``keep``, ``release``), so memory is bounded by the requests in flight and request ids may
    be reused (every ``generate`` call numbers its prompts from 0).
    """

    def __init__(
        self,
        max_draft: int,
        max_ngram: int = 4,
        min_ngram: int = 1,
        calibration: NgramLogistic | AcceptanceCalibration | None = None,
    ):
        if max_draft < 1 or min_ngram < 1 or max_ngram < min_ngram:
            raise ValueError("NgramDrafter: need max_draft >= 1 and 1 <= min_ngram <= max_ngram")
        self.max_draft, self.max_ngram, self.min_ngram = max_draft, max_ngram, min_ngram
        self.calibration = calibration if calibration is not None else NgramLogistic()
        self._request_ids: list[int] = []  # the batch's rows, for `keep`
        self._indexes: dict[int, NgramIndex] = {}  # per request id: its context's n-gram index
        self._roots: Tensor | None = None  # the last proposal's roots, for `update`

    @classmethod
    def with_tokenizer(
        cls, tokenizer, max_draft: int, max_ngram: int = 4, min_ngram: int = 1, vocab_size: int | None = None
    ) -> NgramDrafter:
        """The recommended drafter for a target with this (Hugging Face) tokenizer: the default
        ``NgramLogistic`` with the vocabulary's token classes (``estimators.token_class_table``,
        built once here) and their prior. ``vocab_size``: the model's, when it exceeds the
        tokenizer's (ids past the tokenizer count as "other")."""
        classes = token_class_table(tokenizer, vocab_size)
        return cls(max_draft, max_ngram, min_ngram, calibration=NgramLogistic(token_classes=classes))

    def add(self, requests) -> None:
        self._request_ids += [r.index for r in requests]

    def keep(self, rows: list[int]) -> None:
        """Only these rows stay; the calibration forgets the requests that left."""
        kept = [self._request_ids[i] for i in rows]
        # Indexes of requests proposed for without `add` go too: only the kept rows stay.
        self.release((set(self._request_ids) | self._indexes.keys()) - set(kept))
        self._request_ids = kept

    def release(self, request_ids) -> None:
        """Forget the per-request state (n-gram index, calibration) of finished requests (for
        callers that track requests by id rather than through add / keep)."""
        for request in request_ids:
            self._indexes.pop(request, None)
            self.calibration.forget(request)

    @property
    def indexed_requests(self) -> set[int]:
        """The requests whose n-gram index is held (proposed for and not released)."""
        return set(self._indexes)

    def _match(self, request, num_draft: int) -> NgramMatch:
        """``ngram_match(request.tokens, ...)`` through the request's incremental index."""
        tokens, index = request.tokens, self._indexes.get(request.index)
        # The tokens must extend what was indexed (a full compare: cheap, the index holds the
        # same int objects, and a rolled-back or reused request must not draft from stale text).
        if index is None or len(tokens) < len(index.tokens) or tokens[: len(index.tokens)] != index.tokens:
            index = self._indexes[request.index] = NgramIndex(self.max_ngram, self.min_ngram)
        index.extend(tokens[len(index.tokens) :])
        return index.match(num_draft)

    def propose(self, requests, num_draft: int, temperature: float = 0.0, generator=None) -> Proposal:
        num_draft = min(num_draft, self.max_draft)
        matches = [self._match(r, num_draft) for r in requests]
        roots = [r.tokens[-1] for r in requests]
        return self.proposal_from_matches(matches, [r.index for r in requests], num_draft, roots)

    def proposal_from_matches(
        self,
        matches: list[NgramMatch],
        request_ids: list[int],
        num_draft: int,
        roots: list[int] | None = None,
    ) -> Proposal:
        """Proposal for raw matches (also what a replay of stored matches calls). ``roots``:
        each request's last token, the parent of its first draft (a batched estimator's
        transition memory keys on it; ``update`` reuses this step's)."""
        self._roots = None if roots is None else torch.tensor(roots, dtype=torch.long)
        tokens, features = match_arrays(matches, num_draft)
        token_logprobs = torch.full(tokens.shape, float("-inf"))
        if hasattr(self.calibration, "predict_batch"):  # one call for the whole batch (NgramLogistic)
            estimates = (
                self.calibration.predict_batch(features, request_ids, tokens, self._roots).log().float()
            )
            token_logprobs = torch.where(tokens >= 0, estimates, token_logprobs)
        else:
            for b, (match, request) in enumerate(zip(matches, request_ids)):
                if n := len(match.tokens):
                    token_logprobs[b, :n] = self.calibration.predict(features[b, :n], request).log().float()
        cum_logprobs = token_logprobs.cumsum(1)  # chains: the path is the prefix
        return Proposal(tokens, None, token_logprobs, cum_logprobs, features=features)

    def update(self, requests, proposal: Proposal, outcome: Outcome) -> None:
        tested = outcome.tested(proposal)
        if hasattr(self.calibration, "update_batch"):  # one call for the whole batch
            ids = [r.index for r in requests]
            self.calibration.update_batch(
                proposal.features, ids, tested, outcome.accepted, proposal.tokens, self._roots
            )
            return
        for b, request in enumerate(requests):
            if tested[b].any():
                self.calibration.update(
                    proposal.features[b, tested[b]], request.index, outcome.accepted[b, tested[b]]
                )


# ------------------------------------------------------------------------------------------
# drafting with a small model


def _pick(logits: Tensor, count: int, temperature: float, generator) -> Tensor:
    """[..., V] -> [..., count] tokens: top-``count`` (greedy), or one sample when count == 1
    and temperature > 0."""
    if temperature > 0 and count == 1:
        probs = torch.softmax(logits / temperature, dim=-1)
        flat = probs.reshape(-1, probs.shape[-1])
        return torch.multinomial(flat, 1, generator=generator).reshape(*logits.shape[:-1], 1)
    return logits.topk(count, dim=-1).indices


class ModelDrafter:
    """Drafting with a small causal LM sharing the target's vocabulary.

    ``tree_width == 1``: a chain of ``num_draft`` tokens (greedy at temperature 0, sampled
    otherwise). ``tree_width > 1``: a tree grown level by level, each frontier node offering its
    top-``tree_width`` children and the ``tree_width`` children with the highest path
    probability becoming the next frontier, until ``num_draft`` nodes (EAGLE-2 style); children
    are deterministic, so sampling verification treats them without draft probabilities.

    ``score_temperature``: at temperature 0, the candidates' scores (their acceptance estimates)
    are the draft's probabilities at this temperature; a value below 1 sharpens an
    underconfident draft (fit it on held-out text, e.g. bench/qwen_calibration.py). The drafted
    tokens do not change, nor does anything when sampling.

    Stopping early (each draft level is one sequential forward of the draft model, which on a
    CPU costs a large part of a target forward): a deeper level is drafted only while it can
    still matter. ``min_path_prob``: stop once no row's newest node has an estimated path
    probability (the score a policy ranks by) of at least this; deeper candidates score at most
    their parent, so a policy that never verifies below this floor (``Tetris(..., min_prob=p)``;
    ``ThresholdSD(t)``, whose floor is ``1 - t``) selects exactly what it would have without
    the cut, for fewer draft forwards; a higher floor also drops candidates the policy would
    have verified. ``min_mean_path_prob``: stop once the rows' newest nodes
    have a mean path probability below this (per row the sum over its newest nodes, at most 1:
    a bound on the tokens the next level can add); a cost rule: a draft forward pays only if
    the batch expects enough accepted tokens from it. The proposal then has fewer candidates
    than ``num_draft``; the output of greedy decoding does not change (verification decides).

    The draft model keeps its own ``RaggedKVCache``: accepted tokens stay, the rest of the
    step's tree is rolled back, and tokens it has not seen yet (the bonus token, or the last
    accepted draft) are fed at the start of the next step.
    """

    def __init__(
        self,
        model,
        max_draft: int,
        tree_width: int = 1,
        score_temperature: float = 1.0,
        min_path_prob: float | None = None,
        min_mean_path_prob: float | None = None,
    ):
        if max_draft < 1 or tree_width < 1 or not score_temperature > 0:
            raise ValueError("ModelDrafter: need max_draft >= 1, tree_width >= 1 and score_temperature > 0")
        for name, value in (("min_path_prob", min_path_prob), ("min_mean_path_prob", min_mean_path_prob)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"ModelDrafter: {name} must be in [0, 1] or None, got {value}")
        self.model, self.max_draft, self.tree_width = model, max_draft, tree_width
        self.score_temperature = score_temperature
        self.min_path_prob, self.min_mean_path_prob = min_path_prob, min_mean_path_prob
        self.cache = RaggedKVCache(model)
        self._node_columns: Tensor | None = None  # [B, N] cache column of each candidate, -1 if not fed

    @torch.inference_mode()
    def add(self, requests) -> None:
        joining = RaggedKVCache(self.model)
        joining.append([r.tokens[:-1] for r in requests])
        self.cache.extend(joining)

    @torch.inference_mode()
    def keep(self, rows: list[int]) -> None:
        self.cache.select_rows(torch.tensor(rows, dtype=torch.long, device=self.cache.device))

    @torch.inference_mode()
    def propose(self, requests, num_draft: int, temperature: float = 0.0, generator=None) -> Proposal:
        num_draft = min(num_draft, self.max_draft)
        # Catch up on accepted tokens the draft model has not seen (always the root, sometimes
        # the last accepted draft before it).
        seen = self.cache.lengths().tolist()
        root_logits = self.cache.append([r.tokens[n:] for r, n in zip(requests, seen)], last_logits=True)
        if self.tree_width == 1:
            tokens, parents, rows = self._grow_chain(root_logits, num_draft, temperature, generator)
        else:
            tokens, parents, rows = self._grow_tree(root_logits, num_draft)
        sampled = temperature > 0 and self.tree_width == 1
        # Acceptance estimate of each candidate: its draft probability. For *sampled* tokens,
        # the draft's confidence at the node (the probability of its most likely token) stands
        # in: whether a sampled token is verified must not depend on the token itself, or the
        # output distribution is no longer the target's (a policy could favour tokens the draft
        # over-estimates). It may depend on the ancestors, which the cumulative sum does.
        scored = rows.argmax(-1) if sampled else tokens
        token_logprobs, cum_logprobs = ops.draft_cumprod(
            rows, scored, parents, temperature if temperature > 0 else self.score_temperature
        )
        draft_probs = torch.softmax(rows / temperature, dim=-1) if sampled else None
        return Proposal(tokens, parents, token_logprobs, cum_logprobs, draft_probs=draft_probs)

    def _feed(self, tokens: Tensor, positions: Tensor, block_mask: Tensor, extra: Tensor) -> Tensor:
        """Feed uncommitted draft nodes; returns their logits [B, q, V] and records nothing."""
        B, q = tokens.shape
        logits = self.cache.forward(
            tokens, positions, block_mask, extra, logits_at=torch.ones_like(tokens, dtype=torch.bool)
        )
        return logits.reshape(B, q, -1)

    def _grow_chain(self, logits: Tensor, num_draft: int, temperature: float, generator):
        """A chain: pick a token from the current logits, feed it, repeat (the last is not fed)."""
        B, V = logits.shape
        device = logits.device
        next_position = self.cache.lengths()  # position of candidate 0
        tokens, rows, fed_columns = [], [], []  # every row feeds depth d into the same column
        one = torch.ones(B, 1, 1, dtype=torch.bool, device=device)
        path = torch.zeros(B, device=device)  # the newest token's score, for stopping early
        for depth in range(num_draft):
            token = _pick(logits, 1, temperature, generator)[:, 0]
            tokens.append(token)
            rows.append(logits)
            if depth == num_draft - 1:
                break
            if self._cuts:
                path = path + self._score_logprobs(logits, token, temperature)
                if not self._keep_drafting(path[:, None]):
                    break
            # The new token sees the committed text and the chain drafted so far this step.
            extra = torch.zeros(B, 1, self.cache.width, dtype=torch.bool, device=device)
            extra[:, :, fed_columns] = True
            fed_columns.append(self.cache.width)
            logits = self._feed(token[:, None], (next_position + depth)[:, None], one, extra)[:, 0]
        columns = fed_columns + [-1] * (len(tokens) - len(fed_columns))
        self._node_columns = torch.tensor(columns, dtype=torch.long, device=device).expand(B, len(tokens))
        if not tokens:
            return torch.zeros(B, 0, dtype=torch.long, device=device), None, logits.new_zeros(B, 0, V)
        return torch.stack(tokens, 1), None, torch.stack(rows, 1)

    @property
    def _cuts(self) -> bool:
        return self.min_path_prob is not None or self.min_mean_path_prob is not None

    def _score_logprobs(self, logits: Tensor, token: Tensor, temperature: float) -> Tensor:
        """[B] the score (log acceptance estimate) ``propose`` gives ``token`` picked from ``logits``:
        draft log-probability at the score temperature (sampled tokens: the node's confidence)."""
        sampled = temperature > 0 and self.tree_width == 1
        scored = logits.argmax(-1) if sampled else token
        t = temperature if temperature > 0 else self.score_temperature
        return torch.log_softmax(logits / t, dim=-1).gather(-1, scored[:, None])[:, 0]

    def _keep_drafting(self, newest_path_logprobs: Tensor) -> bool:
        """Whether another draft level can matter (see the class docstring), from the path
        log-probabilities [B, n] of each row's newest nodes."""
        probs = newest_path_logprobs.exp()
        if self.min_path_prob is not None and not bool((probs >= self.min_path_prob).any()):
            return False
        if self.min_mean_path_prob is not None:
            reach = probs.sum(1).clamp(max=1.0)  # P(some newest node is accepted), mutually exclusive
            if float(reach.mean()) < self.min_mean_path_prob:
                return False
        return True

    def _grow_tree(self, root_logits: Tensor, num_draft: int):
        B, V = root_logits.shape
        device = root_logits.device
        width = self.tree_width
        base = self.cache.lengths()  # position of depth-1 nodes
        tokens = torch.zeros(B, 0, dtype=torch.long, device=device)
        parents = torch.zeros(B, 0, dtype=torch.long, device=device)
        rows = root_logits.new_zeros(B, 0, V)
        path = root_logits.new_zeros(B, 0)  # cumulative log-probability of each node
        score_path = path  # the same at the score temperature (for stopping early)
        columns = torch.zeros(B, 0, dtype=torch.long, device=device)
        ancestors = torch.zeros(B, 0, 0, dtype=torch.bool, device=device)  # [B, n, n], self included
        # Frontier: the nodes whose children are offered next; at first only the root.
        frontier = torch.full((B, 1), -1, dtype=torch.long, device=device)
        frontier_logits = root_logits[:, None]
        depth = 0
        while tokens.shape[1] < num_draft:
            F = frontier.shape[1]
            # Every frontier node offers its top-`width` children ...
            top = frontier_logits.topk(width, dim=-1).indices  # [B, F, width]
            child_tokens = top.reshape(B, F * width)
            child_logprobs = _child_logprobs(frontier_logits, top, 1.0)
            child_path = child_logprobs + _parent_path(path, frontier).repeat_interleave(width, dim=1)
            # ... and the best `width` of them (by path probability) join the tree.
            take = min(width, num_draft - tokens.shape[1])
            best = child_path.topk(take, dim=1).indices.sort(dim=1).values  # keep a stable order
            n0 = tokens.shape[1]
            tokens = torch.cat([tokens, child_tokens.gather(1, best)], 1)
            parents = torch.cat([parents, frontier.gather(1, best // width)], 1)
            rows = torch.cat(
                [rows, frontier_logits.gather(1, (best // width)[:, :, None].expand(B, take, V))], 1
            )
            path = torch.cat([path, child_path.gather(1, best)], 1)
            if self._cuts:
                child_scores = (
                    child_logprobs
                    if self.score_temperature == 1
                    else _child_logprobs(frontier_logits, top, self.score_temperature)
                )
                child_scores = child_scores + _parent_path(score_path, frontier).repeat_interleave(
                    width, dim=1
                )
                score_path = torch.cat([score_path, child_scores.gather(1, best)], 1)
            new = torch.arange(n0, n0 + take, device=device)
            ancestors = _extend_ancestors(ancestors, parents[:, n0:])
            depth += 1
            if tokens.shape[1] >= num_draft or (self._cuts and not self._keep_drafting(score_path[:, n0:])):
                columns = torch.cat([columns, torch.full((B, take), -1, dtype=torch.long, device=device)], 1)
                break
            # Feed the new nodes: each sees the committed text, its ancestors and itself.
            width_before = self.cache.width
            extra = _columns_mask(ancestors[:, n0:, :n0], columns, width_before)
            columns = torch.cat(
                [columns, (width_before + torch.arange(take, device=device)).expand(B, take)], 1
            )
            own = torch.eye(take, dtype=torch.bool, device=device).expand(B, take, take)
            positions = (base + depth - 1)[:, None].expand(B, take)
            frontier_logits = self._feed(tokens[:, n0:], positions, own, extra)
            frontier = new.expand(B, take)
        self._node_columns = columns
        return tokens, parents, rows

    @torch.inference_mode()
    def update(self, requests, proposal: Proposal, outcome: Outcome) -> None:
        """Keep the accepted candidates the draft model was fed; the rest of the tree rolls back."""
        path = outcome.accepted_path
        if self._node_columns is not None and path.shape[1] and self._node_columns.shape[1]:
            kept = torch.where(path >= 0, self._node_columns.gather(1, path.clamp(min=0)), -1)
            self.cache.commit(kept)
        self._node_columns = None
        self.cache.maybe_compact()


def _child_logprobs(frontier_logits: Tensor, top: Tensor, temperature: float) -> Tensor:
    """[B, F, V] logits of the frontier nodes, [B, F, w] their children's tokens -> [B, F * w]
    draft log-probabilities (one log-softmax per frontier node, not per child)."""
    B, F, w = top.shape
    return torch.log_softmax(frontier_logits.float() / temperature, dim=-1).gather(2, top).reshape(B, F * w)


def _parent_path(path: Tensor, frontier: Tensor) -> Tensor:
    """[B, F] path log-probability of each frontier node (0 for the root, -1)."""
    if not path.shape[1]:
        return path.new_zeros(frontier.shape)
    return torch.where(frontier >= 0, path.gather(1, frontier.clamp(min=0)), 0.0)


def _extend_ancestors(ancestors: Tensor, new_parents: Tensor) -> Tensor:
    """Ancestor matrix [B, n, n] (self included) grown by nodes with parents new_parents [B, k]."""
    B, n, _ = ancestors.shape
    k = new_parents.shape[1]
    grown = torch.zeros(B, n + k, n + k, dtype=torch.bool, device=ancestors.device)
    grown[:, :n, :n] = ancestors
    parent_rows = ancestors.gather(1, new_parents.clamp(min=0)[:, :, None].expand(B, k, n))
    grown[:, n:, :n] = parent_rows & (new_parents >= 0)[:, :, None]
    grown[:, n:, n:] = torch.eye(k, dtype=torch.bool, device=ancestors.device)
    return grown


def _columns_mask(node_sets: Tensor, columns: Tensor, width: int) -> Tensor:
    """node_sets [B, q, n] bool over nodes -> [B, q, width] bool over their cache columns."""
    B, q, n = node_sets.shape
    mask = torch.zeros(B, q, width + 1, dtype=torch.bool, device=node_sets.device)
    target = torch.where(columns >= 0, columns, width)[:, None, :].expand(B, q, n)  # unfed -> dummy
    mask.scatter_(2, target, node_sets)
    return mask[:, :, :width]
