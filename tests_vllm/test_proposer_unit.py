"""TETRIS proposer without an engine: config checks, n-gram index, budget, request lifetimes."""

import random

import numpy as np
import pytest

import tetris_ext  # noqa: F401  (loads torch.ops.tetris)
from tetris_ext.vllm import speculative_config
from tetris_ext.vllm.config import ProposerOptions
from tetris_ext.vllm.proposer import DraftSelection


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": 0}, "k must be"),
        ({"extra": -1}, "extra must be"),
        ({"policy": "greedy"}, "policy must be"),
        ({"min_prob": 1.5}, "min_prob"),
        ({"min_prob": -0.1}, "min_prob"),
        ({"k": 2.5}, "k must be"),
        ({"max_ngram": 2, "min_ngram": 3}, "min_ngram"),
        ({"window": 3}, "unknown drafter options"),
    ],
)
def test_bad_configurations_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        speculative_config(**kwargs)


def test_config_round_trips_through_the_class_name():
    config = speculative_config("goodput", k=2, extra=1, min_prob=0.05, max_ngram=3)
    assert config["method"] == "custom_class" and config["num_speculative_tokens"] == 3
    assert all(part.isidentifier() for part in config["model"].split("."))
    module, name = config["model"].rsplit(".", 1)
    proposer_module = __import__(module, fromlist=[name])
    assert getattr(proposer_module, name).options == ProposerOptions("goodput", 2, 1, 0.05, 3, 1)


class FakeEngine:
    """Greedy 'target' that continues each request with a fixed sequence; the batch layout of
    vLLM's persistent batch (rows, token_ids_cpu, num_tokens_no_spec), requests joining/leaving."""

    def __init__(self, selection: DraftSelection, max_len=512, rows=32, seed=0):
        self.selection, self.rng = selection, random.Random(seed)
        self.token_ids = np.zeros((rows, max_len), dtype=np.int32)
        self.num_tokens = np.zeros(rows, dtype=np.int32)
        self.req_ids: list[str] = []
        self.truth: dict[str, list[int]] = {}
        self.drafts: dict[str, list[int]] = {}
        self.next_id = 0

    def add(self):
        rid = f"r{self.next_id}"
        self.next_id += 1
        pattern = [self.rng.randrange(50) for _ in range(self.rng.randrange(3, 8))]
        self.truth[rid] = (pattern * 200)[:512]
        row = len(self.req_ids)
        self.req_ids.append(rid)
        self.token_ids[row, :12] = self.truth[rid][:12]
        self.num_tokens[row] = 12
        self.drafts[rid] = []

    def remove(self, row):
        # vLLM's condense: the last row moves into the hole.
        rid = self.req_ids[row]
        last = len(self.req_ids) - 1
        self.token_ids[row], self.num_tokens[row] = self.token_ids[last], self.num_tokens[last]
        self.req_ids[row] = self.req_ids[last]
        self.req_ids.pop()
        del self.drafts[rid]

    def step(self):
        sampled, verified = [], {}
        for row, rid in enumerate(self.req_ids):
            n, truth, drafts = int(self.num_tokens[row]), self.truth[rid], self.drafts[rid]
            accepted = 0
            while accepted < len(drafts) and drafts[accepted] == truth[n + accepted]:
                accepted += 1
            new = truth[n : n + accepted + 1]
            self.token_ids[row, n : n + len(new)] = new
            self.num_tokens[row] = n + len(new)
            sampled.append(new)
            verified[rid] = len(drafts)
        out = self.selection.step(self.req_ids, sampled, self.num_tokens, self.token_ids, verified)
        assert len(out) == len(self.req_ids)
        for rid, d in zip(self.req_ids, out):
            self.drafts[rid] = d
        return out


def run_fake(options, batch=32, steps=60, seed=0):
    selection = DraftSelection(options, max_model_len=512)
    selection.record = True
    engine = FakeEngine(selection, seed=seed)
    for _ in range(batch):
        engine.add()
    outputs = []
    for s in range(steps):
        outputs.append(engine.step())
        if s % 7 == 6:  # a request finishes, another joins
            engine.remove(engine.rng.randrange(len(engine.req_ids)))
            engine.add()
    return selection, engine, outputs


