"""Run one fuzz target under atheris: ``python fuzz_target.py NAME [libFuzzer options] [corpus dirs]``.

One target per process: atheris/libFuzzer own the process (signal handlers,
exit on the first crash), which is why ``run.py`` and the pytest wrapper start
this script in a subprocess.  The tsmr modules the target uses are imported
inside ``atheris.instrument_imports`` so that the fuzzer sees their coverage.
An unavailable target (its parser does not exist yet) prints ``SKIP: reason``
and exits 0.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import atheris  # noqa: E402

import targets  # noqa: E402  (imports no tsmr module at load time)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in targets.TARGETS:
        sys.exit(f"usage: {sys.argv[0]} TARGET [libFuzzer args]; targets: {', '.join(targets.names())}")
    target = targets.TARGETS[sys.argv[1]]
    with atheris.instrument_imports(include=["tsmr"]):
        target.load()
    reason = target.unavailable()
    if reason:
        print(f"SKIP: {reason}", flush=True)
        return
    run = target.run

    def test_one_input(data: bytes) -> None:
        run(data)

    atheris.Setup([sys.argv[0], *sys.argv[2:]], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
