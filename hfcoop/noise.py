"""Third-party messages a user of hfcoop can do nothing about, filtered once when hfcoop is imported.

Each filter names one exact message and why it is noise; anything else from these libraries still gets through.
"""

from __future__ import annotations

import logging

# logger name -> message prefixes dropped from it
_DROPPED: dict[str, tuple[str, ...]] = {
    # bitsandbytes (0.50) tries, at import, to fetch a fused CPU 4-bit kernel from the Hub through `kernels`; the
    # kernels library refuses it unless remote code is trusted (or the Hub is unreachable), and bitsandbytes falls
    # back to its own kernel. hfcoop never trusts remote code by default, so the message is printed on every import.
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward from kernels-community",),
    "kernels._internals.hf_hub": ("Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'",),
}


class _DropPrefixes(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_unactionable_messages() -> None:
    """Install the filters (idempotent); cheap, imports nothing."""
    for name, prefixes in _DROPPED.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefixes) for f in logger.filters):
            logger.addFilter(_DropPrefixes(prefixes))