@pytest.mark.parametrize(
    "options",
    [
        ProposerOptions("tetris", 3, 2),
        ProposerOptions("tetris", 2, 1, min_prob=0.3),
        ProposerOptions("goodput", 3, 2),
        ProposerOptions("cost-aware", 3, 2),
        ProposerOptions("sd", 3, 2),
    ],
)
def test_budget_never_exceeded_and_state_released(options):
    selection, engine, outputs = run_fake(options)
    assert len(selection.records) == len(outputs)
    for record, out in zip(selection.records, outputs):
        assert sum(map(len, out)) == sum(record.returned) <= record.budget
        assert max(map(len, out)) <= options.max_drafts
    assert set(selection.requests) == set(engine.req_ids)  # finished requests released
    assert selection.estimator.tracked_requests <= len(engine.req_ids)  # and their estimator state
    assert selection.totals["accepted"] > 0.5 * selection.totals["verified"] > 0  # repetitive text
    if options.policy in (
        "goodput",
        "cost-aware",
    ):  # the step-time model keeps learning, even from 0-draft steps
        assert selection.policy.steps >= len(outputs) - 1


@pytest.mark.parametrize("policy", ["sd", "tetris", "cost-aware"])
def test_a_floor_of_one_verifies_nothing(policy):
    """Estimates stay below 1 (NgramLogistic clamps them), so min_prob=1 drafts nothing, whatever
    the policy: bench/vllm_e2e.py's "no drafts" (a speculative engine's cost by itself) relies on it,
    on text the drafter matches well (the run above accepts most of what it verifies)."""
    selection, engine, outputs = run_fake(
        ProposerOptions(policy, 1 if policy == "sd" else 3, 0, min_prob=1.0)
    )
    assert outputs and all(sum(map(len, out)) == 0 for out in outputs)
    assert selection.totals["drafted"] > 0  # the drafter did propose


@pytest.mark.parametrize("policy", ["goodput", "cost-aware"])
def test_cost_fitted_policies_are_priced_flat(policy):
    """vLLM flattens every step: the proposer's step-time policies are bound flat (no flag),
    and what they learn from is the step's computed tokens (the scheduled ones when given)."""
    selection = DraftSelection(ProposerOptions(policy, 3, 2), max_model_len=512)
    assert selection.policy.padded is False and selection.policy.name.startswith(
        {"goodput": "GoodputTetris(5", "cost-aware": "CostAwareTetris(5, flat"}[policy]
    )
    feedback = []
    observe = selection.policy.observe
    selection.policy.observe = lambda f: (feedback.append(f), observe(f))
    engine = FakeEngine(selection)
    for _ in range(4):
        engine.add()
    for _ in range(6):
        engine.step()
    assert feedback and all(f.padded is False for f in feedback)
    assert all(f.computed_tokens == f.real_tokens for f in feedback)  # no step_tokens: the real ones
    assert all(f.prefill_tokens is None for f in feedback)
    # a step that also prefilled a joining request's prompt: the decoding requests' tokens,
    # and the prompt tokens beside them, priced apart
    selection.step(engine.req_ids, [[1]] * 4, engine.num_tokens, engine.token_ids, None, step_tokens=500)
    last = feedback[-1]
    assert last.computed_tokens == last.real_tokens and last.prefill_tokens == 500 - last.real_tokens > 0


def test_sd_returns_min_k_drafts():
    k = 3
    selection, engine, outputs = run_fake(ProposerOptions("sd", k, 2))
    selection.record = False
    # Recompute what the drafter offers now and compare with one more step.
    for rid in engine.req_ids:
        engine.drafts[rid] = []
    offered = {rid: len(selection.requests[rid].index.match(5).tokens) for rid in engine.req_ids}
    out = engine.step()
    for rid, drafts in zip(engine.req_ids, out):
        if rid in offered:  # a row that had sampled tokens: its index grew by them
            assert len(drafts) == min(k, len(selection.requests[rid].index.match(5).tokens))


