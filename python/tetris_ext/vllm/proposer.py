"""The TETRIS proposer for vLLM's V1 runner (``speculative_config={"method": "custom_class", ...}``).

Users write ``vllm.LLM(..., speculative_config=tetris_ext.vllm.speculative_config(...))``; the
options travel in the class name (config.py), which this module's ``__getattr__`` turns into a
`TetrisProposer` subclass bound to them.

Each engine step vLLM (0.32) calls ``propose(sampled_token_ids, num_tokens_no_spec,
token_ids_cpu, slot_mappings=...)`` after the step's bookkeeping: row i of the persistent input
batch holds its request's tokens in ``token_ids_cpu[i, :num_tokens_no_spec[i]]`` (the tokens
just sampled included), and ``sampled_token_ids[i]`` is what this step produced for it (empty
for a request still in prefill). `DraftSelection.step` then

1. learns from the previous step: a request that had v drafts verified and now produced s
   tokens accepted s - 1 of them (its acceptance estimator and, for "goodput" and
   "cost-aware", the step-time model);
2. drafts up to k + extra tokens per decoding request with an incremental n-gram index
   (`tetris_ext.drafters.NgramIndex`: only the new tokens are indexed each step), and no
   more than the request's ``max_tokens`` can use (`Proposal.usable`);
3. scores them with `tetris_ext.estimators.NgramLogistic` (batched, learning online from the
   step's outcomes, with its per-request memory of accepted / rejected transitions, and the
   token classes of the served model's tokenizer: held-out Brier -26.1% against -23.8%
   without, bench/README.md; without a loadable tokenizer it warns and scores without
   them) and lets a `tetris_ext.policies` policy
   pick the drafts to verify with ``torch.ops.tetris.select`` under the batch budget;
4. returns each request's selected prefix (chains: what `select` keeps is a prefix).

vLLM passes no request ids to custom proposers; they come from the runner that calls
``propose`` (its ``input_batch.req_ids`` and the step's ``scheduler_output``), read from the
calling frame. Per-request state lives while the request is in the batch and is released
the first step it is not (finished, aborted or preempted): an idle engine holds at most the
state of its last step's requests.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from ..cost_aware import CostAwareTetris
from ..drafters import NgramIndex, match_arrays
from ..estimators import NgramLogistic, token_class_table
from ..policies import GoodputTetris, StandardSD, StepFeedback, Tetris
from ..proposal import Proposal
from .config import ProposerOptions

__all__ = ["TetrisProposer", "DraftSelection", "StepRecord", "find_proposer"]


def _make_policy(options: ProposerOptions):
    if options.policy == "sd":
        return StandardSD(options.k)
    if options.policy == "tetris":
        return Tetris(options.k, options.extra)
    if options.policy == "cost-aware":  # floor and budget from the engine's step cost, fitted online
        policy = CostAwareTetris(options.max_drafts)
    else:
        policy = GoodputTetris(options.max_drafts)
    # vLLM flattens every step: it computes the real tokens only.
    policy.bind_engine(False, "the vLLM proposer (a flattened engine)")
    return policy


# Policies that fit the engine's step time online and choose their own budget each step.
_COST_FITTED = (GoodputTetris, CostAwareTetris)


@dataclass
class _Request:
    index: NgramIndex
    # The drafts returned last step, whose outcome the next step reveals: their row in that
    # step's arrays (`_DraftedStep`) and how many (a prefix of the row).
    row: int = -1
    returned: int = 0
    # Its output length and tokens left at the last step: if vLLM then reports it finished with
    # tokens left, it ended early (an EOS or a stop string) at that length (CostAwareTetris's
    # end hazard).
    output_len: int = -1
    left: int = 0


class _DraftedStep(NamedTuple):
    """The arrays of the last step's drafts, kept for the update that learns their outcome:
    tokens [B, N] (-1: none), raw features [B, N, 5], the estimator's design rows [B, N, F]
    (the request's estimator state cannot change in between: updates run once a step) and the
    roots [B]. A request's returned drafts are a prefix of its row."""

    tokens: np.ndarray
    features: np.ndarray
    design: np.ndarray
    roots: np.ndarray


@dataclass
class StepRecord:
    """One step, kept when `DraftSelection.record` is on (tests, benchmark)."""

    requests: int  # requests that drafted
    budget: int  # the most drafts the policy could verify this step
    drafted: int  # drafts offered to the policy
    returned: list[int]  # drafts returned per drafting request
    seconds: float  # drafting + selection + learning (this call)


class DraftSelection:
    """The proposer's engine-independent part: per-request n-gram indexes, estimator, policy."""

    def __init__(
        self, options: ProposerOptions, max_model_len: int, token_classes: torch.Tensor | None = None
    ):
        """token_classes: [V] class of every token id (`estimators.token_class_table`), or None."""
        self.options, self.max_model_len = options, max_model_len
        self.estimator = NgramLogistic(token_classes=token_classes)
        self.policy = _make_policy(options)
        self.requests: dict[str, _Request] = {}
        self.record = False
        self.records: list[StepRecord] = []
        self.totals = {"steps": 0, "drafted": 0, "verified": 0, "accepted": 0, "seconds": 0.0}
        self._last_end: float | None = None  # when the previous call returned (step timing)
        self.last_req_ids: list[str] = []
        self._drafted_last: set[str] = set()  # requests the previous call drafted for
        self._last_drafts: _DraftedStep | None = None  # that call's arrays

    def step(
        self,
        req_ids: list[str],
        sampled_token_ids: list[list[int]],
        num_tokens: np.ndarray,
        token_ids: np.ndarray,
        verified: dict[str, int] | None = None,
        step_tokens: int | None = None,
        tokens_left: np.ndarray | None = None,
        output_lens: np.ndarray | None = None,
        finished: set[str] | None = None,
    ) -> list[list[int]]:
        """Drafts for rows 0..len(sampled_token_ids)-1 of the batch (see the module docstring).

        verified: drafts of each request the engine verified in the step that just ran (None:
        all that this object returned); step_tokens: the tokens that step computed (prefill
        included; None: only the decoding requests' roots and verified drafts), which the
        step-time policies (goodput, cost-aware) fit, the prompt tokens priced apart;
        tokens_left: per row, the tokens the request may still generate (its ``max_tokens``
        less its output; None: unknown). A request with L left is given at most L - 1 drafts
        (``Proposal.usable``; vLLM's scheduler would verify more and drop what lies past the
        budget), and one with none left (it has just finished) none. output_lens: per row, the
        request's output tokens so far (-1: unknown; None: all unknown); finished: the requests
        vLLM finished since the last call (its ``finished_req_ids``; None: unknown). With both,
        the cost-aware policy learns where requests end early (``CostAwareTetris.observe_lengths``)
        and discounts deep drafts by it.
        """
        start = time.perf_counter()
        rows = len(sampled_token_ids)
        req_ids = self.last_req_ids = list(req_ids[:rows])
        left = None if tokens_left is None else np.asarray(tokens_left[:rows], dtype=np.int64)
        outputs = None if output_lens is None else np.asarray(output_lens[:rows], dtype=np.int64)
        ended_at = []  # output lengths at which requests ended early since the last call
        for gone in self.requests.keys() - set(req_ids):  # finished, aborted or preempted
            state = self.requests.pop(gone)
            if finished is not None and gone in finished and state.left >= 1 and state.output_len >= 1:
                ended_at.append(state.output_len)
            self.estimator.forget(gone)
        self._learn(req_ids, sampled_token_ids, verified, start, step_tokens)
        self._learn_lengths(req_ids, sampled_token_ids, outputs, left, ended_at)
        lengths = num_tokens[:rows].tolist()
        active = [
            i
            for i in range(rows)
            if sampled_token_ids[i] and lengths[i] + 1 < self.max_model_len and (left is None or left[i] >= 1)
        ]
        self._drafted_last = {req_ids[i] for i in active}
        drafts: list[list[int]] = [[] for _ in range(rows)]
        if active:
            active_left = None if left is None else torch.from_numpy(left[active].copy())
            active_outputs = None if outputs is None or (outputs[active] < 0).any() else outputs[active]
            self._draft_and_select(
                active,
                req_ids,
                lengths,
                token_ids,
                drafts,
                active_left,
                None if active_outputs is None else torch.from_numpy(active_outputs.copy()),
            )
        self.totals["seconds"] += time.perf_counter() - start
        if self.record and active:
            self.records[-1].seconds = time.perf_counter() - start
        self._last_end = time.perf_counter()
        return drafts

    def _learn(self, req_ids, sampled_token_ids, verified, now: float, step_tokens: int | None) -> None:
        """Calibration (and step-time) updates from what the engine accepted of the last drafts."""
        # Per request with tested drafts: its id, row in the last step's arrays, tested and
        # accepted drafts; (v, a) per request.
        owners, rows, tested_counts, accepted_counts, counts = [], [], [], [], []
        for rid, sampled in zip(req_ids, sampled_token_ids):
            state = self.requests.get(rid)
            if state is None or rid not in self._drafted_last:
                continue
            returned, state.returned = state.returned, 0
            if not sampled:  # the step produced nothing for it (e.g. discarded): no outcome
                continue
            # A request given 0 drafts still counts: the step-time model must see small steps too.
            v = returned if verified is None else min(verified.get(rid, 0), returned)
            a = min(len(sampled) - 1, v)
            tested = min(a + 1, v)  # drafts whose parent was accepted: their own outcome is known
            if tested:
                owners.append(rid)
                rows.append(state.row)
                tested_counts.append(tested)
                accepted_counts.append(a)
            counts.append((v, a))
        if not counts:
            return
        self._update_estimator(owners, rows, tested_counts, accepted_counts)
        v_all, a_all = zip(*counts)
        self.totals["verified"] += sum(v_all)
        self.totals["accepted"] += sum(a_all)
        if isinstance(self.policy, _COST_FITTED) and self._last_end is not None:
            engine_seconds = now - self._last_end
            # What the flattened step computed: each decoding request's root and verified drafts,
            # and beside them the prompt tokens of requests joining (the rest of its scheduled
            # tokens), which the policy prices apart (StepFeedback.prefill_tokens).
            decode = len(counts) + sum(v_all)
            prompt = None if step_tokens is None else max(0, step_tokens - decode)
            if engine_seconds < 30.0:  # a longer gap is an idle engine, not a step
                self.policy.observe(
                    StepFeedback(
                        torch.from_numpy(np.array(v_all, dtype=np.int64)),
                        torch.from_numpy(np.array(a_all, dtype=np.int64)),
                        computed_tokens=decode,
                        draft_seconds=self.totals["seconds"] / max(1, self.totals["steps"]),
                        verify_seconds=engine_seconds,
                        padded=False,
                        prefill_tokens=prompt,
                    )
                )

    def _learn_lengths(self, req_ids, sampled_token_ids, outputs, left, ended_at) -> None:
        """The cost-aware policy's end hazard: each row's output grew by this step's sampled
        tokens, and the requests in ``ended_at`` ended early at those lengths; each request's
        length and tokens left are kept to tell, once vLLM reports it finished, which."""
        if outputs is None or not isinstance(self.policy, CostAwareTetris):
            return
        rows = [i for i, sampled in enumerate(sampled_token_ids) if sampled and outputs[i] >= 0]
        after = np.array([outputs[i] for i in rows] + ended_at, dtype=np.int64)
        grew = np.array([len(sampled_token_ids[i]) for i in rows] + [0] * len(ended_at), dtype=np.int64)
        ended = np.array([False] * len(rows) + [True] * len(ended_at))
        if len(after):
            before = np.maximum(after - grew, 0)
            self.policy.observe_lengths(
                torch.from_numpy(before), torch.from_numpy(after), torch.from_numpy(ended)
            )
        for i in rows:
            state = self.requests.get(req_ids[i])
            if state is None:
                state = self.requests[req_ids[i]] = _Request(
                    NgramIndex(self.options.max_ngram, self.options.min_ngram)
                )
            state.output_len = int(outputs[i])
            state.left = np.iinfo(np.int64).max if left is None else int(left[i])

    def _update_estimator(self, owners, rows, tested_counts, accepted_counts) -> None:
        """One batched update of the estimator from the requests' outcomes: of each request
        ``owners[i]`` (row ``rows[i]`` of the last step's arrays) the first ``tested_counts[i]``
        drafts were tested and the first ``accepted_counts[i]`` accepted."""
        if not owners:
            return
        last, rows = self._last_drafts, np.array(rows)
        # The rows gathered from the last step's arrays (the drafts beyond the tested ones are
        # masked out: every use of them in update_batch is under `tested`).
        position = np.arange(last.tokens.shape[1])
        tested = position < np.array(tested_counts)[:, None]
        accepted = position < np.array(accepted_counts)[:, None]  # a prefix of the tested ones
        self.estimator.update_batch(
            torch.from_numpy(last.features[rows]),
            owners,
            torch.from_numpy(tested),
            torch.from_numpy(accepted),
            torch.from_numpy(last.tokens[rows]),
            torch.from_numpy(last.roots[rows]),
            design=torch.from_numpy(last.design[rows]),
        )

    def _draft_and_select(
        self, active, req_ids, lengths, token_ids, drafts, tokens_left, output_lens
    ) -> None:
        options, N = self.options, self.options.max_drafts
        states, matches, roots = [], [], []
        for i in active:
            state = self.requests.get(req_ids[i])
            if state is None:
                state = self.requests[req_ids[i]] = _Request(NgramIndex(options.max_ngram, options.min_ngram))
            length, index = lengths[i], state.index
            if length < len(index.tokens):  # the context shrank (cannot happen in 0.32): rebuild
                index = state.index = NgramIndex(options.max_ngram, options.min_ngram)
            new = token_ids[i, len(index.tokens) : length].tolist()
            index.extend(new)
            matches.append(index.match(min(N, self.max_model_len - length - 1)))
            roots.append(new[-1] if new else int(token_ids[i, length - 1]))  # the token the drafts follow
            states.append(state)
        B = len(active)
        tokens, features = match_arrays(matches, N)
        owners = [req_ids[i] for i in active]
        roots = torch.from_numpy(np.array(roots, dtype=np.int64))
        design = self.estimator.design(features, owners, tokens, roots)
        # float32 and the padding's -inf in numpy (a cast and a fill: exact)
        token_logprobs = self.estimator.predict_design(design).log().numpy().astype(np.float32)
        token_logprobs[tokens.numpy() < 0] = -math.inf
        token_logprobs = torch.from_numpy(token_logprobs)
        cum_logprobs = token_logprobs.cumsum(1)
        if options.min_prob is not None:  # the floor, for every policy
            floor = math.log(options.min_prob) if options.min_prob > 0 else -math.inf
            cum_logprobs[cum_logprobs < floor] = -math.inf
        proposal = Proposal(
            tokens,
            None,
            token_logprobs,
            cum_logprobs,
            features=features,
            tokens_left=tokens_left,
            output_lens=output_lens,
        ).usable()
        counts = np.count_nonzero(self.policy.choose(proposal).numpy(), axis=1).tolist()  # chains: prefixes
        self._last_drafts = _DraftedStep(tokens.numpy(), features.numpy(), design.numpy(), roots.numpy())
        for b, (i, state, match, count) in enumerate(zip(active, states, matches, counts)):
            drafts[i] = match.tokens[:count]
            state.row, state.returned = b, count
        drafted = int(proposal.counts().sum())  # offered to the policy: none past a request's budget
        self.totals["steps"] += 1
        self.totals["drafted"] += drafted
        if self.record:
            self.records.append(StepRecord(B, self._budget(B, N), drafted, counts, 0.0))

    def _budget(self, B: int, N: int) -> int:
        if isinstance(self.policy, _COST_FITTED):
            return self.policy.last_budget
        return self.options.k * B  # the most: tetris verifies what sd would (k per request at most)


class TetrisProposer:
    """vLLM ``custom_class`` proposer; built by vLLM with its `VllmConfig` in each worker.

    ``options`` is bound by the class name (see this module's ``__getattr__``); the plain
    class runs the defaults of `ProposerOptions`.
    """

    options = ProposerOptions()

    def __init__(self, vllm_config):
        spec = vllm_config.speculative_config
        self.num_speculative_tokens = spec.num_speculative_tokens
        self.max_model_len = vllm_config.model_config.max_model_len
        self.token_classes = served_token_classes(vllm_config.model_config)
        self.configure(self.options)

    def configure(self, options: ProposerOptions) -> None:
        """Switch to other options (fresh state); at most ``num_speculative_tokens`` drafts."""
        if options.max_drafts > self.num_speculative_tokens:
            raise ValueError(
                f"tetris_ext.vllm: k + extra = {options.max_drafts} exceeds the engine's "
                f"num_speculative_tokens = {self.num_speculative_tokens}"
            )
        self.selection = DraftSelection(options, self.max_model_len, self.token_classes)

    def load_model(self, *args, **kwargs) -> None:
        pass  # n-gram drafting: no model

    def propose(
        self, sampled_token_ids, num_tokens_no_spec, token_ids_cpu, slot_mappings=None
    ) -> list[list[int]]:
        runner, scheduler_output = _calling_runner()
        verified = {rid: len(t) for rid, t in scheduler_output.scheduled_spec_decode_tokens.items()}
        req_ids = runner.input_batch.req_ids
        return self.selection.step(
            req_ids,
            sampled_token_ids,
            num_tokens_no_spec,
            token_ids_cpu,
            verified,
            scheduler_output.total_num_scheduled_tokens,
            *_progress(runner.requests, req_ids[: len(sampled_token_ids)], num_tokens_no_spec),
            scheduler_output.finished_req_ids,
        )


def _progress(requests, req_ids, num_tokens) -> tuple[np.ndarray, np.ndarray]:
    """Per row, from the runner's request states and ``num_tokens_no_spec`` (prompt + output):
    the tokens its request may still generate (the prompt plus ``max_tokens`` less the tokens it
    has; unbounded without sampling parameters, as in no generating model) and its output tokens
    so far (-1 where the runner has no state for it)."""
    left = np.full(len(req_ids), np.iinfo(np.int64).max, dtype=np.int64)
    output = np.full(len(req_ids), -1, dtype=np.int64)
    for i, rid in enumerate(req_ids):
        state = requests.get(rid)
        if state is None:
            continue
        output[i] = max(0, int(num_tokens[i]) - state.num_prompt_tokens)
        params = state.sampling_params
        if params is not None and params.max_tokens is not None:
            left[i] = state.num_prompt_tokens + params.max_tokens - int(num_tokens[i])
    return left, output


def served_token_classes(model_config) -> torch.Tensor | None:
    """The token classes of the served model's tokenizer (built once per proposer, ~1 s for a
    262k vocabulary), or None with a warning when transformers cannot load that tokenizer
    (the estimates then lack the classes; nothing else changes)."""
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            model_config.tokenizer,
            revision=model_config.tokenizer_revision,
            trust_remote_code=model_config.trust_remote_code,
        )
        return token_class_table(tokenizer, model_config.get_vocab_size())
    except Exception as error:  # any tokenizer vLLM serves but transformers cannot load
        warnings.warn(
            f"tetris_ext.vllm: no token classes ({type(error).__name__}: {error}); "
            "drafts are scored without them",
            stacklevel=2,
        )
        return None


