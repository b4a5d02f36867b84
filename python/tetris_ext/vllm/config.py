"""`speculative_config(...)`: what a user passes as `vllm.LLM(speculative_config=...)` for TETRIS.

vLLM's V1 runner builds a ``method="custom_class"`` proposer from ``speculative_config.model``
alone (a dotted path ``module.Class``, imported in every worker process and constructed with
the `VllmConfig`). The policy parameters therefore travel *in that class name*:

    tetris_ext.vllm.proposer.TetrisProposer__policy__tetris__k__3__extra__2__max_ngram__4__min_ngram__1

`tetris_ext.vllm.proposer` answers such names (a module ``__getattr__``) with a subclass of
`TetrisProposer` bound to the decoded `ProposerOptions`. The path is the one field vLLM must
forward unchanged to find the class at all, so the parameters survive its config validation
and every process boundary; no environment variable is involved. The name stays a Python
identifier (``.`` -> ``p``, ``-`` -> ``m`` in numbers), so vLLM also recognises it as a
proposer path. ``num_speculative_tokens`` is ``k + extra``: the most drafts a request gets.

This module does not import vLLM: the checks run before any engine starts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["speculative_config", "ProposerOptions", "POLICIES"]

POLICIES = ("tetris", "goodput", "cost-aware", "sd")
PROPOSER_CLASS = "tetris_ext.vllm.proposer.TetrisProposer"
_SEPARATOR = "__"


@dataclass(frozen=True)
class ProposerOptions:
    """policy: "tetris" (verify the batch's best k x requests drafts), "goodput" (as many as
    maximise predicted tokens per second under an online-fitted step-time model), "sd" (each
    request its first k drafts). k: drafts per request the budget is sized by. extra: drafts
    beyond k each request offers to the ranking. min_prob: never verify a draft whose estimated
    probability of acceptance is below it (any policy). max_ngram / min_ngram: the n-gram
    drafter's suffix lengths (longest tried first)."""

    policy: str = "tetris"
    k: int = 3
    extra: int = 2
    min_prob: float | None = None
    max_ngram: int = 4
    min_ngram: int = 1

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"tetris_ext.vllm: policy must be one of {POLICIES}, got {self.policy!r}")
        for name, low in (("k", 1), ("extra", 0), ("max_ngram", 1), ("min_ngram", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"tetris_ext.vllm: {name} must be an integer >= {low}, got {value!r}")
        if self.min_ngram > self.max_ngram:
            raise ValueError(
                f"tetris_ext.vllm: min_ngram ({self.min_ngram}) must be <= max_ngram ({self.max_ngram})"
            )
        if self.min_prob is not None and not (
            isinstance(self.min_prob, (int, float)) and 0.0 <= self.min_prob <= 1.0
        ):
            raise ValueError(
                f"tetris_ext.vllm: min_prob must be None or a number in [0, 1], got {self.min_prob!r}"
            )

    @property
    def max_drafts(self) -> int:
        return self.k + self.extra

    def class_path(self) -> str:
        """The dotted class path that carries these options (see the module docstring)."""
        parts = [PROPOSER_CLASS]
        for key, value in asdict(self).items():
            if value is not None:
                parts += [key, _encode(value)]
        return _SEPARATOR.join(parts)

    @classmethod
    def from_class_name(cls, name: str) -> ProposerOptions:
        """Inverse of `class_path` for the last component (``TetrisProposer__policy__...``)."""
        parts = name.split(_SEPARATOR)
        if parts[0] != PROPOSER_CLASS.rsplit(".", 1)[1] or len(parts) % 2 != 1:
            raise ValueError(f"tetris_ext.vllm: not a TetrisProposer options name: {name!r}")
        fields = cls.__dataclass_fields__
        values = {}
        for key, text in zip(parts[1::2], parts[2::2]):
            if key not in fields:
                raise ValueError(f"tetris_ext.vllm: unknown option {key!r} in {name!r}")
            values[key] = _decode(text, fields[key].type)
        return cls(**values)


def _encode(value) -> str:
    return str(value).replace(".", "p").replace("-", "m").replace("+", "")


def _decode(text: str, annotation: str):
    if annotation == "str":
        return text
    number = text.replace("p", ".").replace("m", "-")
    return int(number) if annotation == "int" else float(number)


def speculative_config(
    policy: str = "tetris", k: int = 3, extra: int = 2, min_prob: float | None = None, **drafter_options
) -> dict:
    """The ``speculative_config`` dict for `vllm.LLM` that runs the TETRIS proposer.

    drafter_options: ``max_ngram`` (default 4) and ``min_ngram`` (default 1) of the n-gram
    prompt-lookup drafter. Raises ValueError for bad values (k < 1, extra < 0, an unknown
    policy or drafter option, min_prob outside [0, 1]) before any engine starts.
    """
    unknown = set(drafter_options) - {"max_ngram", "min_ngram"}
    if unknown:
        raise ValueError(
            f"tetris_ext.vllm: unknown drafter options {sorted(unknown)}; known: max_ngram, min_ngram"
        )
    options = ProposerOptions(policy=policy, k=k, extra=extra, min_prob=min_prob, **drafter_options)
    return {
        "method": "custom_class",
        "model": options.class_path(),
        "num_speculative_tokens": options.max_drafts,
    }
