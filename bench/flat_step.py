"""Does a flattened verification forward pay on this CPU? One step's target forward, padded vs packed.

    python bench/flat_step.py                  # Gemma 3 270M bf16, batch 8, one thread
    python bench/flat_step.py --repeat 9 --context 300 500

The live loop verifies a padded [B, 1 + w] block: every row pays for the widest one. A packed
forward (``RaggedKVCache(model, packed=True)``, tetris_ext.packed_attention) runs the linear
layers on the real tokens only. On one KV cache of 8 requests with contexts of 300-500 tokens
(random token ids: the cost does not depend on them), this times, with time.process_time:

- padded[w]: the [8, 1 + w] block with every slot real (StandardSD(w)), w = 2..6, as the live
  loop runs it today (transformers' SDPA);
- grouped[w]: the same padded block through the packed attention function without packing
  (the query heads sharing a key/value head folded together; what attention alone gains);
- packed[w]: the same tokens through the packed (flat) forward: linear layers and attention on
  the real tokens only, attention grouped as well;
- uneven *: a TETRIS-like allocation of 34 tokens (8 roots + 26 drafts = Tetris(3, 2)'s
  budget), rows of 1 + [5, 5, 5, 5, 5, 1, 0, 0]: an [8, 6] block padded / grouped, or the 34
  real tokens packed.

Every forward takes the output head at its real slots only (as the live loop does). The
configurations run interleaved in a shuffled order per repeat, each on the same cache, rolled
back after each forward; medians over repeats. Writes bench/results/flat_step_b8.{json,txt}.

    python bench/flat_step.py --attention-calls 15 --context 80 160
    python bench/flat_step.py --attention-only 15
    python bench/flat_step.py --holes 15 --context 80 160
    python bench/flat_step.py --prefill 9 --context 80 160 --dtype float32
    python bench/flat_step.py --head 5 --dtype float32

--prefill asks what chunked prefill (joining prompts computed inside the step's forward, as
vLLM V1 does) would save the live flat loop, which prefills them in a forward of their own
(``LiveTarget.admit``): on one cache of 8 decoding rows and the tetris-like step of CALL_SHAPES
it times, interleaved, the step alone, the step without its output head, J prompts of
``--prompt-tokens`` tokens prefilled in a forward of their own, and the step with those J prompts
as J more rows of its forward (through the decoder, not the head). Fusing saves step + prefill -
fused; the head's share is what a verified token pays beyond the decoder. Writes
bench/results/flat_step_prefill_*.

--head times the output head alone by the rows a packed step computes (1-56), the sizes
shuffled per repeat; writes bench/results/flat_step_head_{dtype}.

--attention-calls times the packed forward of each row-size shape of CALL_SHAPES three ways,
interleaved: attention as one SDPA call per run of adjacent equal rows (the loop before
``packed_attention.plan_segments``), as one call over the block padded to its widest row, and as
planned (``CALL_COST``); paired ratios to per run. --attention-only times the attention function
alone (Gemma 3 270M's first attention module, 18 calls as in a forward, keys of 100-500 columns)
per run and in one call for each shape, and fits CPU time = c + a * calls + b * query slots x
keys x heads x head dim: ``CALL_COST`` = a / b. --holes times what hole columns of the ragged
KV cache cost a packed forward and what ``maybe_compact`` costs to squeeze them out. Write
bench/results/flat_step_{attention_*,holes_*}.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sim import load_target  # noqa: E402

from common import RESULTS_DIR, format_table, paired_ratio, run_metadata, write_json  # noqa: E402
from tetris_ext import packed_attention  # noqa: E402
from tetris_ext.kv_cache import DynamicCache, RaggedKVCache, _logits  # noqa: E402
from tetris_ext.packed_attention import PACKED  # noqa: E402

BATCH = 8
UNEVEN_DRAFTS = [5, 5, 5, 5, 5, 1, 0, 0]  # 26 drafts = 3 * 8 + 2
MODES = ("padded", "grouped", "packed")
# Row sizes (root + verified drafts) of one verification step at batch 8.
CALL_SHAPES = {
    "1 run: 5 x 8": [5] * 8,
    "8 runs: 4, 6 alternating": [4, 6, 4, 6, 4, 6, 4, 6],
    "8 runs: 2..8 shuffled": [5, 2, 8, 3, 7, 4, 6, 5],
    "uneven (flat_step)": [1 + d for d in UNEVEN_DRAFTS],
    "tetris-like: 9, 2, 1, 1, 3, 1, 4, 1": [9, 2, 1, 1, 3, 1, 4, 1],
    "1-token rows: 1 x 4, 9 x 4": [1, 1, 1, 1, 9, 9, 9, 9],
    "one wide row: 6, 1 x 7": [6] + [1] * 7,
    "one wide row: 9, 1 x 7": [9] + [1] * 7,
}


def _block(cache: RaggedKVCache, sizes: list[int], vocab: int, generator):
    """tokens, positions, block mask, real of a chain block with sizes[b] real slots in row b."""
    width = max(sizes)
    lengths = cache.lengths().unsqueeze(1)
    tokens = torch.randint(0, vocab, (BATCH, width), generator=generator)
    positions = lengths + torch.arange(width)
    real = torch.arange(width).unsqueeze(0) < torch.tensor(sizes).unsqueeze(1)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    # padding slots see only themselves (as tetris_ext.ops.tree_mask lays them out)
    mask = torch.where(real.unsqueeze(2), causal, torch.eye(width, dtype=torch.bool))
    return tokens, positions, mask, real


def _set_mode(cache: RaggedKVCache, mode: str) -> None:
    """padded: today's loop (transformers' SDPA); grouped: the same padded block through the
    packed attention function (GQA heads folded, no packing); packed: the flat forward."""
    cache.model.set_attn_implementation("sdpa" if mode == "padded" else PACKED)
    cache.packed = mode == "packed"


def _timed_forward(cache: RaggedKVCache, block, mode: str) -> float:
    tokens, positions, mask, real = block
    width = cache.width
    _set_mode(cache, mode)
    start = time.process_time()
    cache.forward(tokens, positions, mask, logits_at=real, real=real)
    seconds = time.process_time() - start
    # roll back: drop the block's columns
    cache.positions, cache.valid = cache.positions[:, :width], cache.valid[:, :width]
    cache._map_layers(lambda t: t[:, :, :width])
    return seconds


STRATEGIES = {"per run": 1e-9, "one call": 1e30, "planned": packed_attention.CALL_COST}


def _timed_packed(cache: RaggedKVCache, block, call_cost: float) -> float:
    """A packed forward with attention split by ``packed_attention.CALL_COST = call_cost``."""
    saved, packed_attention.CALL_COST = packed_attention.CALL_COST, call_cost
    try:
        return _timed_forward(cache, block, "packed")
    finally:
        packed_attention.CALL_COST = saved


def _calls(sizes: list[int], call_cost: float) -> int:
    return len(packed_attention.plan_segments(sizes, 1.0, call_cost))


def _write(rows: list[dict], header: str, name: str, meta: dict) -> None:
    table = format_table(rows, [(k, k.replace("_", " ")) for k in rows[0] if k != "cpu_ms"])
    print(header + table)
    (RESULTS_DIR / f"{name}.txt").write_text(header + table + "\n")
    write_json(RESULTS_DIR / f"{name}.json", {"meta": run_metadata("cpu") | meta, "rows": rows})


def attention_calls(model, repeat: int, context: list[int], seed: int) -> None:
    """The packed forward of every shape of CALL_SHAPES with attention split three ways
    (STRATEGIES), interleaved in a shuffled order per repeat on one cache; paired ratios."""
    vocab = model.config.get_text_config().vocab_size
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(context[0], context[1] + 1, (BATCH,), generator=generator)
    configs = [(shape, strategy) for shape in CALL_SHAPES for strategy in STRATEGIES]
    times: dict[tuple[str, str], list[float]] = {c: [] for c in configs}
    with torch.inference_mode():
        cache = RaggedKVCache(model, packed=True)
        cache.append([torch.randint(0, vocab, (int(n),), generator=generator).tolist() for n in lengths])
        order = random.Random(seed)
        for _ in range(repeat + 1):  # the first round warms up
            order.shuffle(configs)
            for shape, strategy in configs:
                block = _block(cache, CALL_SHAPES[shape], vocab, generator)
                times[shape, strategy].append(_timed_packed(cache, block, STRATEGIES[strategy]))
    rows = []
    for shape, sizes in CALL_SHAPES.items():
        t = {strategy: times[shape, strategy][1:] for strategy in STRATEGIES}
        rows.append(
            {"shape": shape, "tokens": sum(sizes), "padded_slots": BATCH * max(sizes)}
            | {"runs": _calls(sizes, 1e-9), "planned_calls": "?"}
            | {f"{s.replace(' ', '_')}_cpu_ms": 1e3 * statistics.median(t[s]) for s in STRATEGIES}
            | {"one_call_vs_per_run": paired_ratio(t["one call"], t["per run"])}
            | {"planned_vs_per_run": paired_ratio(t["planned"], t["per run"])}
            | {"cpu_ms": {s: [1e3 * x for x in t[s]] for s in STRATEGIES}}
        )
        k = cache.width + max(sizes)
        rows[-1]["planned_calls"] = len(
            packed_attention.plan_segments(sizes, 1024 * k, STRATEGIES["planned"])
        )
    header = (
        f"Gemma 3 270M bf16, one thread, batch {BATCH}, contexts {lengths.tolist()}, {repeat} repeats "
        f"(python bench/flat_step.py --attention-calls {repeat} --context {context[0]} {context[1]}); "
        f"CALL_COST {STRATEGIES['planned']:g}; ratios paired\n"
    )
    meta = {
        "contexts": lengths.tolist(),
        "repeat": repeat,
        "batch": BATCH,
        "call_cost": STRATEGIES["planned"],
    }
    _write(rows, header, f"flat_step_attention_calls_{context[0]}-{context[1]}", meta)


def attention_only(model, repeat: int, seed: int) -> None:
    """Attention alone (18 calls of the packed attention function, keys from a stub cache) per
    shape, key count and strategy (per run, one call); a least-squares fit of the CPU time on
    calls and slot-key products gives CALL_COST."""
    import numpy as np

    config = model.config.get_text_config()
    heads, kv_heads, dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    module = model.get_decoder().layers[0].self_attn
    generator = torch.Generator().manual_seed(seed)
    configs = [(s, k, c) for s in CALL_SHAPES for k in (100, 200, 300, 500) for c in ("per run", "one call")]
    times: dict[tuple, list[float]] = {c: [] for c in configs}
    order = random.Random(seed)
    with torch.inference_mode():
        for _ in range(repeat + 1):
            order.shuffle(configs)
            for shape, keys, strategy in configs:
                times[shape, keys, strategy].append(
                    _timed_attention(
                        module,
                        CALL_SHAPES[shape],
                        keys,
                        (heads, kv_heads, dim),
                        STRATEGIES[strategy],
                        generator,
                    )
                )
    rows, design, target = [], [], []
    for shape, keys, strategy in times:
        sizes, t = CALL_SHAPES[shape], times[shape, keys, strategy][1:]
        segments = packed_attention.plan_segments(sizes, 1.0, STRATEGIES[strategy])
        products = sum((e - f) * w for f, e, w in segments) * (keys + max(sizes)) * heads * dim
        rows.append({"shape": shape, "keys": keys, "strategy": strategy, "calls": len(segments)})
        rows[-1] |= {"slot_key_products": products, "median_cpu_ms_18_layers": 1e3 * statistics.median(t)}
        design.append([1.0, len(segments), products])
        target.append(statistics.median(t) / 18)
    (c, a, b), *_ = np.linalg.lstsq(np.array(design), np.array(target), rcond=None)
    fitted = np.array(design) @ np.array([c, a, b])
    fit = f"per layer: {c * 1e6:.1f} us + {a * 1e6:.2f} us per call + {b * 1e12:.2f} ps per slot-key product"
    fit += f" (max |residual| {np.abs(fitted - np.array(target)).max() * 1e6:.1f} us); CALL_COST = a / b = {a / b:.3g}"
    header = (
        f"Gemma 3 270M bf16 attention alone ({heads} heads, {kv_heads} KV head, dim {dim}), one thread, "
        f"batch {BATCH}, {repeat} repeats (python bench/flat_step.py --attention-only {repeat})\n{fit}\n"
    )
    _write(
        sorted(rows, key=lambda r: (r["shape"], r["keys"])), header, "flat_step_attention_only", {"fit": fit}
    )


def _timed_attention(module, sizes, keys: int, dims, call_cost: float, generator) -> float:
    heads, kv_heads, dim = dims
    width = max(sizes)
    real = torch.arange(width).unsqueeze(0) < torch.tensor(sizes).unsqueeze(1)
    cached = torch.randn(2, BATCH, kv_heads, keys + width, dim, generator=generator).to(torch.bfloat16)

    class Stub:  # the cache's update: the keys as they stand after appending the block
        def update(self, *_):
            return cached[0], cached[1]

    step = packed_attention.PackedStep.of(real, Stub())
    n = sum(sizes)
    query = torch.randn(1, heads, n, dim, generator=generator).to(torch.bfloat16)
    key = torch.randn(1, kv_heads, n, dim, generator=generator).to(torch.bfloat16)
    mask = torch.zeros(BATCH, 1, width, keys + width, dtype=torch.bfloat16)
    saved, packed_attention.CALL_COST = packed_attention.CALL_COST, call_cost
    try:
        start = time.process_time()
        for _ in range(18):  # the first layer plans the calls, as in a forward
            packed_attention.packed_attention(
                module, query, key, key, mask, packed_step=step, scaling=dim**-0.5
            )
        return time.process_time() - start
    finally:
        packed_attention.CALL_COST = saved


def gather_compact(cache, max_hole_fraction: float) -> None:
    """RaggedKVCache.maybe_compact as it was before index_select: torch.gather, expanded index."""
    longest = int(cache.lengths().max()) if cache.batch_size else 0
    if cache.width - longest <= max_hole_fraction * cache.width:
        return
    order = torch.sort((~cache.valid).to(torch.int8), dim=1, stable=True).indices[:, :longest]
    cache.positions, cache.valid = cache.positions.gather(1, order), cache.valid.gather(1, order)

    def gather(t):
        return t.gather(2, order[:, None, :, None].expand(t.shape[0], t.shape[1], longest, t.shape[3]))

    cache.cache = DynamicCache(ddp_cache_data=[(gather(k), gather(v)) for k, v in cache._layers()])


def hole_cost(model, repeat: int, context: list[int], seed: int) -> None:
    """What holes cost a packed step and what squeezing them out costs: on one cache (contexts
    in ``context``), with h hole columns appended to every row, the packed forward of the
    tetris-like shape of CALL_SHAPES, and ``maybe_compact`` removing the h holes; interleaved in
    a shuffled order per repeat (and the element-wise gather compaction of before, for comparison).
    Fits ms per hole column per forward."""
    import numpy as np

    from tetris_ext.kv_cache import _pad_columns

    vocab = model.config.get_text_config().vocab_size
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(context[0], context[1] + 1, (BATCH,), generator=generator)
    sizes = CALL_SHAPES["tetris-like: 9, 2, 1, 1, 3, 1, 4, 1"]
    holes = (0, 16, 32, 64, 128)
    configs = [("forward", h) for h in holes] + [(op, h) for op in ("compact", "gather") for h in holes[1:]]
    times: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
    with torch.inference_mode():
        cache = RaggedKVCache(model, packed=True)
        cache.append([torch.randint(0, vocab, (int(n),), generator=generator).tolist() for n in lengths])
        width, order = cache.width, random.Random(seed)
        for _ in range(repeat + 1):  # the first round warms up
            order.shuffle(configs)
            for op, h in configs:
                cache.positions, cache.valid = (
                    _pad_columns(t, width + h) for t in (cache.positions, cache.valid)
                )
                cache._map_layers(lambda t, h=h: _pad_columns(t, width + h, dim=2))
                if op == "forward":
                    block = _block(cache, sizes, vocab, generator)
                    times[op, h].append(_timed_forward(cache, block, "packed"))
                    cache.maybe_compact(0.0)
                else:
                    compact = cache.maybe_compact if op == "compact" else lambda f: gather_compact(cache, f)
                    start = time.process_time()
                    compact(0.0)
                    times[op, h].append(time.process_time() - start)
                assert cache.width == width
    ms = {c: 1e3 * statistics.median(t[1:]) for c, t in times.items()}
    slope = np.polyfit(holes, [ms["forward", h] for h in holes], 1)[0]
    rows = [
        {"holes": h, "forward_cpu_ms": ms["forward", h], "compact_cpu_ms": ms.get(("compact", h), 0.0)}
        | {"gather_compact_before_cpu_ms": ms.get(("gather", h), 0.0)}
        for h in holes
    ]
    header = (
        f"Gemma 3 270M bf16, one thread, batch {BATCH}, contexts {lengths.tolist()} (width {width}), tetris-like "
        f"step {sizes}, {repeat} repeats (python bench/flat_step.py --holes {repeat} --context {context[0]} "
        f"{context[1]}): a hole column costs {slope:.4f} ms a forward (least squares)\n"
    )
    _write(rows, header, f"flat_step_holes_{context[0]}-{context[1]}", {"ms_per_hole_column": slope})


def prefill_cost(model, repeat: int, context: list[int], prompt_tokens: int, dtype: str, seed: int) -> None:
    """What a join costs the live flat loop: J prompts prefilled in a forward of their own, or
    as J more rows of the step's forward (module doc, --prefill). One cache: 8 decoding rows
    (contexts in ``context``) and max(JOINERS) empty rows for the joiners; every forward is
    rolled back after it; interleaved in a shuffled order per repeat, medians."""
    vocab = model.config.get_text_config().vocab_size
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(context[0], context[1] + 1, (BATCH,), generator=generator)
    sizes = CALL_SHAPES["tetris-like: 9, 2, 1, 1, 3, 1, 4, 1"]
    joiners = (1, 2, 4)
    rows = BATCH + max(joiners)

    def block(J: int):
        """The step's slots in the decoding rows and J prompts in the first J joiner rows."""
        width = max(max(sizes), prompt_tokens if J else 0)
        size = torch.tensor(sizes + [prompt_tokens] * J + [0] * (rows - BATCH - J))
        tokens = torch.randint(0, vocab, (rows, width), generator=generator)
        positions = cache.lengths().unsqueeze(1) + torch.arange(width)
        real = torch.arange(width).unsqueeze(0) < size.unsqueeze(1)
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        mask = torch.where(real.unsqueeze(2), causal, torch.eye(width, dtype=torch.bool))
        head = real & (torch.arange(rows) < BATCH).unsqueeze(1)  # the head at the step's slots only
        return tokens, positions, mask, real, head

    def forward(J: int, with_head: bool = True) -> float:
        tokens, positions, mask, real, head = block(J)
        width = cache.width
        start = time.process_time()
        cache.forward(tokens, positions, mask, logits_at=head if with_head else None, real=real)
        seconds = time.process_time() - start
        cache.positions, cache.valid = cache.positions[:, :width], cache.valid[:, :width]
        cache._map_layers(lambda t: t[:, :, :width])
        return seconds

    def prefill_apart(J: int) -> float:
        prompts = [torch.randint(0, vocab, (prompt_tokens,), generator=generator).tolist() for _ in range(J)]
        start = time.process_time()
        RaggedKVCache(model, packed=True).append(prompts)  # as LiveTarget.admit, before its extend
        return time.process_time() - start

    configs = {"step": lambda: forward(0), "step, no head": lambda: forward(0, with_head=False)}
    for J in joiners:
        configs[f"prefill {J} apart"] = lambda J=J: prefill_apart(J)
        configs[f"step + {J} fused"] = lambda J=J: forward(J)
    times: dict[str, list[float]] = {name: [] for name in configs}
    with torch.inference_mode():
        cache = RaggedKVCache(model, packed=True)
        contexts = [torch.randint(0, vocab, (int(n),), generator=generator).tolist() for n in lengths]
        cache.append(contexts + [[]] * (rows - BATCH))
        names, order = list(configs), random.Random(seed)
        for _ in range(repeat + 1):  # the first round warms up
            order.shuffle(names)
            for name in names:
                times[name].append(configs[name]())
    ms = {name: 1e3 * statistics.median(t[1:]) for name, t in times.items()}
    real_tokens = sum(sizes)
    head_ms = (ms["step"] - ms["step, no head"]) / real_tokens
    table = [
        {
            "joining": J,
            "step_cpu_ms": ms["step"],
            "prefill_apart_cpu_ms": ms[f"prefill {J} apart"],
            "fused_cpu_ms": ms[f"step + {J} fused"],
            "saved_by_fusing_cpu_ms": ms["step"] + ms[f"prefill {J} apart"] - ms[f"step + {J} fused"],
            "prompt_token_cpu_ms": (ms[f"step + {J} fused"] - ms["step"]) / (J * prompt_tokens),
        }
        for J in joiners
    ]
    header = (
        f"Gemma 3 270M {dtype}, one thread, batch {BATCH}, contexts {lengths.tolist()}, tetris-like step "
        f"{sizes} ({real_tokens} tokens), prompts of {prompt_tokens} tokens, {repeat} repeats (python "
        f"bench/flat_step.py --prefill {repeat} --context {context[0]} {context[1]} --prompt-tokens "
        f"{prompt_tokens} --dtype {dtype}): step {ms['step']:.1f} ms, without its output head "
        f"{ms['step, no head']:.1f} ms: the head costs {head_ms:.2f} ms a verified token\n"
    )
    meta = {"head_cpu_ms_per_token": head_ms, "step_no_head_cpu_ms": ms["step, no head"]}
    _write(table, header, f"flat_step_prefill_{dtype}_{context[0]}-{context[1]}", meta)