def test_tetris_spends_its_budget_on_the_likeliest_drafts():
    # Row 0 repeats a 2-token pattern (long confident matches), row 1 is random: TETRIS moves
    # budget from row 1 to row 0 where SD(k) gives each k.
    selection = DraftSelection(ProposerOptions("tetris", 2, 3), max_model_len=256)
    rng = np.random.default_rng(0)
    token_ids = np.zeros((2, 256), dtype=np.int32)
    token_ids[0, :40] = list(range(100, 110)) * 4
    token_ids[1, :40] = rng.permutation(40)
    token_ids[1, 39] = token_ids[1, 10]  # one weak match
    out = selection.step(["a", "b"], [[109], [1]], np.array([40, 40]), token_ids)
    assert len(out[0]) > 2 and len(out[0]) + len(out[1]) <= 4


@pytest.mark.parametrize("policy", ["sd", "tetris", "cost-aware"])
def test_no_drafts_past_a_requests_max_tokens(policy):
    """A request with L tokens left ends on L - 1 accepted drafts and the bonus token: it is
    given no more (vLLM's scheduler would verify them and drop their tokens); one with none left
    (it has just finished) none."""
    token_ids = np.zeros((3, 256), dtype=np.int32)
    token_ids[:, :40] = list(range(100, 110)) * 4  # the same confident match in every row
    sampled, lengths = [[109]] * 3, np.array([40, 40, 40])

    def drafts(tokens_left):
        selection = DraftSelection(ProposerOptions(policy, 4, 2), max_model_len=256)
        return [
            len(d)
            for d in selection.step(["a", "b", "c"], sampled, lengths, token_ids, tokens_left=tokens_left)
        ]

    bounded = drafts(np.array([3, 1, 0]))
    assert bounded[0] <= 2 and bounded[1:] == [0, 0]
    assert drafts(np.array([100, 100, 100])) == drafts(None)
    if policy != "cost-aware":  # (whose first steps probe the step cost with a few drafts)
        assert min(drafts(None)) >= 3 and bounded[0] == 2  # unbounded, every row drafts past 2


def test_tokens_left_and_output_lens_come_from_the_runners_requests():
    from types import SimpleNamespace

    from tetris_ext.vllm.proposer import _progress

    def state(prompt, max_tokens):
        return SimpleNamespace(
            num_prompt_tokens=prompt, sampling_params=SimpleNamespace(max_tokens=max_tokens)
        )

    requests = {
        "a": state(10, 5),
        "b": state(7, 20),
        "c": SimpleNamespace(num_prompt_tokens=4, sampling_params=None),
    }
    left, output = _progress(requests, ["a", "b", "c", "z"], np.array([13, 27, 50, 5]))
    assert left[:2].tolist() == [2, 0] and left[2] > 10**9  # "c": unbounded
    assert output.tolist() == [3, 20, 46, -1]  # "z": no state in the runner


def test_the_cost_aware_policy_learns_where_requests_end_early():
    """Each step's sampled tokens grow its requests' outputs; a request vLLM reports finished
    with tokens left ended early at its last length (counted once, and only then); one that
    finished at its max_tokens, or left unfinished (preempted), did not."""
    selection = DraftSelection(ProposerOptions("cost-aware", 4, 2), max_model_len=256)
    hazard = selection.policy.end_hazard
    token_ids = np.zeros((3, 256), dtype=np.int32)

    def step(req_ids, sampled, outputs, left, finished=()):
        n = len(req_ids)
        lengths = np.array(outputs[:n]) + 10  # 10 prompt tokens each
        selection.step(
            req_ids,
            sampled[:n],
            lengths,
            token_ids,
            tokens_left=np.array(left[:n]),
            output_lens=np.array(outputs[:n]),
            finished=set(finished),
        )

    step(["a", "b", "c"], [[1], [1], [1]], [1, 1, 1], [9, 4, 9])
    step(["a", "b", "c"], [[1, 2], [1, 2, 3], [1]], [3, 4, 2], [7, 0, 8])  # "b" reaches its max_tokens
    assert hazard.went_on[:4].tolist() == [3, 3, 2, 1] and not hazard.ended.any()
    step(["c"], [[1]], [3], [7], finished={"a", "b"})  # "a" ended at 3 tokens, 7 left: early
    assert hazard.ended.tolist()[:5] == [0, 0, 0, 1, 0] and hazard.ended.sum() == 1
    step([], [], [], [], finished=set())  # "c" left unfinished (preempted): no end
    assert hazard.ended.sum() == 1 and hazard.went_on[:4].tolist() == [3, 3, 3, 1]
    assert not selection.requests  # every request's state released


