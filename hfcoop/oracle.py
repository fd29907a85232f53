"""The synthetic "Turing test" oracle of SeqGAN (Yu et al., 2017), reused by CoT (Lu et al., 2019, Sec. 4.1) and
ψ-MLE (Song et al., 2020, Sec. 5.2): a fixed, randomly initialised one-layer LSTM over 5,000 tokens whose
density is known, so the quality of a generator's samples can be measured exactly as their NLL under the oracle.

Cell (SeqGAN/CoT ``target_lstm.py``; ``../shared/data/oracle_lstm/README.md``), row vectors, no peepholes::

    i = σ(x Wi + h Ui + bi)      f = σ(x Wf + h Uf + bf)      o = σ(x Wog + h Uog + bog)
    c~ = tanh(x Wc + h Uc + bc)  c = f * c_prev + i * c~       h = o * tanh(c)
    logits = h Wo + bo           h0 = c0 = 0,  x_1 = embedding[START_TOKEN = 0],  x_{t+1} = embedding[token_t]

Sequences are exactly ``SEQ_LEN = 20`` tokens from ``0..4999`` (no BOS/EOS in them: the start token is only the
first *input*, and token 0 may also be sampled later, as in SeqGAN).

**NLL convention** (what the papers call NLL_oracle / NLL_test): SeqGAN's ``target_loss`` averages
``TARGET_LSTM.pretrain_loss`` = ``-Σ log p(x_t | x_<t) / (seq_len · batch)`` over batches, i.e. the **mean
per-token NLL in nats, averaged over the 20 positions** of each sequence and then over sequences (all sequences
have 20 tokens, so per-token and per-sequence/20 coincide). :meth:`OracleLSTM.nll` returns that per-sequence
mean over positions; ``.mean()`` of it is NLL_oracle on the papers' scale (SeqGAN: the oracle's own samples
score 5.75; an MLE-trained LSTM generator about 9.0; log 5000 = 8.52).

The parameters come from the SeqGAN release (``save/target_params_py3.pkl``), converted to a pickle-free ``.npz``
(loaded with ``allow_pickle=False``).
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import torch
from torch import nn

VOCAB_SIZE = 5000
HIDDEN_SIZE = 32
EMBEDDING_SIZE = 32
SEQ_LEN = 20
START_TOKEN = 0
DEFAULT_PATH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "shared", "data", "oracle_lstm", "seqgan_oracle_target_params.npz",
)  # fmt: skip
"""Where the shared data folder keeps the parameters (``<repo>/../shared/data/oracle_lstm``)."""

# Array names and shapes, in the order of SeqGAN's parameter list.
PARAM_SHAPES: dict[str, tuple[int, ...]] = {
    "embedding": (VOCAB_SIZE, EMBEDDING_SIZE),
    **{f"{w}{g}": (EMBEDDING_SIZE if w == "W" else HIDDEN_SIZE, HIDDEN_SIZE) for g in ("i", "f", "og", "c") for w in "WU"},
    **{f"b{g}": (HIDDEN_SIZE,) for g in ("i", "f", "og", "c")},
    "Wo": (HIDDEN_SIZE, VOCAB_SIZE),
    "bo": (VOCAB_SIZE,),
}
_SAMPLE_CHUNK = 256  # rows drawn per RNG stream; makes samples independent of how many are asked for


class OracleLSTM(nn.Module):
    """The fixed oracle. ``OracleLSTM.from_npz(path)``; ``.sample(n, seed)``; ``.nll(sequences)``.

    Parameters are buffers (the oracle is never trained). Computation is float32, as in the TensorFlow original.
    """

    vocab_size = VOCAB_SIZE
    seq_len = SEQ_LEN
    start_token = START_TOKEN

    def __init__(self, params: dict[str, np.ndarray | torch.Tensor]) -> None:
        super().__init__()
        missing = sorted(set(PARAM_SHAPES) - set(params))
        if missing:
            raise ValueError(f"Oracle parameters are missing arrays {missing}; expected {list(PARAM_SHAPES)}.")
        for name, shape in PARAM_SHAPES.items():
            value = torch.as_tensor(np.asarray(params[name]), dtype=torch.float32)
            if tuple(value.shape) != shape:
                raise ValueError(f"Oracle parameter '{name}' has shape {tuple(value.shape)}, expected {shape}.")
            self.register_buffer(name, value.clone())
        # The four gates' input / recurrent weights side by side: one matmul each per step (order i, f, o, c~).
        self.register_buffer("W_all", torch.cat([self.Wi, self.Wf, self.Wog, self.Wc], dim=1))
        self.register_buffer("U_all", torch.cat([self.Ui, self.Uf, self.Uog, self.Uc], dim=1))
        self.register_buffer("b_all", torch.cat([self.bi, self.bf, self.bog, self.bc]))

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_npz(cls, path: str | os.PathLike | None = None, device: str | torch.device | None = None) -> "OracleLSTM":
        """Loads the oracle from SeqGAN's parameters saved as ``.npz`` (never unpickled: ``allow_pickle=False``).

        ``path`` defaults to :data:`DEFAULT_PATH`. A missing or malformed file raises a clear error."""
        path = os.fspath(path if path is not None else DEFAULT_PATH)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"Oracle parameters not found at '{path}'. Expected SeqGAN's target LSTM as an .npz with arrays "
                f"{list(PARAM_SHAPES)} (see ../shared/data/oracle_lstm/README.md)."
            )
        try:
            with np.load(path, allow_pickle=False) as archive:
                params = {name: archive[name] for name in archive.files}
        except Exception as err:  # not a zip/npz, truncated, or an object array that would need pickle
            raise ValueError(
                f"'{path}' is not a readable pickle-free .npz of the oracle's arrays ({type(err).__name__}: {err}). "
                "Convert the parameters to plain float32 arrays first; pickled parameters are never loaded."
            ) from err
        if not isinstance(params, dict) or not params:
            raise ValueError(f"'{path}' holds no named arrays; expected {list(PARAM_SHAPES)}.")
        oracle = cls(params)
        return oracle.to(device) if device is not None else oracle

    # ------------------------------------------------------------------ the cell
    def init_state(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        zeros = torch.zeros(batch, HIDDEN_SIZE, device=self.embedding.device)
        return zeros, zeros.clone()

    def cell(
        self, x: torch.Tensor, h_prev: torch.Tensor, c_prev: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step: input embeddings ``x`` (B, 32) and state -> (logits (B, 5000), h, c)."""
        gates = x @ self.W_all + h_prev @ self.U_all + self.b_all
        i, f, o, c_tilde = gates.split(HIDDEN_SIZE, dim=1)
        c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(c_tilde)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h @ self.Wo + self.bo, h, c

    def _check(self, sequences: torch.Tensor) -> torch.Tensor:
        sequences = torch.as_tensor(sequences)
        if sequences.dim() != 2 or sequences.shape[1] != SEQ_LEN:
            raise ValueError(f"Oracle sequences must be (n, {SEQ_LEN}) token ids, got shape {tuple(sequences.shape)}.")
        if sequences.dtype.is_floating_point or sequences.dtype == torch.bool:
            raise ValueError(f"Oracle sequences must be integer token ids, got {sequences.dtype}.")
        if sequences.numel() and (int(sequences.min()) < 0 or int(sequences.max()) >= VOCAB_SIZE):
            raise ValueError(
                f"Oracle token ids must lie in [0, {VOCAB_SIZE}); got values in [{int(sequences.min())}, "
                f"{int(sequences.max())}] (a generator's BOS/EOS id must be stripped before scoring)."
            )
        return sequences.long().to(self.embedding.device)

    # ------------------------------------------------------------------ likelihood
    @torch.no_grad()
    def log_probs(self, sequences: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """Teacher-forced ``log p(x_t | x_<t)`` of every position, ``(n, 20)`` (float32)."""
        sequences = self._check(sequences)
        out = []
        for chunk in sequences.split(batch_size):
            h, c = self.init_state(chunk.shape[0])
            x = self.embedding[torch.full((chunk.shape[0],), START_TOKEN, device=chunk.device)]
            steps = []
            for t in range(SEQ_LEN):
                logits, h, c = self.cell(x, h, c)
                steps.append(torch.log_softmax(logits, dim=-1).gather(1, chunk[:, t : t + 1]).squeeze(1))
                x = self.embedding[chunk[:, t]]
            out.append(torch.stack(steps, dim=1))
        return torch.cat(out) if out else torch.zeros(0, SEQ_LEN)

    def nll(self, sequences: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """Per-sequence NLL in nats, **averaged over the 20 positions** (SeqGAN's convention; see the module
        docstring), shape ``(n,)``. ``oracle.nll(samples).mean()`` is NLL_oracle as the papers report it."""
        return -self.log_probs(sequences, batch_size).mean(dim=1)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, n: int, seed: int, temperature: float = 1.0, return_entropy: bool = False):
        """``n`` ancestral samples ``(n, 20)`` (LongTensor) from the start token, as SeqGAN's ``generate``.

        Deterministic in ``seed`` (per device); rows are drawn in chunks of 256 from per-chunk RNG streams, so
        ``sample(m, seed)`` is the first ``m`` rows of ``sample(n, seed)`` for ``m <= n``. With
        ``return_entropy=True`` also returns each row's mean per-step entropy ``H(p(. | x_<t))`` (nats), whose
        average is a low-variance (Rao-Blackwellised) estimate of the oracle's entropy rate.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}.")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        rows, entropies = [], []
        for k, size in enumerate(_chunks(n)):
            gen = torch.Generator(device=self.embedding.device).manual_seed(_chunk_seed(seed, k))
            h, c = self.init_state(_SAMPLE_CHUNK)
            x = self.embedding[torch.full((_SAMPLE_CHUNK,), START_TOKEN, device=self.embedding.device)]
            tokens, ent = [], torch.zeros(_SAMPLE_CHUNK, device=self.embedding.device)
            for _ in range(SEQ_LEN):
                logits, h, c = self.cell(x, h, c)
                logits = logits / temperature if temperature != 1.0 else logits
                probs = torch.softmax(logits, dim=-1)
                if return_entropy:
                    ent += -(probs * torch.log_softmax(logits, dim=-1)).sum(-1)
                token = inverse_cdf_sample(probs, gen)
                tokens.append(token)
                x = self.embedding[token]
            rows.append(torch.stack(tokens, dim=1)[:size])
            entropies.append(ent[:size] / SEQ_LEN)
        samples = torch.cat(rows) if rows else torch.zeros(0, SEQ_LEN, dtype=torch.long)
        if return_entropy:
            return samples, (torch.cat(entropies) if entropies else torch.zeros(0))
        return samples

    def num_parameters(self) -> int:
        """Parameters of the oracle (embedding, 4 gates, output layer): 333,320, as many as the SeqGAN/CoT LSTM
        generator that shares its sizes."""
        return sum(int(np.prod(shape)) for shape in PARAM_SHAPES.values())


def _chunks(n: int) -> Iterator[int]:
    for start in range(0, n, _SAMPLE_CHUNK):
        yield min(_SAMPLE_CHUNK, n - start)


def _chunk_seed(seed: int, chunk: int) -> int:
    return (int(seed) * 1_000_003 + chunk * 7919 + 12345) % (2**63 - 1)


def inverse_cdf_sample(probs: torch.Tensor, generator: torch.Generator, block: int = 100) -> torch.Tensor:
    """One categorical draw per row of (unnormalised) ``probs`` by inverse CDF, in two float64 levels: blocks of
    ``block`` entries first, then the entry inside the chosen block. The law is exactly ``multinomial(probs, 1)``'s
    (up to float64 rounding), at a fraction of the cost of a full-width float64 cumsum."""
    rows, width = probs.shape
    pad = (-width) % block
    if pad:
        probs = torch.nn.functional.pad(probs, (0, pad))
    blocks = probs.view(rows, -1, block)
    block_cdf = blocks.sum(-1, dtype=torch.float64).cumsum(-1)
    u = torch.rand(rows, 1, dtype=torch.float64, device=probs.device, generator=generator) * block_cdf[:, -1:]
    b = torch.searchsorted(block_cdf, u, right=True).clamp_(max=block_cdf.shape[1] - 1)
    below = torch.where(b > 0, block_cdf.gather(1, (b - 1).clamp(min=0)), torch.zeros_like(u))
    inner = blocks.gather(1, b[:, :, None].expand(rows, 1, block)).squeeze(1).double().cumsum(-1)
    j = torch.searchsorted(inner, u - below, right=True).clamp_(max=block - 1)
    return (b.squeeze(1) * block + j.squeeze(1)).clamp_(max=width - 1)
