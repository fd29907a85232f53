"""The SeqGAN/CoT oracle LSTM (hfcoop.oracle): shapes, determinism, exact likelihood, entropy rate, bad files."""

import math
import pathlib

import numpy as np
import pytest
import torch

from hfcoop.oracle import DEFAULT_PATH, PARAM_SHAPES, SEQ_LEN, VOCAB_SIZE, OracleLSTM

if not pathlib.Path(DEFAULT_PATH).exists():  # a clone without ../shared: the copy bundled in the repo
    DEFAULT_PATH = str(pathlib.Path(__file__).resolve().parent.parent / "recipes/data/oracle_lstm" / pathlib.Path(DEFAULT_PATH).name)


@pytest.fixture(scope="module")
def oracle() -> OracleLSTM:
    return OracleLSTM.from_npz(DEFAULT_PATH)


def test_shapes_and_ranges(oracle):
    samples = oracle.sample(7, seed=0)
    assert samples.shape == (7, SEQ_LEN) and samples.dtype == torch.long
    assert int(samples.min()) >= 0 and int(samples.max()) < VOCAB_SIZE
    logp = oracle.log_probs(samples)
    assert logp.shape == (7, SEQ_LEN) and bool((logp <= 0).all())
    nll = oracle.nll(samples)
    assert nll.shape == (7,) and nll.dtype == torch.float32
    torch.testing.assert_close(nll, -logp.mean(1))
    assert oracle.sample(0, seed=0).shape == (0, SEQ_LEN)
    assert oracle.num_parameters() == 333_320 == sum(int(np.prod(s)) for s in PARAM_SHAPES.values())


def test_seeded_sampling_is_deterministic_and_prefix_stable(oracle):
    a, b = oracle.sample(300, seed=3), oracle.sample(300, seed=3)  # 300 rows: two RNG chunks
    assert torch.equal(a, b)
    assert torch.equal(oracle.sample(10, seed=3), a[:10])  # independent of how many rows are asked for
    assert not torch.equal(oracle.sample(10, seed=4), a[:10])
    assert len({tuple(r) for r in a.tolist()}) == 300  # 20 tokens of a ~5.7-nat/token source never collide


def _reference_nll(path: str, sequences: np.ndarray) -> np.ndarray:
    """Step-by-step float64 numpy version of the README's cell, written independently of hfcoop.oracle."""
    p = {k: v.astype(np.float64) for k, v in np.load(path, allow_pickle=False).items()}
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    out = []
    for seq in sequences:
        h, c = np.zeros(32), np.zeros(32)
        x, total = p["embedding"][0], 0.0  # START_TOKEN = 0
        for token in seq:
            i = sig(x @ p["Wi"] + h @ p["Ui"] + p["bi"])
            f = sig(x @ p["Wf"] + h @ p["Uf"] + p["bf"])
            o = sig(x @ p["Wog"] + h @ p["Uog"] + p["bog"])
            c_tilde = np.tanh(x @ p["Wc"] + h @ p["Uc"] + p["bc"])
            c = f * c + i * c_tilde
            h = o * np.tanh(c)
            logits = h @ p["Wo"] + p["bo"]
            log_z = logits.max() + np.log(np.exp(logits - logits.max()).sum())
            total += log_z - logits[token]
            x = p["embedding"][token]
        out.append(total / len(seq))
    return np.array(out)


def test_nll_matches_hand_rolled_cell(oracle):
    seqs = torch.cat([oracle.sample(1, seed=11), torch.tensor([[0, 4999, 17, 17, 17] + list(range(100, 115))])])
    expected = _reference_nll(DEFAULT_PATH, seqs.numpy())
    np.testing.assert_allclose(oracle.nll(seqs).double().numpy(), expected, rtol=0, atol=2e-4)
    # The unlikely hand-written row scores far worse than the oracle's own sample.
    assert expected[1] > expected[0] + 2


def test_own_samples_score_the_entropy_rate(oracle):
    """E_{x~oracle}[NLL(x)] is the oracle's entropy rate. Two independent estimators must agree: the mean NLL of
    samples, and the Rao-Blackwellised mean of the per-step entropies H(p(.|x_<t)) along other samples. SeqGAN
    reports 5.750 for the oracle's own data; uniform random tokens must score far above log(5000)."""
    samples = oracle.sample(1024, seed=0)
    nll = oracle.nll(samples)
    _, step_entropy = oracle.sample(1024, seed=1, return_entropy=True)
    se = math.sqrt(nll.var().item() / len(nll) + step_entropy.var().item() / len(step_entropy))
    assert abs(nll.mean().item() - step_entropy.mean().item()) < 4 * se
    assert abs(nll.mean().item() - 5.75) < 0.1 and abs(step_entropy.mean().item() - 5.75) < 0.05
    uniform = torch.randint(0, VOCAB_SIZE, (500, SEQ_LEN), generator=torch.Generator().manual_seed(0))
    assert oracle.nll(uniform).mean().item() > math.log(VOCAB_SIZE) + 2  # the oracle is peaked (~11.4 nats)


def test_temperature_sharpens_samples(oracle):
    cold = oracle.nll(oracle.sample(256, seed=5, temperature=0.7)).mean()
    assert cold < oracle.nll(oracle.sample(256, seed=5)).mean() - 0.5


def test_missing_and_wrong_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="Oracle parameters not found"):
        OracleLSTM.from_npz(tmp_path / "nope.npz")
    text = tmp_path / "params.npz"
    text.write_text("not an archive")
    with pytest.raises(ValueError, match="pickle-free .npz"):
        OracleLSTM.from_npz(text)
    good = dict(np.load(DEFAULT_PATH, allow_pickle=False))
    partial = tmp_path / "partial.npz"
    np.savez(partial, **{k: v for k, v in good.items() if k != "Wo"})
    with pytest.raises(ValueError, match=r"missing arrays \['Wo'\]"):
        OracleLSTM.from_npz(partial)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, **{**good, "embedding": good["embedding"][:100]})
    with pytest.raises(ValueError, match=r"'embedding' has shape \(100, 32\)"):
        OracleLSTM.from_npz(wrong)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, **{**good, "bo": np.array([{"evil": 1}], dtype=object)})
    with pytest.raises(ValueError, match="Object arrays cannot be loaded"):  # refused, never unpickled
        OracleLSTM.from_npz(pickled)


def test_bad_sequences(oracle):
    with pytest.raises(ValueError, match=r"\(n, 20\)"):
        oracle.nll(torch.zeros(3, 19, dtype=torch.long))
    with pytest.raises(ValueError, match="BOS/EOS"):
        oracle.nll(torch.full((1, SEQ_LEN), VOCAB_SIZE))
    with pytest.raises(ValueError, match="integer"):
        oracle.nll(torch.zeros(1, SEQ_LEN))
