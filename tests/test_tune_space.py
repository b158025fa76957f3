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


def test_each_method_searches_its_own_settings_with_their_types():
    """compare_methods --tune: CAM its learning rates, BAS its weights, warm-up and the authors'
    variants, bgwsol the main job's space; choices come back as their settings' types."""
    from bgwsol.training.tune import SPACES

    search = SearchConfig()
    assert set(SPACES) == {"cam", "bas", "bgwsol"} and set(SPACES["bgwsol"]) >= set(PARAMS)
    assert set(SPACES["cam"]) == {"lr", "head_lr_mult"}
    for method, space in SPACES.items():
        base = replace(RunConfig(), **{"method.name": method})
        sampled = {k: v.sample() for k, v in param_space(search, space).items()}
        cfg = trial_config(base, sampled)
        assert params_of(cfg, space) == sampled
        assert params_of(base, space) == params_of(trial_config(base, params_of(base, space)), space)
    cfg = trial_config(RunConfig(), {"bas_warmup_epochs": 0, "bas_map": "mean", "head_lr_mult": 10})
    assert (cfg.method.bas_warmup_epochs, cfg.method.bas_map, cfg.train.head_lr_mult) == (0, "mean", 10.0)
    assert isinstance(cfg.method.bas_warmup_epochs, int) and isinstance(cfg.train.head_lr_mult, float)
    space = param_space(search, SPACES["bas"])
    assert {space["bas_activation"].sample() for _ in range(40)} == {"pixel", "pooled"}
