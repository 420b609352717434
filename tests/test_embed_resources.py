"""Resource requests of the embedding actors (pure arithmetic: no Ray needed)."""

import math

import pytest

from whichmodel.stages.embed import EmbedConfig, actor_resources, cpu_actor_threads


@pytest.mark.parametrize(
    ("gpus", "models", "share", "max_actors"),
    [(1, 4, 0.25, 4), (1, 1, 1.0, 1), (2, 4, 0.5, 4), (8, 2, 1.0, 8), (2, 3, 0.5, 4)],
)
def test_gpu_actors_of_all_stages_fit_at_once(gpus, models, share, max_actors):
    # Every model stage needs an actor alive at the same time, or the stream stalls forever.
    # Ray packs fractional shares into whole devices: 3 models on 2 GPUs at 2/3 each would fit
    # by the total (2.0) but only two of them fit on the devices.
    res, most = actor_resources(16, gpus, models, EmbedConfig())
    assert res["num_gpus"] == share and most == max_actors
    assert gpus * math.floor(1 / res["num_gpus"] + 1e-9) >= models


@pytest.mark.parametrize(
    ("cpus", "threads", "actors"), [(1, 1, 1), (2, 2, 1), (3, 3, 1), (16, 4, 4), (6, 4, 1)]
)
def test_cpu_only_all_model_actors_split_the_cpus(cpus, threads, actors):
    # One actor holds every model; each gets at most cpu_threads_per_actor torch threads.
    assert cpu_actor_threads(cpus, EmbedConfig()) == (threads, actors)
    assert threads * actors <= cpus
