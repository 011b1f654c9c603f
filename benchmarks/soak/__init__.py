"""The soak and chaos suite: ``python -m benchmarks.soak`` (see :mod:`.__main__` and
docs/reliability.md). One module per part: :mod:`.load`, :mod:`.kills`, :mod:`.faults`,
:mod:`.fuzz`, :mod:`.isolation`."""