def _calling_runner():
    """The model runner whose ``propose_draft_token_ids`` (vLLM 0.32) is calling us, and the
    scheduler output of the step that just ran; a few frames up at most (wrappers allowed)."""
    frame = sys._getframe(2)
    for _ in range(4):
        if frame is None:
            break
        if frame.f_code.co_name == "propose_draft_token_ids":
            runner, scheduler_output = frame.f_locals.get("self"), frame.f_locals.get("scheduler_output")
            if hasattr(runner, "input_batch") and scheduler_output is not None:
                return runner, scheduler_output
        frame = frame.f_back
    raise RuntimeError(
        "tetris_ext.vllm: TetrisProposer.propose must be called by vLLM's V1 model runner "
        "(propose_draft_token_ids, vLLM 0.32); this vLLM version calls it otherwise"
    )


def find_proposer(llm) -> TetrisProposer:
    """The `TetrisProposer` of an in-process engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``)."""
    try:
        runner = llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner
    except AttributeError as e:
        raise RuntimeError(
            "tetris_ext.vllm: the proposer is reachable only from an in-process engine "
            "(set VLLM_ENABLE_V1_MULTIPROCESSING=0 before creating the LLM)"
        ) from e
    drafter = getattr(runner, "drafter", None)
    if not isinstance(drafter, TetrisProposer):
        raise RuntimeError(
            f"tetris_ext.vllm: the engine's proposer is {type(drafter).__name__}, not TetrisProposer"
        )
    return drafter


_BOUND: dict[str, type] = {}


def __getattr__(name: str):
    """``TetrisProposer__policy__...``: a subclass bound to the options the name encodes."""
    if not name.startswith("TetrisProposer__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _BOUND:
        _BOUND[name] = type(name, (TetrisProposer,), {"options": ProposerOptions.from_class_name(name)})
    return _BOUND[name]
