"""QK-norm under tensor parallelism on real gloo processes: the per-head gains (one [head_dim]
vector shared by every head) see only a rank's own heads, so unless the plan reduces their
gradients over the tensor-parallel ranks each rank's copy drifts away from the single-process run.
Both builds (a plain model parallelised, and the meta-device build) must give the single-process
loss curve and, on every rank and in the sharded checkpoint, its final weights."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import dist_common  # noqa: E402
from lmforge.checkpoint.sharded import full_state_dict  # noqa: E402
from lmforge.distributed import DistContext  # noqa: E402
from lmforge.model.transformer import Transformer  # noqa: E402
from qk_norm_dist_worker import STEPS, model_config  # noqa: E402

LOSS_RTOL, WEIGHT_ATOL = 1e-5, 5e-5
LAYOUTS = [
    {"name": "tp2", "parallel": {"tp": 2}},
    {"name": "meta-tp2", "parallel": {"tp": 2}, "meta": True},
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return dist_common.run_layouts("qk_norm_dist_worker.py", tmp_path_factory.mktemp("qk_norm"), LAYOUTS)


@pytest.fixture(scope="module")
def reference() -> tuple[list[float], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = Transformer(model_config())
    losses = dist_common.train(model, dist_common.optimizer(model), DistContext(), range(STEPS))
    return losses, {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda lay: lay["name"])
def test_tensor_parallel_qk_norm_matches_single_process(runs, reference, layout):
    ref_losses, ref_weights = reference
    losses = json.loads((runs / f"{layout['name']}.json").read_text())
    assert losses == pytest.approx(ref_losses, rel=LOSS_RTOL)
    gains = [k for k in ref_weights if k.endswith(("q_norm.weight", "k_norm.weight"))]
    assert len(gains) == 2 * dist_common.model_config().n_layer
    assert all((ref_weights[k] - 1).abs().max() > 1e-3 for k in gains)  # the gains do train
    copies = {f"rank {r}": torch.load(runs / f"{layout['name']}.rank{r}.pt") for r in range(2)}
    copies["checkpoint"] = full_state_dict(runs / layout["name"])
    for where, weights in copies.items():
        assert set(weights) == set(ref_weights), where
        for key, ref in ref_weights.items():
            torch.testing.assert_close(
                weights[key], ref, rtol=0, atol=WEIGHT_ATOL, msg=f"{layout['name']} {where}: {key}"
            )
