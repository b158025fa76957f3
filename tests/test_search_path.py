"""One search path (issue #38): the main job, the comparison and the tune flow name a search by
what it depends on. The tune flow named its search "tune-bgwsol" whatever the shards and
settings, so a rerun on other data restored the old search (finished trials kept, its best trial
reported for data it never saw)."""

import pytest

from bgwsol.config import replace
from bgwsol.workflows import fit_and_score
from bgwsol.workflows.tune_job import TuneJob, run_tune


class Named(Exception):
    """Raised by the stand-in search once it has been told its name: nothing is trained."""


@pytest.fixture
def search_names(monkeypatch):
    names = []

    def named_only(base, data, cluster, tracking, search, name, **kwargs):
        names.append(name)
        raise Named(name)

    monkeypatch.setattr(fit_and_score, "run_search", named_only)
    return names


@pytest.fixture(scope="module")
def other_background(tiny_synthetic, ray_local, tmp_path_factory):
    """A second background shard set: the same photos but the first one, so other training data."""
    from bgwsol.data.shards.etl import ShardConfig, SplitListing, listing_rows, write_shard_set
    from bgwsol.data.sources.background import read_background_folder

    samples = read_background_folder(tiny_synthetic[0].background)[1:]
    out = tmp_path_factory.mktemp("other_bg") / "bg"
    write_shard_set([SplitListing("background", listing_rows(samples, []))], out, dataset="background", classes=[],
                    cfg=ShardConfig(max_short_side=40, samples_per_shard=9))
    return str(out)


@pytest.mark.ray
def test_a_tune_flow_rerun_on_other_data_or_settings_starts_a_new_search(shard_sets, other_background, search_names,
                                                                         tmp_path):
    job = TuneJob(shards=shard_sets[0], background_shards=shard_sets[1])
    job = replace(job, **{"cluster.storage_path": str(tmp_path / "runs")})
    for rerun in (job, job,  # the same shards and settings: the same search, continued
                  replace(job, **{"run.method.lambda_bg": 2.0}),  # other settings
                  replace(job, **{"search.num_samples": 7}),  # another search
                  replace(job, background_shards=other_background)):  # other background photos
        with pytest.raises(Named):
            run_tune(rerun)
    first, again, settings, search, background = search_names
    assert first == again and first.startswith("tune-bgwsol-")
    assert len({first, settings, search, background}) == 4


@pytest.mark.ray
def test_the_main_job_and_the_comparison_name_searches_the_same_way(shard_sets, search_names):
    from bgwsol.config import RunConfig
    from bgwsol.data.plan import RunData, plan_data
    from bgwsol.training.tune import SPACES, SearchConfig
    from bgwsol.workflows.compare import tune_one

    data = RunData(*shard_sets)
    plan = plan_data(data, False)
    cam = replace(RunConfig(), **{"method.name": "cam", "train.seed": 1})
    with pytest.raises(Named):
        tune_one(cam, data, plan, None, None, SearchConfig(), [], "unused")
    with pytest.raises(Named):
        fit_and_score.search_and_score(cam, data, plan, None, None, SearchConfig(), prefix="tune-cam-seed1",
                                       params=SPACES["cam"])
    # CAM trains without background photos: its search depends on the dataset's shards alone
    assert search_names[0] == search_names[1] == fit_and_score.search_name("tune-cam-seed1", cam, SearchConfig(),
                                                                           plan.digest)
