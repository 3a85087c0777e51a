"""Search spaces per compression method: YAML files here, and their Optuna define-by-run form.

Format (``search_spaces/distillation.yaml``)::

    parameters:
      matching: {type: categorical, choices: [none, ewa, swa, sswa]}
      beta: {type: loguniform, low: 0.2, high: 20, when: {matching: [ewa, swa, sswa]}}

Parameter types: ``loguniform``, ``uniform`` (``low``, ``high``), ``int`` (``low``, ``high``,
optional ``step``, ``log``) and ``categorical`` (``choices``). ``when`` makes a parameter
conditional on the values of parameters listed before it; a trial whose condition fails does
not sample it at all (Optuna's define-by-run), so it is absent from the trial's config.

A spec names a space inline (a mapping), by a built-in name (a bare name: ``distillation``)
or by a file path (anything with a ``/`` or a ``.yaml`` ending: ``kd.yaml``, ``spaces/kd.yaml``,
``~/kd.yaml``, ``/abs/kd.yaml``), relative to the spec's folder. Files are read within the bounds
of :mod:`search_spaces.bounded_yaml`.
"""

from search_spaces.space import (
    PARAMETER_TYPES,
    Parameter,
    SearchSpace,
    builtin_search_space_names,
    builtin_search_space_path,
    is_builtin_reference,
    load_search_space,
    nearest_name,
    parse_search_space,
    resolve_path,
)

__all__ = [
    "PARAMETER_TYPES",
    "Parameter",
    "SearchSpace",
    "builtin_search_space_names",
    "builtin_search_space_path",
    "is_builtin_reference",
    "load_search_space",
    "nearest_name",
    "parse_search_space",
    "resolve_path",
]
