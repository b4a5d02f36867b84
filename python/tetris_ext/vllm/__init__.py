"""tetris_ext inside vLLM (optional: `pip install tetris_ext[vllm]`).

- `speculative_config(policy=..., k=..., extra=..., ...)` (config.py): the dict a user passes as
  `vllm.LLM(speculative_config=...)` to run the TETRIS proposer (proposer.py) in vLLM's V1 runner.
- `register()` (dropin.py): the `vllm.general_plugins` entry point named `tetris_ext`; with
  `TETRIS_VLLM_DROPIN=1` it puts `tetris.select` in place of the budget step of vLLM's adaptive
  verification (V2 runner, GPU).
- `gemma3_270m_path()` (model_path.py): a Gemma 3 270M folder vLLM loads offline.

Importing this package does not import vLLM; each name loads its module on first use.
"""

import importlib

_MODULE_OF = {
    "speculative_config": "config",
    "register": "dropin",
    "gemma3_270m_path": "model_path",
}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
