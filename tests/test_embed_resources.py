"""Resource requests of the embedding actors (pure arithmetic: no Ray needed)."""

import pytest

from engine.embed import EmbedConfig, actor_resources


@pytest.mark.parametrize(
    ("gpus", "models", "share", "max_actors"),
    [(1, 4, 0.25, 4), (1, 1, 1.0, 1), (2, 4, 0.5, 4), (8, 2, 1.0, 8)],
)
def test_gpu_actors_of_all_stages_fit_at_once(gpus, models, share, max_actors):
    # Every model stage needs an actor alive at the same time, or the stream stalls forever.
    res, most = actor_resources(16, gpus, models, EmbedConfig())
    assert res["num_gpus"] == share and most == max_actors
    assert res["num_gpus"] * models <= gpus


def test_cpu_actors_leave_room_for_decoding():
    res, most = actor_resources(2, 0, 4, EmbedConfig())
    assert "num_gpus" not in res and res["num_cpus"] * 4 < 2 and most == 1
