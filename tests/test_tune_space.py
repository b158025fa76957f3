"""The search space maps onto config fields both ways."""

from bgwsol.config import RunConfig, replace
from bgwsol.training.tune import PARAMS, SearchConfig, param_space, params_of, trial_config


def test_trial_config_sets_exactly_the_searched_fields():
    base = replace(RunConfig(), **{"train.epochs": 3})
    sampled = {"lambda_bg": 2.0, "lambda_mask": 0.1, "lambda_fg": 1.5, "lambda_area": 0.2, "alpha": 0.4, "lr": 0.01}
    cfg = trial_config(base, {**sampled, "unrelated": 7})
    assert params_of(cfg) == sampled
    assert cfg.train.epochs == 3 and cfg.method.name == base.method.name


def test_param_space_covers_every_parameter_within_its_bounds():
    search = SearchConfig(lr=(0.02, 0.03), alpha=(0.5, 0.6))
    space = param_space(search)
    assert set(space) == set(PARAMS)
    for _ in range(50):
        assert 0.02 <= space["lr"].sample() <= 0.03 and 0.5 <= space["alpha"].sample() <= 0.6
