"""Value embeddings under FSDP2 on real gloo processes: the single-process loss curve, from the
sharded meta-device build. Tensor parallelism refuses them; the TP layout here, without them,
checks that the blocks' new value-embedding argument reaches attention through the TP plan."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import dist_common  # noqa: E402
from lmforge.distributed import DistContext  # noqa: E402
from lmforge.model.transformer import Transformer  # noqa: E402
from value_embeds_dist_worker import STEPS, model_config  # noqa: E402

LAYOUTS = [
    {"name": "fsdp2", "parallel": {"dp_shard": 2}, "value_embeds": 2},
    {"name": "tp2", "parallel": {"tp": 2}, "value_embeds": 0},
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return dist_common.run_layouts(
        "value_embeds_dist_worker.py", tmp_path_factory.mktemp("value_embeds"), LAYOUTS
    )


@pytest.mark.slow  # one ~30 s fixture of gloo runs
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda lay: lay["name"])
def test_layout_matches_single_process(runs, layout):
    torch.manual_seed(0)
    model = Transformer(model_config(layout["value_embeds"]))
    reference = dist_common.train(model, dist_common.optimizer(model), DistContext(), range(STEPS))
    losses = json.loads((runs / f"{layout['name']}.json").read_text())
    assert losses == pytest.approx(reference, rel=1e-5)
    assert len(set(losses)) == STEPS  # the weights move


def test_tensor_parallelism_refuses_value_embeds():
    from lmforge.distributed.parallel_plan import apply_tp
    from lmforge.errors import LmforgeError

    with pytest.raises(LmforgeError, match="tensor parallelism.*value_embeds"):
        apply_tp(Transformer(model_config(2)), tp_mesh=None)