def test_estimator_learns_each_outcome_with_its_drafts_and_root():
    """Every update the proposer gives its NgramLogistic holds the drafts it returned one step
    earlier (tokens, in order), the token they followed (the request's last token then) and
    which of them the engine accepted: the per-request transition memory depends on all three."""
    selection = DraftSelection(ProposerOptions("tetris", 3, 2), max_model_len=512)
    engine = FakeEngine(selection, seed=1)
    for _ in range(8):
        engine.add()
    seen, learn = [], selection.estimator.update_batch

    def spy(features, requests, tested, accepted, tokens, roots, **kwargs):
        for b, rid in enumerate(requests):
            seen.append((rid, tokens[b][tested[b]].tolist(), int(roots[b]), accepted[b][tested[b]].tolist()))
        learn(features, requests, tested, accepted, tokens, roots, **kwargs)

    selection.estimator.update_batch = spy
    checked = 0
    for _ in range(30):
        before = {rid: int(engine.num_tokens[row]) for row, rid in enumerate(engine.req_ids)}
        drafts_before = dict(engine.drafts)
        seen.clear()
        engine.step()
        for rid, tokens, root, accepted in seen:
            n, truth = before[rid], engine.truth[rid]
            assert root == truth[n - 1]
            assert tokens == drafts_before[rid][: len(tokens)]
            assert accepted == [t == truth[n + i] for i, t in enumerate(tokens)]
        checked += len(seen)
    assert checked > 50


def test_token_classes_reach_the_estimator_and_a_missing_tokenizer_only_warns(tmp_path):
    from types import SimpleNamespace

    import torch

    from tetris_ext.vllm.proposer import served_token_classes

    classes = torch.tensor([0, 1, 2, 3] * 16, dtype=torch.int8)
    selection = DraftSelection(ProposerOptions(policy="cost-aware"), 512, classes)
    assert selection.estimator.token_classes is classes
    assert DraftSelection(ProposerOptions(), 512).estimator.token_classes is None
    missing = SimpleNamespace(
        tokenizer=str(tmp_path / "no-such-tokenizer"),
        tokenizer_revision=None,
        trust_remote_code=False,
        get_vocab_size=lambda: 64,
    )
    with pytest.warns(UserWarning, match="no token classes"):
        assert served_token_classes(missing) is None


def test_served_token_classes_come_from_the_models_tokenizer():
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from tetris_ext.estimators import TOKEN_CLASSES
    from tetris_ext.vllm import gemma3_270m_path
    from tetris_ext.vllm.proposer import served_token_classes

    path = gemma3_270m_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = SimpleNamespace(
        tokenizer=path, tokenizer_revision=None, trust_remote_code=False, get_vocab_size=lambda: 262_144
    )
    table = served_token_classes(config)
    assert table.shape == (262_144,)
    ids = {c: tokenizer.convert_tokens_to_ids(t) for c, t in (("whitespace", "\n"), ("punctuation", ","))}
    for name, token_id in ids.items():
        assert table[token_id] == TOKEN_CLASSES.index(name)


def test_vllm_tokenizes_as_the_decoding_loop():
    """vLLM's tokenizer of the served folder gives the loop's token ids, <bos> first (it once
    loaded transformers 5's GemmaTokenizer: single characters, no <bos>)."""
    from transformers import PreTrainedTokenizerFast
    from vllm.tokenizers import get_tokenizer

    from tetris_ext.vllm import gemma3_270m_path

    path = gemma3_270m_path()
    text = "The quick brown fox jumps over the lazy dog.\ndef hello_world(x):\n    return x + 1"
    ids = get_tokenizer(path).encode(text)
    assert ids == PreTrainedTokenizerFast.from_pretrained(path)(text).input_ids
    assert ids[0] == 2 and len(ids) < len(text) / 1.5  # <bos>, then pieces longer than a character
