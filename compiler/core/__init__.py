"""The core of anac: IR, hardware spec, program, errors, frontend and artifact.

passes/ (``anac.passes``) and backends/ (``anac.backends``) import this package;
it imports neither of them, nor the front (``anac.driver``, ``anac.api``,
``anac.cli`` and the rest of compiler/'s top level).
"""
