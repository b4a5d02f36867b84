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
from tetris_ext.kv_cache import RaggedKVCache  # noqa: E402
from tetris_ext.packed_attention import PACKED  # noqa: E402

BATCH = 8
UNEVEN_DRAFTS = [5, 5, 5, 5, 5, 1, 0, 0]  # 26 drafts = 3 * 8 + 2
MODES = ("padded", "grouped", "packed")


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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--context", type=int, nargs=2, default=[300, 500])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, _ = load_target()
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
    meta = run_metadata("cpu") | {"contexts": lengths.tolist(), "repeat": args.repeat, "batch": BATCH}
    header = (
        f"Gemma 3 270M bf16, one thread, batch {BATCH}, contexts {lengths.tolist()}, "
        f"{args.repeat} repeats (python bench/flat_step.py)\n"
    )
    print(header + table)
    (RESULTS_DIR / "flat_step_b8.txt").write_text(header + table + "\n")
    write_json(RESULTS_DIR / "flat_step_b8.json", {"meta": meta, "forwards": payload})


if __name__ == "__main__":
    main()
