"""Which hyperparameters mattered in a search, from its recorded trials alone: Optuna's fANOVA (which runs on
scikit-learn's random forests) over an in-memory study rebuilt from the trials."""

from __future__ import annotations

import warnings


def _distribution(values: list):
    """The optuna distribution a list of recorded values fits, or None if the values do not vary."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if len(set(values)) < 2:
        return None
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        low, high = min(values), max(values)
        return IntDistribution(low, high, log=low >= 1 and high > 10 * low)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        low, high = float(min(values)), float(max(values))
        # a span over 10x was almost certainly searched on a log scale (lr, weight_decay)
        return FloatDistribution(low, high, log=low > 0 and high > 10 * low)
    # None mixed with ints (num_blocks), strings, bools: categories, kept in a stable order
    return CategoricalDistribution(sorted(set(values), key=repr))


def _holds(distribution, value) -> bool:
    if hasattr(distribution, "choices"):
        return value in distribution.choices
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return numeric and distribution.low <= value <= distribution.high


def param_importances(configs: list, values: list, keys: list, known: dict | None = None):
    """Importance of each of `keys` for `values` (one per config), as ({key: importance}, method); importances sum
    to 1. Returns ({}, reason) when there is nothing to measure (under 3 trials, or no parameter varies).
    `known`: key -> the distribution the search sampled it from (its space); otherwise one is fitted to the values."""
    import optuna

    if len(values) < 3:
        return {}, f"only {len(values)} completed trial(s); importance needs at least 3"
    distributions = {}
    for key in keys:
        d = _distribution([c.get(key) for c in configs])
        if d is not None:  # a conditional key also holds its default, which may lie outside what was sampled
            exact = (known or {}).get(key)
            distributions[key] = exact if exact is not None and all(_holds(exact, c.get(key)) for c in configs) else d
    if not distributions:
        return {}, "no searched hyperparameter varies across the completed trials"
    if len(set(values)) < 2:
        return {}, "every completed trial reached the same accuracy"

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for config, value in zip(configs, values):
        params = {k: config.get(k) for k in distributions}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=value))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its importance API experimental, at every call
        scores = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
        )
    return dict(scores), "fANOVA (optuna)"