HEAD_ROWS = [1, 2, 3, 4, 6, 7, 9, 10, 12, 13, 15, 16, 18, 20, 24, 28, 32, 40, 48, 56]


def head_cost(model, repeat: int, dtype: str, seed: int) -> None:
    """The output head alone (``kv_cache._logits``: the model's output embedding on the rows
    that need logits) by the rows a packed step computes: random hidden states, the sizes in a
    shuffled order per repeat, medians. A step's seconds by its size follow this on a CPU
    whose GEMM picks its kernel by the row count. Beside it, the same product with the weight
    laid out transposed ([H, V], a copy: ``hidden @ weight_t``), which the live loop does not
    use (it would double the head's memory)."""
    hidden_size = model.config.get_text_config().hidden_size
    generator = torch.Generator().manual_seed(seed)
    transposed = model.get_output_embeddings().weight.detach().t().contiguous()
    layouts = {
        "head": lambda hidden: _logits(model, hidden),
        "transposed": lambda hidden: hidden @ transposed,
    }
    times = {(rows, layout): [] for rows in HEAD_ROWS for layout in layouts}
    order = random.Random(seed)
    keys = list(times)
    with torch.inference_mode():
        for _ in range(repeat + 1):  # the first round warms up
            order.shuffle(keys)
            for rows, layout in keys:
                hidden = torch.randn(rows, hidden_size, generator=generator).to(model.dtype)
                start = time.process_time()
                layouts[layout](hidden)
                times[rows, layout].append(time.process_time() - start)
    median = {key: 1e3 * statistics.median(t[1:]) for key, t in times.items()}
    table = [
        {
            "rows": rows,
            "median_cpu_ms": median[rows, "head"],
            "per_row_ms": median[rows, "head"] / rows,
            "transposed_cpu_ms": median[rows, "transposed"],
        }
        for rows in HEAD_ROWS
    ]
    header = (
        f"# The output head alone by rows (python bench/flat_step.py --head {repeat} --dtype {dtype}); "
        f"{model.config.get_text_config().vocab_size} x {hidden_size}, {dtype}, one thread, CPU ms, "
        f"medians of {repeat}\n"
    )
    _write(table, header, f"flat_step_head_{dtype}", {"repeat": repeat})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--context", type=int, nargs=2, default=[300, 500])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--attention-calls", type=int, metavar="REPEAT", help="instead: attention splits, REPEAT rounds"
    )
    parser.add_argument("--holes", type=int, metavar="REPEAT", help="instead: hole_cost, REPEAT rounds")
    parser.add_argument(
        "--attention-only", type=int, metavar="REPEAT", help="instead: fit CALL_COST, REPEAT rounds"
    )
    parser.add_argument("--prefill", type=int, metavar="REPEAT", help="instead: prefill_cost, REPEAT rounds")
    parser.add_argument("--prompt-tokens", type=int, default=100, help="--prefill: tokens per joining prompt")
    parser.add_argument("--head", type=int, metavar="REPEAT", help="instead: head_cost, REPEAT rounds")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, _ = load_target(args.dtype)
    if args.head:
        head_cost(model, args.head, args.dtype, args.seed)
        return
    if args.prefill:
        prefill_cost(model, args.prefill, args.context, args.prompt_tokens, args.dtype, args.seed)
        return
    if args.holes:
        hole_cost(model, args.holes, args.context, args.seed)
        return
    if args.attention_only:
        attention_only(model, args.attention_only, args.seed)
        return
    if args.attention_calls:
        attention_calls(model, args.attention_calls, args.context, args.seed)
        return
    vocab = model.config.get_text_config().vocab_size
    generator = torch.Generator().manual_seed(args.seed)
    lengths = torch.randint(args.context[0], args.context[1] + 1, (BATCH,), generator=generator)
    configs: dict[str, tuple[list[int], str]] = {}
    uneven = [1 + d for d in UNEVEN_DRAFTS]
    for mode in MODES:
        for w in range(2, 7):
            configs[f"{mode}[{w}]"] = ([1 + w] * BATCH, mode)
        configs[f"uneven {mode}"] = (uneven, mode)
    times: dict[str, list[float]] = {name: [] for name in configs}
    with torch.inference_mode():
        cache = RaggedKVCache(model, packed=True)
        cache.append([torch.randint(0, vocab, (int(n),), generator=generator).tolist() for n in lengths])
        names = list(configs)
        order = random.Random(args.seed)
        for _ in range(args.repeat + 1):  # the first round warms up
            order.shuffle(names)
            for name in names:
                sizes, mode = configs[name]
                times[name].append(_timed_forward(cache, _block(cache, sizes, vocab, generator), mode))
    medians = {name: statistics.median(t[1:]) for name, t in times.items()}
    rows, payload = [], {}
    for name, (sizes, mode) in configs.items():
        base = name.replace(mode, "padded")
        row = {
            "forward": name,
            "tokens": sum(sizes),
            "forwarded": sum(sizes) if mode == "packed" else BATCH * max(sizes),
            "median_cpu_ms": 1e3 * medians[name],
            "ratio": paired_ratio(times[name][1:], times[base][1:]),
        }
        rows.append(row)
        payload[name] = row | {"cpu_ms": [1e3 * t for t in times[name][1:]]}
    for w in (3, 5):
        for mode in MODES[1:]:
            ratio = paired_ratio(times[f"uneven {mode}"][1:], times[f"padded[{w}]"][1:])
            rows.append({"forward": f"uneven {mode} vs padded[{w}]", "ratio": ratio})
    table = format_table(
        rows,
        [
            ("forward", "forward"),
            ("tokens", "tokens"),
            ("forwarded", "forwarded"),
            ("median_cpu_ms", "median CPU ms"),
            ("ratio", "paired ratio to padded"),
        ],
    )
    meta = run_metadata("cpu") | {
        "contexts": lengths.tolist(),
        "repeat": args.repeat,
        "batch": BATCH,
        "dtype": args.dtype,
    }
    # The defaults write flat_step_b8; other dtypes or contexts a file of their own (they used to
    # overwrite it, and the header said bf16 whatever the model's dtype).
    options = [] if args.dtype == parser.get_default("dtype") else [args.dtype]
    options += (
        [] if args.context == parser.get_default("context") else [f"{args.context[0]}-{args.context[1]}"]
    )
    name = "_".join(["flat_step_b8", *options])
    header = (
        f"Gemma 3 270M {args.dtype}, one thread, batch {BATCH}, contexts {lengths.tolist()}, "
        f"{args.repeat} repeats (python bench/flat_step.py --repeat {args.repeat} --context "
        f"{args.context[0]} {args.context[1]} --dtype {args.dtype})\n"
    )
    print(header + table)
    (RESULTS_DIR / f"{name}.txt").write_text(header + table + "\n")
    write_json(RESULTS_DIR / f"{name}.json", {"meta": meta, "forwards": payload})


if __name__ == "__main__":
    main()
