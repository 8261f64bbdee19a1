"""The job plan of perturbation curves and its batches, by hand; read-ahead never changes a value or a batch."""

from __future__ import annotations

import numpy as np
import torch

from xaiclip_cli.metrics import insertion_deletion as ID


def test_plan_is_mode_major_then_image_then_step() -> None:
    cnt = [np.array([0, 1, 2]), np.array([0, 2])]
    plan = ID.plan_curves(2, cnt, ["deletion", "insertion"], torch.device("cpu"))
    assert plan.size == 10
    assert plan.img.tolist() == [0, 0, 0, 1, 1, 0, 0, 0, 1, 1]
    assert plan.thr.tolist() == [0, 1, 2, 0, 2, 0, 1, 2, 0, 2]
    assert plan.ins.tolist() == [False] * 5 + [True] * 5
    assert plan.slots == {"deletion": [slice(0, 3), slice(3, 5)], "insertion": [slice(5, 8), slice(8, 10)]}
    curves = plan.curves(np.arange(10.0))
    assert [c.tolist() for c in curves["deletion"]] == [[0, 1, 2], [3, 4]]
    assert [c.tolist() for c in curves["insertion"]] == [[5, 6, 7], [8, 9]]


def test_batches_by_hand() -> None:
    # one image, 1x3 pixels ranked [2, 0, 1]; x = 1, baseline = 0; counts 0, 1, 3
    x = torch.ones(1, 1, 1, 3)
    base = torch.zeros(1, 1, 1, 3)
    ranks = torch.tensor([[[2, 0, 1]]])
    plan = ID.plan_curves(1, np.array([0, 1, 3]), ["deletion", "insertion"], torch.device("cpu"))
    got = list(ID.perturbed_batches(x, base, ranks, plan, batch_size=4))
    assert [sl for sl, _ in got] == [slice(0, 4), slice(4, 6)]
    rows = torch.cat([b for _, b in got]).reshape(6, 3).tolist()
    assert rows == [[1, 1, 1], [1, 0, 1], [0, 0, 0],  # deletion: pixels of rank < n_i take the baseline
                    [0, 0, 0], [0, 1, 0], [1, 1, 1]]  # insertion: only they keep the image


def test_read_ahead_changes_nothing_bit_for_bit() -> None:
    rng = np.random.default_rng(5)
    x = torch.as_tensor(rng.normal(size=(4, 3, 8, 8)), dtype=torch.float32)
    base = torch.as_tensor(rng.normal(size=(4, 3, 8, 8)), dtype=torch.float32)
    ranks = torch.stack([torch.as_tensor(ID.pixel_ranks(rng.random((4, 4)), (8, 8))) for _ in range(4)])
    cnt = [ID.counts(64, s) for s in (5, 7, 5, 9)]
    w = torch.as_tensor(rng.normal(size=(3, 8, 8)), dtype=torch.float32)
    sizes: list[list[int]] = []

    def score(b, t):
        sizes[-1].append(int(b.shape[0]))
        return torch.tanh((b * w).sum(dim=(1, 2, 3)) / 10 + t)

    out = {}
    for depth in (0, 2):
        sizes.append([])
        out[depth] = ID.perturbation_curves(score, x, base, ranks, cnt, ("deletion", "insertion"), [0, 1, 0, 1],
                                            batch_size=16, prefetch=depth)
    assert sizes[0] == sizes[1] == [16, 16, 16, 12]  # 2 * (6 + 8 + 6 + 10) = 60 jobs in the same batches
    for m in ("deletion", "insertion"):
        assert [c.tolist() for c in out[0][m]] == [c.tolist() for c in out[2][m]]
    # step 0 of deletion is the image itself: its score, by hand
    assert out[2]["deletion"][1][0] == float(torch.tanh((x[1] * w).sum() / 10 + 1))


def test_batches_equal_gathering_every_job() -> None:
    # the run-by-run batches against the plain formula where(rank < n_i xor insertion, baseline, image) per job
    rng = np.random.default_rng(9)
    x = torch.as_tensor(rng.normal(size=(3, 2, 5, 5)), dtype=torch.float32)
    base = torch.as_tensor(rng.normal(size=(3, 2, 5, 5)), dtype=torch.float32)
    ranks = torch.stack([torch.as_tensor(ID.pixel_ranks(rng.random((5, 5)), (5, 5))) for _ in range(3)])
    cnt = [ID.counts(25, s) for s in (4, 6, 3)]
    plan = ID.plan_curves(3, cnt, ["deletion", "insertion"], torch.device("cpu"))
    img, thr, ins = plan.img, plan.thr, plan.ins
    want = torch.where(((ranks[img] < thr.view(-1, 1, 1)) ^ ins.view(-1, 1, 1)).unsqueeze(1), base[img], x[img])
    for bs in (1, 4, 7, 64):
        got = list(ID.perturbed_batches(x, base, ranks, plan, bs))
        assert [sl.stop - sl.start for sl, _ in got][:-1] == [bs] * (len(got) - 1)
        assert torch.equal(torch.cat([b for _, b in got]), want)
