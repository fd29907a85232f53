"""hfcoop.batching: the one home of sequence/batch layout (left-padded prompts, right-padded completions)."""

import torch

from hfcoop.batching import concat_rows, pad_left, pad_right, pad_to_common_width


def test_pad_left_and_right_place_tokens_and_masks():
    ids, mask = pad_left([[1, 2], [3], []], pad_id=9)
    assert ids.tolist() == [[1, 2], [9, 3], [9, 9]] and mask.tolist() == [[1, 1], [0, 1], [0, 0]]
    ids, mask = pad_right([[1, 2], [3], []], pad_id=9)
    assert ids.tolist() == [[1, 2], [3, 9], [9, 9]] and mask.tolist() == [[1, 1], [1, 0], [0, 0]]
    ids, mask = pad_right([[], []], pad_id=0, min_width=1)  # scorers / MCTS need one column even when empty
    assert ids.shape == (2, 1) and mask.sum() == 0


def test_real_and_generated_rows_share_one_batch():
    real = (torch.tensor([[5, 6, 7]]), torch.tensor([[1, 1, 0]]))
    gen = (torch.tensor([[8], [4]]), torch.tensor([[1], [1]]))
    ids, mask = concat_rows([real, gen], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [4, 0, 0]]
    assert mask.tolist() == [[1, 1, 0], [1, 0, 0], [1, 0, 0]]
    widths = {i.shape[1] for i, _ in pad_to_common_width([real, gen, (gen[0][:0], gen[1][:0])], pad_id=0)}
    assert widths == {3}
