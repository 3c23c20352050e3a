"""Symbi's protobuf contracts as Python code (package ``symbi.v1`` -> ``symbi_proto.v1``).

Everything under ``symbi_proto.v1`` except its ``__init__.py`` is generated code: do not
edit it. Change the ``.proto`` files in ``proto/symbi/v1/`` and regenerate with
``python scripts/gen_proto.py``; ``python scripts/gen_proto.py --check`` (run by CI and
the test suite) fails when the checked-in code is stale.
"""
