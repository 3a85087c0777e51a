"""Search spaces per compression method: YAML files here, and their Optuna define-by-run form.

Format (``search_spaces/distillation.yaml``)::

    parameters:
      matching: {type: categorical, choices: [none, ewa, swa, sswa]}
      beta: {type: loguniform, low: 0.2, high: 20, when: {matching: [ewa, swa, sswa]}}

Parameter types: ``loguniform``, ``uniform`` (``low``, ``high``), ``int`` (``low``, ``high``,
optional ``step``, ``log``) and ``categorical`` (``choices``). ``when`` makes a parameter
conditional on the values of parameters listed before it; a trial whose condition fails does
not sample it at all (Optuna's define-by-run), so it is absent from the trial's config.
"""

from search_spaces.space import (
    PARAMETER_TYPES,
    Parameter,
    SearchSpace,
    builtin_search_space_path,
    load_search_space,
    nearest_name,
    parse_search_space,
)

__all__ = [
    "PARAMETER_TYPES",
    "Parameter",
    "SearchSpace",
    "builtin_search_space_path",
    "load_search_space",
    "nearest_name",
    "parse_search_space",
]
